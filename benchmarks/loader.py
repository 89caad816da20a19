"""How fast does fastload's DataLoader feed a training loop, next to torch's DataLoader and peers?

Same data, same batch size, num_workers=2, on this machine. Tokens: samples of 2049 uint16
tokens, batch 16, shuffle=True (a global order), from a token file at least 4x larger than
a process's default block cache, so a compressed copy cannot simply be kept decompressed:
torch DataLoader over a numpy memmap of the raw file, fastload with convert's defaults (which
store these tokens raw), with `--compression zstd` and with `--compression none`, MosaicML
Streaming (MDS), LitData, and a bare single-process memmap gather (the practical limit).
Images: ~110 KB JPEGs, RandomResizedCrop(224) + flip, batch 256: torch DataLoader + PIL,
WebDataset, Streaming, DALI's CPU pipeline, fastload, and 2 processes of plain PIL (the
practical limit). Per contender: samples/s of the first epoch and
of the later ones (page cache warm), time to first batch (warm and cold page cache), PSS,
RSS and private memory of its process tree, and the data stall under a step that sleeps, as
one waiting on a GPU does, at 80% of the contender's own rate. Scale: a dataset of >= 20M
16-byte records in 5 shards: bytes on disk per record and each process's private memory
after random reads over every shard. All data is generated here, deterministically, and
cached in benchmarks/.data/ (the inputs are shared with convert.py).

    python benchmarks/loader.py [--only tokens|images|scale] [--quick] [--skip-streaming]
                                [--repeat N] [--contenders SUBSTRING ...]

Results: benchmarks/results/loader.json (--only: that suite's part of it, the others kept;
--quick or --contenders: benchmarks/.data/loader-partial.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time

import _loadreport
import _procmem
import convert  # data generators, cache markers and Streaming's venv, shared with convert.py

HERE, DATA = convert.HERE, convert.DATA
OUT = os.path.join(DATA, "loader")  # converted copies of the inputs, one per format
RESULTS = os.path.join(HERE, "results", "loader.json")
PARTIAL = os.path.join(DATA, "loader-partial.json")
CACHE = os.path.join(OUT, "cache")  # fastload's block cache in its runs, emptied before each
# Streaming's runs' temporary directory: it leaves a pair of lock files in it per dataset it
# opens (~1,400 had piled up in /tmp), removed after each run.
STREAMING_TMP = os.path.join(OUT, "streaming-tmp")
RUNNER = os.path.join(HERE, "_loaders.py")
SCALE = os.path.join(HERE, "_scale.py")
SEQ = 2049
WORKERS = 2
STEP_FACTOR = 1.25  # the step: 1.25 x the steady time per batch, so 80% of the top rate
MIN_STEP = 1e-3  # ... but never under 1 ms: no real training step is shorter
MB = 1e6
# 300M tokens: 600 MB, 146,412 rows, 4.5x the 128 MiB a process keeps decompressed by default
TOKENS = 300_000_000
SCALE_RECORDS = 20_000_000  # 16-byte records (8 uint16 tokens), in SCALE_SHARDS shards
SCALE_SHARDS = 5

# fastload's conversions, as the issue spells them; the other token copies are forced to zstd
# and to no compression.
FASTLOAD_TOKENS = ["--from", "tokens", "--seq-len", str(SEQ), "--dtype", "uint16"]
FASTLOAD_IMAGES = ["--from", "imagefolder"]


# ---------------------------------------------------------------- data


def built(path: str, cmd: list[str], newer_than: float = 0.0) -> str | None:
    """Build ``path`` with ``cmd`` unless a finished copy (its marker written last) exists
    and is newer than ``newer_than``. Returns why the build failed, or None."""
    done = path + ".done"
    if os.path.exists(done) and os.path.getmtime(done) >= newer_than:
        return None
    print(f"  building {os.path.relpath(path, HERE)} ...", flush=True)
    for old in (done, path):
        convert.remove(old)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["?"]
        return f"{' '.join(cmd[1:3])} failed: {lines[-1]}"
    open(done, "w").close()
    return None


def fastload_mtime() -> float:
    """Newest source file of fastload's writing side: its converted data is rebuilt when the
    format may have changed (without importing fastload, which would import torch here)."""
    spec = importlib.util.find_spec("fastload")
    if spec is None or spec.origin is None:
        return 0.0
    root = os.path.dirname(spec.origin)
    return max(
        (
            os.path.getmtime(os.path.join(d, f))
            for d, _, files in os.walk(root)
            for f in files
            if f.endswith(".py") and "loader" not in d and "read" not in d
        ),
        default=0.0,
    )


def fastload_convert(src: str, dst: str, args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fastload",
        "convert",
        src,
        dst,
        *args,
        "--overwrite",
        "--no-progress",
        "--json",
    ]


def runner(python: str, *args: str) -> list[str]:
    return [python, RUNNER, *args]


def prefix_file(dst: str, src: str, size: int) -> None:
    """The first ``size`` bytes of ``src`` as a file of their own, ``dst``."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while size:
            chunk = fin.read(min(size, 1 << 24))
            if not chunk:
                raise ValueError(f"{src} holds fewer than the bytes asked for")
            fout.write(chunk)
            size -= len(chunk)


