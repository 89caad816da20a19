"""How fast does `fastload convert` build shards, next to what people use today?

Images: an ImageNet-like JPEG folder converted by `python -m fastload convert` (2 and 1
workers; and 2 without the JPEG entropy index, `--no-jpeg-index`), WebDataset's ShardWriter
and MosaicML Streaming's MDSWriter. Tokens: a uint16
token file converted by fastload, next to plain zstd on the same cores (the practical limit).
All data is generated here, deterministically, and cached in benchmarks/.data/.

    python benchmarks/convert.py [--images N] [--tokens M] [--workers 2] [--repeat 5]
                                 [--skip-streaming] [--regen] [--quick]

Targets (from the issue): fastload --workers 2 >= 1.5x MDSWriter records/s on images;
fastload >= 0.8x plain zstd MB/s on tokens. Results: benchmarks/results/convert.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool

import _writers
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, ".data")
RESULTS = os.path.join(HERE, "results", "convert.json")
STREAMING_VENV = os.path.join(HERE, ".venv-streaming")
STREAMING_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "mosaicml-streaming"]

SEED = 1234
CLASSES = [f"n{1440764 + 97 * i:08d}" for i in range(10)]  # ImageNet-style wnid folder names
VOCAB = 50_000
PHRASES = 200_000
CHUNK = 5_000_000  # tokens generated at a time
SEQ_LEN = 2048
# fastload's defaults (its MB is 10^6 bytes), passed to every contender explicitly.
BLOCK_BYTES = 1_000_000  # --block-size; the zstd limit compresses blocks of this size
SHARD_BYTES = 64 << 20  # --shard-size; WebDataset's maxsize, MDSWriter's size_limit
MB = 1e6  # sizes and rates are in decimal megabytes


# ---------------------------------------------------------------- data generation


def make_jpeg(index: int) -> bytes:
    """One photo-like JPEG: a smooth colour field, blurred shapes, mid-frequency texture
    and sensor-like noise, so its size (~110 KB at quality 90) resembles a real photo."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng([SEED, index])
    w, h = int(rng.integers(500, 641)), int(rng.integers(375, 481))
    img = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    img = img.resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 15))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (x, y, x + int(rng.integers(20, w // 2)), y + int(rng.integers(20, h // 2)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    pixels = np.asarray(img.filter(ImageFilter.BoxBlur(1)), dtype=np.int16)
    texture = Image.fromarray(rng.integers(0, 256, (h // 2, w // 2), dtype=np.uint8))
    texture = np.asarray(texture.resize((w, h), Image.BILINEAR), dtype=np.int16) - 128
    pixels = pixels + (texture * rng.uniform(0.3, 0.9)).astype(np.int16)[..., None]
    pixels += rng.integers(-8, 9, pixels.shape, dtype=np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def generate_images(root: str, count: int) -> None:
    for cls in CLASSES:
        os.makedirs(os.path.join(root, cls))
    with Pool(os.cpu_count()) as pool:
        for i, data in enumerate(pool.imap(make_jpeg, range(count), chunksize=16)):
            cls = CLASSES[i % len(CLASSES)]
            with open(os.path.join(root, cls, f"{cls}_{i:06d}.jpg"), "wb") as f:
                f.write(data)


def generate_tokens(path: str, count: int) -> None:
    """Token ids shaped like a BPE-tokenised corpus, so zstd finds what it finds in real
    data: Zipf-popular tokens (p ~ 1/(rank+3)) over a 50k vocabulary, frequent ones mostly
    at small ids, and ~40% of the stream in recurring phrases of 2-11 tokens."""
    rng = np.random.default_rng(SEED)
    cdf = np.cumsum(1.0 / (np.arange(VOCAB) + 3.0))
    cdf /= cdf[-1]

    def zipf_ranks(n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(n)), VOCAB - 1)

    # BPE assigns small ids to frequent merges: order the ranks by a noisy key.
    token_of_rank = np.argsort(np.arange(VOCAB) * rng.lognormal(0, 1, VOCAB)).astype(np.uint16)
    # Phrase pool (names, idioms, boilerplate), phrases themselves Zipf-popular.
    phrase_len = rng.integers(2, 12, PHRASES)
    phrase_start = np.cumsum(phrase_len) - phrase_len
    phrase_ranks = zipf_ranks(int(phrase_len.sum()))
    phrase_cdf = np.cumsum(1.0 / (np.arange(PHRASES) + 10.0))
    phrase_cdf /= phrase_cdf[-1]
    with open(path, "wb") as f:
        for done in range(0, count, CHUNK):
            n = min(CHUNK, count - done)
            # n items, each a single token or (1 in 10) a whole phrase; keep the first n tokens.
            phrase = np.searchsorted(phrase_cdf, rng.random(n))
            is_phrase = rng.random(n) < 0.1
            lens = np.where(is_phrase, phrase_len[phrase], 1)
            item = np.repeat(np.arange(n), lens)[:n]
            offset = np.arange(n) - (np.cumsum(lens) - lens)[item]
            ranks = np.where(
                is_phrase[item],
                phrase_ranks[phrase_start[phrase[item]] + offset],
                zipf_ranks(n)[item],
            )
            f.write(token_of_rank[ranks].tobytes())


def cached(path: str, regen: bool, make, *args) -> str:
    """Build ``path`` with ``make`` unless a finished copy exists (a marker is written last,
    so an interrupted build is redone)."""
    done = path + ".done"
    if regen or not os.path.exists(done):
        print(f"generating {os.path.relpath(path, HERE)} ...", flush=True)
        for old in (done, path):
            remove(old)
        make(path, *args)
        open(done, "w").close()
    return path


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


# ---------------------------------------------------------------- measuring


def warm_cache(paths: list[str]) -> None:
    """Read every input once, so every run starts from the same warm page cache."""
    for path in paths:
        _writers.read(path)


def tree_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def run_timed(cmd: list[str]) -> tuple[float, str]:
    """Wall time of a whole command and its stdout; raises with its stderr if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=DATA)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"exit {proc.returncode}\n" + "\n".join(tail))
    return wall, proc.stdout


def run_once(cmd: list[str], inputs: list[str], dst: str) -> tuple[float, float, dict]:
    """(timed seconds, wall seconds, what _writers printed) of one run from an empty ``dst``.

    Before the clock: inputs read once (warm page cache; dropping it would need root) and
    os.sync(), so no one pays for writing back the previous run's output."""
    remove(dst)
    warm_cache(inputs)
    os.sync()
    wall, stdout = run_timed(cmd)
    info = json.loads(stdout.strip().splitlines()[-1])
    if "write_s" not in info:  # fastload convert --json: its own convert() time
        info = {"write_s": info["seconds"], "records": info["records"]}
    return info.pop("write_s"), wall, info


def contender(
    name: str, cmd: list[str], inputs: list[str], dst: str, records: int | None, repeat: int
) -> dict:
    """The median of ``repeat`` runs of one contender; never raises.

    Every command prints a JSON line with the time of its own work (for fastload, convert()'s
    time; for the others, their write loop): "time s" compares work with work, "wall s"
    whole processes with whole processes (interpreter start and imports included)."""
    print(f"  {name} ...", flush=True)
    try:
        runs = [run_once(cmd, inputs, dst) for _ in range(repeat)]
    except Exception as e:  # a missing or failing contender must not stop the others
        print(f"    failed: {str(e).splitlines()[-1]}")
        return {"name": name, "error": str(e), "command": cmd}
    runs.sort(key=lambda run: run[0])
    seconds, wall, info = runs[len(runs) // 2]
    in_bytes = sum(map(os.path.getsize, inputs))
    return {
        "name": name,
        "command": cmd,
        "records": info.pop("records", records),
        "seconds": seconds,
        "wall_seconds": wall,
        "runs_seconds": [r[0] for r in runs],
        "range_seconds": f"{runs[0][0]:.2f}-{runs[-1][0]:.2f}",
        "input_bytes": in_bytes,
        "output_mb": tree_bytes(dst) / MB,
        "mb_per_s": in_bytes / MB / seconds,
        **info,
    }


def add_rates(rows: list[dict], reference: str, key: str) -> None:
    """records/s, and speed against the ``reference`` row as ``key`` (by time s) and
    ``key``_wall (by wall s)."""
    ref = next((r for r in rows if r["name"] == reference and "error" not in r), None)
    for r in rows:
        if "error" in r:
            continue
        r["records_per_s"] = r["records"] / r["seconds"]
        if ref:
            r[key] = ref["seconds"] / r["seconds"]
            r[key + "_wall"] = ref["wall_seconds"] / r["wall_seconds"]


# ---------------------------------------------------------------- Streaming's own venv


def streaming_python() -> tuple[str | None, str]:
    """The venv python that has mosaicml-streaming (built once, cached), or None and why.

    mosaicml-streaming imports torchvision, which needs torch 2.14.1; the main environment
    keeps its own torch, so Streaming lives in benchmarks/.venv-streaming."""
    python = os.path.join(STREAMING_VENV, "bin", "python")
    check = [python, "-c", "import streaming, torch, torchvision; print(torch.__version__)"]
    if os.path.exists(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return python, "cached"
    log = os.path.join(DATA, "venv-streaming.log")
    print(
        f"creating {os.path.relpath(STREAMING_VENV, HERE)} (one-off, ~6 GB, minutes); "
        f"log: {os.path.relpath(log, HERE)}",
        flush=True,
    )
    with open(log, "w") as out:
        for cmd in (
            [sys.executable, "-m", "venv", STREAMING_VENV],
            [python, "-m", "pip", "install", *STREAMING_PACKAGES],
        ):
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                with open(log) as f:
                    return None, f"`{' '.join(cmd[-4:])}` failed: " + f.read()[-300:].strip()
    if subprocess.run(check, capture_output=True).returncode != 0:
        return None, "streaming does not import in the new venv"
    return python, "created"


# ---------------------------------------------------------------- the two benchmarks


def fastload_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastload", "convert", "--json", "--no-progress", *args]


def writer_cmd(python: str, *args: str) -> list[str]:
    return [python, os.path.join(HERE, "_writers.py"), *args]


def bench_images(
    src: str, workers: int, skip_streaming: bool, repeat: int
) -> tuple[list[dict], dict]:
    files = [path for path, _ in _writers.list_imagefolder(src)]

    def out(name):
        return os.path.join(DATA, "out", name)

    shard = ["--shard-bytes", str(SHARD_BYTES)]
    runs = [
        (
            f"fastload --workers {w}",
            out(f"fastload-w{w}"),
            fastload_cmd(
                src,
                out(f"fastload-w{w}"),
                "--from",
                "imagefolder",
                "--workers",
                str(w),
                "--overwrite",
                "--shard-size",
                str(SHARD_BYTES),
            ),
        )
        for w in sorted({workers, 1}, reverse=True)
    ]
    # Without the JPEG entropy index the loader's crops use (building it is a Huffman pass
    # over each JPEG, ~0.7 ms of CPU for one of these): what convert costs when it only copies.
    runs.append(
        (
            f"fastload --workers {workers} --no-jpeg-index",
            out("fastload-noindex"),
            fastload_cmd(
                src,
                out("fastload-noindex"),
                "--from",
                "imagefolder",
                "--workers",
                str(workers),
                "--no-jpeg-index",
                "--overwrite",
                "--shard-size",
                str(SHARD_BYTES),
            ),
        )
    )
    # The same on a Ray cluster the convert starts locally (every CPU): what Ray costs where
    # one machine would do (its start-up, a task per part); loopback only.
    runs.append(
        (
            "fastload --ray (local)",
            out("fastload-ray"),
            fastload_cmd(
                src,
                out("fastload-ray"),
                "--from",
                "imagefolder",
                "--ray",
                "--overwrite",
                "--shard-size",
                str(SHARD_BYTES),
            ),
        )
    )
    runs.append(
        (
            "webdataset ShardWriter",
            out("webdataset"),
            writer_cmd(sys.executable, "webdataset", src, out("webdataset"), *shard),
        )
    )

    python, why = (None, "--skip-streaming") if skip_streaming else streaming_python()
    if python is None:
        print(f"  MDSWriter not run: {why}")
    for enc, comp in [("bytes", "none"), ("bytes", "zstd"), ("jpeg", "none")] if python else []:
        dst = out(f"mds-{enc}-{comp}")
        runs.append(
            (
                f"MDSWriter {enc} {comp}",
                dst,
                writer_cmd(
                    python, "mds", src, dst, *shard, "--encoding", enc, "--compression", comp
                ),
            )
        )

    rows = [contender(name, cmd, files, dst, len(files), repeat) for name, dst, cmd in runs]
    add_rates(rows, "MDSWriter bytes none", "vs_mds")
    streaming = {"venv": why}
    for r in rows:  # what the MDSWriter process itself reported about its environment
        if "torch" in r:
            streaming.update(torch=r["torch"], streaming=r["streaming"], python=r["python"])
    return rows, streaming


def bench_tokens(src: str, workers: int, repeat: int) -> list[dict]:
    fastload_dst = os.path.join(DATA, "out", "fastload-tokens")
    zstd_dst = os.path.join(DATA, "out", "zstd-limit")
    sequences = os.path.getsize(src) // 2 // SEQ_LEN
    rows = [
        contender(
            f"fastload tokens --workers {workers}",
            fastload_cmd(
                src,
                fastload_dst,
                "--from",
                "tokens",
                "--seq-len",
                str(SEQ_LEN),
                "--dtype",
                "uint16",
                "--compression",
                "zstd",
                "--level",
                "3",
                "--workers",
                str(workers),
                "--overwrite",
                "--block-size",
                str(BLOCK_BYTES),
            ),
            [src],
            fastload_dst,
            sequences,
            repeat,
        ),
        contender(
            f"zstd -3, {workers} procs",
            writer_cmd(
                sys.executable,
                "zstd",
                src,
                zstd_dst,
                "--workers",
                str(workers),
                "--block-size",
                str(BLOCK_BYTES),
                "--level",
                "3",
            ),
            [src],
            zstd_dst,
            None,
            repeat,
        ),
    ]
    add_rates(rows, rows[-1]["name"], "vs_zstd")
    return rows


def fastload_startup() -> float | None:
    """Seconds for `python -m fastload convert --help`: the fixed cost in every fastload row."""
    try:
        return run_timed(fastload_cmd("--help"))[0]
    except Exception:
        return None


# ---------------------------------------------------------------- report


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Fixed-width table; ``columns`` are (header, row key, format), the first the name."""
    lines = [f"{columns[0][0]:<28}" + "".join(f"{h:>12}" for h, _, _ in columns[1:])]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']:<28}failed: {r['error'].splitlines()[-1][:80]}")
            continue
        cells = [format(r[k], f) if k in r else "-" for _, k, f in columns[1:]]
        lines.append(f"{r['name']:<28}" + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


TIMES = [
    ("time s", "seconds", ".2f"),
    ("range s", "range_seconds", "s"),
    ("wall s", "wall_seconds", ".2f"),
]
IMAGE_COLUMNS = [
    ("images", "name", ""),
    *TIMES,
    ("rec/s", "records_per_s", ".0f"),
    ("MB/s", "mb_per_s", ".1f"),
    ("out MB", "output_mb", ".0f"),
    ("x MDS", "vs_mds", ".2f"),
    ("x MDS wall", "vs_mds_wall", ".2f"),
]
TOKEN_COLUMNS = [
    ("tokens", "name", ""),
    *TIMES,
    ("MB/s", "mb_per_s", ".1f"),
    ("out MB", "output_mb", ".0f"),
    ("x zstd", "vs_zstd", ".2f"),
    ("x zstd wall", "vs_zstd_wall", ".2f"),
]


def report(results: dict, path: str) -> None:
    s, a = results["streaming"], results["args"]
    startup = results["fastload_startup_s"]
    startup = "?" if startup is None else f"{startup:.2f}"
    mds = (
        f"MDSWriter ran from its own venv: {os.path.relpath(s['python'])}, torch {s['torch']}"
        f", streaming {s['streaming']} ({s['venv']})."
        if "torch" in s
        else f"MDSWriter was not run: {s['venv']}"
    )
    print(f"\n{table(results['images'], IMAGE_COLUMNS)}")
    print(f"\n{table(results['tokens'], TOKEN_COLUMNS)}")
    print(f"""
{a["images"]} images, {a["tokens"]:,} tokens, {os.cpu_count()} cores.
MB        10^6 bytes. MB/s: input MB / time s.
time s    fastload: convert()'s own time as `convert --json` reports it (listing, reading,
          writing, worker start; interpreter start and imports excluded: `convert --help`
          alone takes {startup} s). Others: their write loop (list, read, write), timed inside
          their process after its imports. wall s: the whole process, for all.
range s   fastest-slowest of {a["repeat"]} runs; each row is the median run. Before each run: inputs
          read once (warm page cache; dropping it needs root) and os.sync(); nobody fsyncs.
x MDS     speed against 'MDSWriter bytes none' by time s / by wall s (x zstd: likewise).
--ray     the same convert as Ray tasks on a local cluster that convert() starts (every core)
          and stops: its time includes Ray's start-up. On one machine --workers is the way;
          this row is what Ray costs, not what a cluster gains.
Others    WebDataset and MDSWriter run in one process, as they are used.
          {mds}
          MDSWriter 'bytes' stores the file's bytes; 'jpeg' takes Image.open(path) and re-reads
          the file (no re-encode); its zstd compresses each whole shard at the end, on all cores.
Targets   fastload --workers 2 >= 1.5x MDSWriter records/s; tokens >= 0.8x zstd MB/s.
Results   {os.path.relpath(path)}""")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=3000, help="JPEGs to convert (default 3000)")
    p.add_argument("--tokens", type=int, default=50_000_000, help="uint16 tokens (default 50M)")
    p.add_argument("--workers", type=int, default=2, help="fastload workers and zstd processes")
    p.add_argument("--skip-streaming", action="store_true", help="do not run MDSWriter")
    p.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs per contender; the median is reported (default 5; 1 with --quick)",
    )
    p.add_argument("--regen", action="store_true", help="regenerate the cached input data")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 300 images, 5M tokens; results go to .data/, not results/",
    )
    a = p.parse_args()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the --ray row's cluster: loopback
    if a.quick:
        a.images, a.tokens, a.repeat = 300, 5_000_000, 1

    os.makedirs(DATA, exist_ok=True)
    images = cached(os.path.join(DATA, f"images-{a.images}"), a.regen, generate_images, a.images)
    tokens = cached(
        os.path.join(DATA, f"tokens-{a.tokens}.bin"), a.regen, generate_tokens, a.tokens
    )
    n_bytes = tree_bytes(images)
    print(
        f"images: {a.images} JPEGs, {n_bytes / MB:.0f} MB, {n_bytes / a.images / 1e3:.0f} KB avg;"
        f" tokens: {a.tokens:,} uint16 ({os.path.getsize(tokens) / MB:.0f} MB)"
    )

    print("images:")
    image_rows, streaming = bench_images(images, a.workers, a.skip_streaming, a.repeat)
    print("tokens:")
    token_rows = bench_tokens(tokens, a.workers, a.repeat)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "args": vars(a),
        "avg_jpeg_bytes": n_bytes / a.images,
        "fastload_startup_s": fastload_startup(),
        "streaming": streaming,
        "images": image_rows,
        "tokens": token_rows,
    }
    # A smoke test must not overwrite the committed results.
    path = os.path.join(DATA, "convert-quick.json") if a.quick else RESULTS
    report(results, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