# ---------------------------------------------------------------- contenders


def contender(
    name, kind, data, python=sys.executable, role=None, stall=True, error=None, judge=False
):
    """One row: ``kind`` is _loaders.py's name for it; ``role``: 'torch', 'limit' or 'raw'
    for the rows others are compared to (``raw``: fastload on the uncompressed copy, to
    which the compressed row is compared); ``error`` says why it cannot run (its data did not
    build); ``judge``: a row the issue's targets are checked on."""
    return {
        "name": name,
        "kind": kind,
        "data": data,
        "python": python,
        "role": role,
        "stall": stall,
        "error": error,
        "judge": judge,
    }


def token_contenders(tokens: str, streaming: str | None, why: str) -> list[dict]:
    n = os.path.basename(tokens).split(".")[0]  # tokens-300000000
    fl, fl_raw = os.path.join(OUT, f"fastload-{n}"), os.path.join(OUT, f"fastload-{n}-raw")
    fl_zstd = os.path.join(OUT, f"fastload-{n}-zstd")
    fresh = fastload_mtime()
    raw_error = built(
        fl_raw, fastload_convert(tokens, fl_raw, FASTLOAD_TOKENS + ["--compression", "none"]), fresh
    )
    rows = [
        contender("torch DataLoader, memmap", "torch-tokens", tokens, role="torch"),
        # As a new user does it: convert's defaults, shuffle=True, seed=0. The defaults
        # (--compression auto) store these tokens raw: zstd saves ~30% of them, not half.
        contender(
            "fastload, convert defaults",
            "fastload-planned-tokens",
            fl,
            error=built(fl, fastload_convert(tokens, fl, FASTLOAD_TOKENS), fresh),
            judge=True,
        ),
        # Compressed tokens all the same: read at random through decompressed copies.
        contender(
            "fastload, --compression zstd",
            "fastload-planned-tokens",
            fl_zstd,
            error=built(
                fl_zstd,
                fastload_convert(tokens, fl_zstd, FASTLOAD_TOKENS + ["--compression", "zstd"]),
                fresh,
            ),
            judge=True,
        ),
        contender(
            "fastload, --compression none",
            "fastload-planned-tokens",
            fl_raw,
            error=raw_error,
            role="raw",
            judge=True,
        ),
        contender("fastload, none, torch's order", "fastload-tokens", fl_raw, error=raw_error),
    ]
    mds = os.path.join(OUT, f"mds-{n}")
    rows.append(
        contender(
            "Streaming MDS",
            "streaming-tokens",
            mds,
            python=streaming,
            error=(
                built(mds, runner(streaming, "write-mds-tokens", tokens, mds)) if streaming else why
            ),
        )
    )
    lit = os.path.join(OUT, f"litdata-{n}")
    rows.append(
        contender(
            "LitData, TokensLoader",
            "litdata-tokens",
            lit,
            error=(
                built(lit, runner(sys.executable, "write-litdata-tokens", tokens, lit))
                if importlib.util.find_spec("litdata")
                else "litdata is not installed"
            ),
        )
    )
    # Its stall passes too: the floor the protocol sets (its next() is the whole gather).
    rows.append(contender("bare memmap gather", "gather-tokens", tokens, role="limit"))
    return rows


def image_contenders(images: str, streaming: str | None, why: str) -> list[dict]:
    n = os.path.basename(images)  # images-3000
    fl, wds, mds = (os.path.join(OUT, f"{k}-{n}") for k in ("fastload", "wds", "mds"))
    fl_error = built(fl, fastload_convert(images, fl, FASTLOAD_IMAGES), fastload_mtime())
    rows = [
        contender("torch DataLoader + PIL", "torch-images", images, role="torch"),
        contender("fastload DataLoader", "fastload-images", fl, error=fl_error, judge=True),
        contender(
            "WebDataset",
            "wds-images",
            wds,
            error=built(wds, runner(sys.executable, "write-wds", images, wds, "--shards", "10")),
        ),
    ]
    writer = [
        streaming,
        os.path.join(HERE, "_writers.py"),
        "mds",
        images,
        mds,
        "--encoding",
        "bytes",
        "--compression",
        "none",
    ]
    rows.append(
        contender(
            "Streaming MDS",
            "streaming-images",
            mds,
            python=streaming,
            error=built(mds, writer) if streaming else why,
        )
    )
    rows.append(
        contender("fastload, decode by DALI (CPU)", "fastload-dali-images", fl, error=fl_error)
    )
    rows.append(contender("DALI CPU", "dali-images", images))
    rows.append(contender("DALI CPU, fused decode+crop", "dali-fused-images", images))
    rows.append(contender("two-core PIL limit", "pil-limit", images, role="limit", stall=False))
    rows.append(
        contender(
            "two-core PIL, scaled decode",
            "pil-draft-limit",
            images,
            role="limit-scaled",
            stall=False,
        )
    )
    return rows


# ---------------------------------------------------------------- measuring one run


def busy_cpu_s() -> float:
    """CPU seconds spent by the whole machine so far (all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait: float) -> float:
    """Others share this machine (tests run beside us): wait, up to ``max_wait`` s, until
    other processes use under a quarter of a core. Returns the seconds waited."""
    start = time.perf_counter()
    while True:
        cpu = busy_cpu_s()
        time.sleep(0.5)
        if (busy_cpu_s() - cpu) / 0.5 < 0.25 or time.perf_counter() - start > max_wait:
            return time.perf_counter() - start


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def memory_fields(memory: _procmem.TreeMemory, phases: dict) -> dict:
    """Peak memory over the whole run, and steady memory: the median over the samples taken
    in the later epochs (the steady and stall passes), with the breakdown per process of the
    sample with the highest PSS there (MB)."""
    out = {}
    peak = memory.peak()
    for k in ("pss", "rss", "private", "held"):
        out[f"peak_{k}_mb"] = peak.get(k, 0) / MB
    out["processes"] = peak.get("procs", 0)
    later = [phases[p] for p in ("steady", "stall", "fixed") if p in phases]
    if later:
        steady = memory.between(min(s for s, _ in later), max(e for _, e in later))
        if steady:
            for k in ("pss", "rss", "private", "held"):
                out[f"steady_{k}_mb"] = steady[k] / MB
            out["steady_samples"] = steady["samples"]
            out["per_process_mb"] = [
                {k: round(v / MB, 1) for k, v in p.items()} for p in steady["per_process"]
            ]
    return out


def run_once(
    spec: dict,
    opts: list[str],
    timeout: float,
    quiet_wait: float,
    cold: bool = False,
    fresh_cache: bool = False,
) -> dict:
    """One fresh process of one contender: what it printed, its tree's memory, and how much
    CPU others used meanwhile. ``cold``: the time to the first batch alone, after the
    kernel dropped the data's pages from its page cache. ``fresh_cache``: fastload's block
    cache (where it keeps decompressed copies of compressed blocks) is a directory emptied
    before the run, so that every run starts with nothing decompressed. Never raises."""
    waited = 0.0 if cold else wait_for_quiet(quiet_wait)
    env = None
    if fresh_cache:
        convert.remove(CACHE)
        env = {**os.environ, "FASTLOAD_CACHE_DIR": CACHE}
    if cold:
        _procmem.drop_page_cache(spec["data"])
        opts = [*opts, "--protocol", "first"]
    else:
        _procmem.warm_page_cache(spec["data"])
    cmd = runner(spec["python"], "run", spec["kind"], spec["data"], *opts)
    # The contender writes to this pipe when it has its first batch: memory is sampled from
    # then on, so that reading /proc does not slow the first batch it times.
    first_r, first_w = os.pipe()
    env = {**(env or os.environ), _procmem.FIRST_BATCH_FD: str(first_w)}
    if spec["kind"].startswith("streaming"):
        os.makedirs(STREAMING_TMP, exist_ok=True)
        env["TMPDIR"] = STREAMING_TMP
    cpu0, kids0, self0 = (
        busy_cpu_s(),
        resource.getrusage(resource.RUSAGE_CHILDREN),
        resource.getrusage(resource.RUSAGE_SELF),
    )
    load0 = load_average()
    start = time.perf_counter()
    # Its own session, so a timeout can end its whole tree (and only it).
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
        start_new_session=True,
        env=env,
        pass_fds=(first_w,),
    )
    os.close(first_w)  # its end comes when the contender (and its workers) are gone
    memory = _procmem.TreeMemory(proc.pid, start_after=first_r)
    memory.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        memory.stop()
        os.close(first_r)
        convert.remove(STREAMING_TMP)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        lines = (err or out).strip().splitlines() or [f"exit {proc.returncode}"]
        return {"error": lines[-1], "stderr_tail": lines[-15:]}

    def cpu(r):
        return r.ru_utime + r.ru_stime

    own = cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - cpu(kids0)
    mine = cpu(resource.getrusage(resource.RUSAGE_SELF)) - cpu(self0)
    others = max(0.0, busy_cpu_s() - cpu0 - own - mine)
    result = json.loads(out.strip().splitlines()[-1])
    return {
        **result,
        **memory_fields(memory, result.get("phases", {})),
        "wall_s": wall,
        "cpu_s": own,
        "quiet_wait_s": waited,
        "others_pct": 100 * others / (wall * os.cpu_count()),
        "load_average": [load0, load_average()],
    }


def import_footprint(spec: dict) -> float:
    """Peak PSS (MB) of a process that only imports the contender's libraries: the part of
    its memory that is its environment (Streaming's venv has a CUDA build of torch)."""
    proc = subprocess.Popen(
        runner(spec["python"], "imports", spec["kind"], "-"),
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    memory = _procmem.TreeMemory(proc.pid)
    memory.start()
    proc.wait()
    memory.stop()
    return memory.peak().get("pss", 0) / MB


# ---------------------------------------------------------------- a suite


def pass_options(suite: str, samples: int, batch: int, quick: bool) -> list[str]:
    """Tokens: the first epoch (at most 60 s), then one more epoch for the steady rate (at
    most 6 s), then each stall pass (at most 4 s). Images: one epoch (~12 batches of 256)
    each for the first epoch, the steady rate and each stall pass (at most 10 s: with 8
    batches a pass, 7 of them counted, one slow batch moved a run's stall from 0.2% to 2.7%)."""
    epoch = -(-samples // batch)
    if suite == "tokens":
        first, secs, stall, stall_secs = (10, 2, epoch, 1.5) if quick else (60, 6, epoch, 4)
    else:
        first, secs, stall, stall_secs = (
            (10, 10, min(epoch, 8), 3) if quick else (20, 20, epoch, 10)
        )
    return [
        *("--batch", str(batch), "--epoch0-seconds", str(first)),
        *("--batches", str(epoch), "--seconds", str(secs)),
        *("--stall-batches", str(stall), "--stall-seconds", str(stall_secs)),
        *("--step-factor", str(STEP_FACTOR), "--min-step", str(MIN_STEP)),
    ]


def run_suite(
    specs: list[dict], opts: list[str], a: argparse.Namespace, torch_step: bool = False
) -> list[dict]:
    """Runs interleave (every contender once, then again), so a noisy minute on this shared
    machine spreads over all rows instead of sinking one; a run during which other processes
    used over --max-others % of the CPU is run again once, and the quieter one kept. Each
    run is preceded by a cold one: the time to the first batch with the data's pages dropped
    from the page cache.

    ``torch_step``: the contenders after torch's DataLoader (the first row) also measure their
    stall under the step torch's run of the same round slept (80% of torch's rate)."""
    runs = {s["name"]: [] for s in specs}
    for r in range(a.repeat):
        fixed: list[str] = []
        for s in specs:
            if s["error"] or s["python"] is None:
                continue
            no_stall = [] if s["stall"] else ["--stall-batches", "0"]  # the last one counts
            extra = no_stall + (fixed if s["stall"] else [])
            fresh = s["kind"].startswith("fastload")
            cold = run_once(s, opts, a.timeout, 0, True, fresh) if s["stall"] else {}
            res = run_once(s, opts + extra, a.timeout, a.quiet_wait, fresh_cache=fresh)
            if res.get("others_pct", 0) > a.max_others:
                print(
                    f"  [{r + 1}/{a.repeat}] {s['name']}: others used "
                    f"{res['others_pct']:.0f}% of the CPU, once more",
                    flush=True,
                )
                again = run_once(s, opts + extra, a.timeout, a.quiet_wait, fresh_cache=fresh)
                if "error" in again or again["others_pct"] < res["others_pct"]:
                    res = again
            if "first_batch_s" in cold:
                res["cold_first_batch_s"] = cold["first_batch_s"]
            elif "error" in cold:
                res["cold_error"] = cold["error"]
            runs[s["name"]].append(res)
            if torch_step and s["role"] == "torch" and "stall_stall" in res:
                fixed = ["--fixed-step", f"{res['stall_stall']['step_s']:.6g}"]
            what = (
                f"failed: {res['error']}"
                if "error" in res
                else f"{res['samples_per_s']:,.0f} samples/s, others {res['others_pct']:.0f}%"
            )
            print(f"  [{r + 1}/{a.repeat}] {s['name']}: {what}", flush=True)
    rows = [summarize(s, runs[s["name"]], a.max_others) for s in specs]
    for s, row in zip(specs, rows, strict=True):
        if "error" not in row:
            row["imports_mb"] = import_footprint(s)
            row["net_mb"] = row["peak_pss_mb"] - row["imports_mb"]
    return rows


MEDIANS = [  # summarize's medians: (row key, how to get it from a run)
    ("samples_per_s", lambda r: r["samples_per_s"]),
    ("epoch0_samples_per_s", lambda r: r["epoch0"]["samples_per_s"]),
    ("first_batch_s", lambda r: r["first_batch_s"]),
    ("cold_first_batch_s", lambda r: r["cold_first_batch_s"]),
    ("main_cpu_us", lambda r: r["main_cpu_us"]),
    ("stall_pct", lambda r: r["stall_stall"]["pct"]),
    ("stall_load_pct", lambda r: r["stall_stall"]["load_pct"]),
    ("stall_threads_cpu_us", lambda r: r["stall_stall"]["other_threads_cpu_us"]),
    ("stall_step_ms", lambda r: 1e3 * r["stall_stall"]["step_s"]),
    ("stall_fixed_pct", lambda r: r["stall_fixed"]["pct"]),
    ("stall_fixed_load_pct", lambda r: r["stall_fixed"]["load_pct"]),
    ("stall_fixed_step_ms", lambda r: 1e3 * r["stall_fixed"]["step_s"]),
    *(
        (f"{when}_{k}_mb", lambda r, key=f"{when}_{k}_mb": r[key])
        for when in ("peak", "steady")
        for k in ("pss", "rss", "private", "held")
    ),
]


def summarize(spec: dict, runs: list[dict], max_others: float) -> dict:
    """Each measure's median over the runs that worked, the quiet ones if any (range: min-max
    of samples/s over those); a measure some of those runs lack is left out."""
    row = {k: spec[k] for k in ("name", "kind", "role", "judge")}
    row["data"] = os.path.relpath(spec["data"], HERE)
    done = [r for r in runs if "error" not in r]
    # Runs during which others used much of the CPU measure them as much as the contender:
    # the quiet runs alone count when there are any.
    ok = [r for r in done if r["others_pct"] <= max_others] or done
    if spec["error"] or not ok:
        why = spec["error"] or (runs[0]["error"] if runs else "not run")
        if spec["kind"].startswith("fastload"):
            why = f"not available ({why})"
        return {**row, "error": why, "runs": runs}
    for key, get in MEDIANS:
        try:
            values = [get(r) for r in ok]
        except (KeyError, TypeError):
            continue
        if None not in values:
            row[key] = statistics.median(values)
    rates = [r["samples_per_s"] for r in ok]
    row.update(
        range=f"{min(rates):.0f}-{max(rates):.0f}",
        others_pct=max(r["others_pct"] for r in ok),
        load_average=max(max(r.get("load_average", [0])) for r in ok),
        runs_used=f"{len(ok)}/{len(runs)}",
        failed_runs=len(runs) - len(done),
        batch=ok[0]["batch"],
        versions=ok[0]["versions"],
        runs=runs,
    )
    if all("epoch0" in r for r in ok):
        row["epoch0_complete"] = all(r["epoch0"]["complete"] for r in ok)
    if spec["kind"].startswith("streaming"):  # it ran from its own venv: say so in the row
        row["name"] += f" (venv, torch {row['versions'].get('torch', '?')})"
    if "loader_stats" in ok[0]:
        row["loader_stats"] = [r["loader_stats"] for r in ok]
    return row


def add_ratios(rows: list[dict]) -> None:
    """x torch / x limit: samples/s against the torch DataLoader and practical-limit rows;
    x raw (fastload on other data): against fastload on the uncompressed copy, the
    first epoch and the later ones apart; pss x torch (and private x torch): steady
    memory against torch DataLoader's."""
    ref = {r["role"]: r for r in rows if r["role"] and "error" not in r}
    for r in rows:
        if "error" in r:
            continue
        if "torch" in ref:
            t = ref["torch"]
            r["x_torch"] = r["samples_per_s"] / t["samples_per_s"]
            for k in ("pss", "private", "held"):
                if f"steady_{k}_mb" in r and t.get(f"steady_{k}_mb"):
                    r[f"{k}_x_torch"] = r[f"steady_{k}_mb"] / t[f"steady_{k}_mb"]
                if t.get(f"peak_{k}_mb"):
                    r[f"peak_{k}_x_torch"] = r[f"peak_{k}_mb"] / t[f"peak_{k}_mb"]
        if "limit" in ref:
            r["x_limit"] = r["samples_per_s"] / ref["limit"]["samples_per_s"]
        raw = ref.get("raw")
        if raw and r["kind"].startswith("fastload") and r["data"] != raw["data"]:
            r["x_raw"] = r["samples_per_s"] / raw["samples_per_s"]
            if "epoch0_samples_per_s" in r and "epoch0_samples_per_s" in raw:
                r["epoch0_x_raw"] = r["epoch0_samples_per_s"] / raw["epoch0_samples_per_s"]


# ---------------------------------------------------------------- the scale row


def scale_data(tokens: str, records: int) -> tuple[str, str | None]:
    """A dataset of ``records`` 16-byte records (8 uint16 tokens) in SCALE_SHARDS shards,
    converted with convert's defaults from the first bytes of the token file."""
    src = os.path.join(DATA, f"scale-{records}.bin")
    size = records * 16
    if os.path.getsize(tokens) < size:
        return src, f"the token file holds fewer than {records:,} records of 16 bytes"
    convert.cached(src, False, prefix_file, tokens, size)
    dst = os.path.join(OUT, f"fastload-scale-{records}")
    shard_size = -(-size // SCALE_SHARDS) + 4096  # input bytes per shard: 5 shards
    args = ["--from", "tokens", "--seq-len", "8", "--dtype", "uint16"]
    return dst, built(
        dst, fastload_convert(src, dst, [*args, "--shard-size", str(shard_size)]), fastload_mtime()
    )


def run_scale(data: str, error: str | None, a: argparse.Namespace) -> dict:
    """The scale row: _scale.py in a fresh process, the page cache warm."""
    row = {"name": "fastload, 16-byte records", "data": os.path.relpath(data, HERE)}
    if error:
        return {**row, "error": error}
    _procmem.warm_page_cache(data)
    batches = 300 if a.quick else 3000
    load0 = load_average()
    convert.remove(CACHE)  # decompressed copies of its blocks: from none, as any run
    proc = subprocess.run(
        [sys.executable, SCALE, data, "--batches", str(batches), "--workers", str(WORKERS)],
        capture_output=True,
        text=True,
        cwd=HERE,
        timeout=a.timeout * 3,
        env={**os.environ, "FASTLOAD_CACHE_DIR": CACHE},
    )
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["?"]
        return {**row, "error": lines[-1], "stderr_tail": lines[-15:]}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**row, **res, "load_average": [load0, load_average()]}


# ---------------------------------------------------------------- main


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", choices=["tokens", "images", "scale"], help="run one suite")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 5M tokens, 300 images (batch 64), 500k records for the scale row, 1 "
        "run, short passes; results go to .data/, not results/",
    )
    p.add_argument(
        "--contenders",
        nargs="+",
        metavar="SUBSTRING",
        help="run only the rows whose name contains one of these (torch's and fastload's "
        "uncompressed rows always run); "
        "results go to .data/, not results/",
    )
    p.add_argument("--skip-streaming", action="store_true", help="do not run Streaming")
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per contender (default 3; 1 with --quick)"
    )
    p.add_argument("--images", type=int, default=3000, help="JPEGs (default 3000)")
    p.add_argument("--tokens", type=int, default=TOKENS, help=f"uint16 tokens (default {TOKENS:,})")
    p.add_argument(
        "--scale-records",
        type=int,
        default=SCALE_RECORDS,
        help=f"records of the scale row (default {SCALE_RECORDS:,})",
    )
    p.add_argument("--timeout", type=float, default=180, help="seconds per run (default 180)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10,
        help="before each run, wait at "
        "most this long for other processes to go quiet (default 10 s)",
    )
    p.add_argument(
        "--max-others",
        type=float,
        default=25,
        help="rerun (once) a run during which others used over this %% of the CPU (default 25)",
    )
    a = p.parse_args()
    a.image_batch = 256
    if a.quick:
        a.images, a.tokens, a.repeat, a.image_batch = 300, 5_000_000, 1, 64
        a.scale_records = 500_000
        a.quiet_wait = min(a.quiet_wait, 5)
    return a


def chosen(specs: list[dict], wanted: list[str] | None) -> list[dict]:
    if not wanted:
        return specs
    # the rows the others are compared to always run
    return [
        s for s in specs if s["role"] in ("torch", "raw") or any(w in s["name"] for w in wanted)
    ]


def main() -> None:
    a = arguments()
    suites = [a.only] if a.only else ["tokens", "images", "scale"]
    os.makedirs(OUT, exist_ok=True)

    print("data:", flush=True)
    tokens = convert.cached(
        os.path.join(DATA, f"tokens-{a.tokens}.bin"), False, convert.generate_tokens, a.tokens
    )
    images = convert.cached(
        os.path.join(DATA, f"images-{a.images}"), False, convert.generate_images, a.images
    )
    streaming, why = (
        (None, "not run (--skip-streaming)") if a.skip_streaming else convert.streaming_python()
    )
    if streaming is None:
        print(f"  Streaming not run: {why}")
    token_samples = os.path.getsize(tokens) // 2 // SEQ
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": load_average(),
        },
        "args": vars(a),
        "streaming": why,
        "protocol": {"step_factor": STEP_FACTOR, "min_step_s": MIN_STEP, "workers": WORKERS},
        "data": {
            "token_samples": token_samples,
            "token_mb": os.path.getsize(tokens) / MB,
            "token_batch": 16,
            "images": a.images,
            "image_batch": a.image_batch,
            "image_kb": convert.tree_bytes(images) / a.images / 1e3,
        },
    }
    plans = {
        "tokens": lambda: (token_contenders(tokens, streaming, why), token_samples, 16),
        "images": lambda: (image_contenders(images, streaming, why), a.images, a.image_batch),
    }
    for suite in suites:
        print(f"{suite}:", flush=True)
        if suite == "scale":
            row = run_scale(*scale_data(tokens, a.scale_records), a)
            print(f"  {row['name']}: {row.get('error') or 'done'}", flush=True)
            results["scale"] = [row]
            continue
        specs, samples, batch = plans[suite]()
        rows = run_suite(
            chosen(specs, a.contenders),
            pass_options(suite, samples, batch, a.quick),
            a,
            torch_step=suite == "tokens",
        )
        add_ratios(rows)
        results[suite] = rows
        for r in rows:
            v = r.get("versions", {})
            key = "streaming_versions" if "mosaicml-streaming" in v else "versions"
            if v and key not in results:
                results[key] = {k: x for k, x in v.items() if k not in ("python_version",) and x}
    results["machine"]["load_average_at_end"] = load_average()
    path = PARTIAL if a.quick or a.contenders else RESULTS
    if a.only and path == RESULTS and os.path.exists(path):
        # one suite re-run: the others stay as they were (each row carries its own runs)
        with open(path) as f:
            results = {**json.load(f), **{k: v for k, v in results.items() if k != "args"}}
        results.setdefault("suite_args", {})[a.only] = vars(a)
    _loadreport.report(results, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
