"""How fast does fastload's DataLoader feed a training loop, next to torch's DataLoader and peers?

Same data, same batch size, num_workers=2, on this machine. Tokens: samples of 2049 uint16
tokens, batch 16, shuffled: torch DataLoader over a numpy memmap, MosaicML Streaming (MDS),
LitData, fastload, and a bare single-process memmap gather (the practical limit). Images:
~110 KB JPEGs, RandomResizedCrop(224) + flip, batch 256: torch DataLoader + PIL, WebDataset,
Streaming, DALI's CPU pipeline, fastload, and 2 processes of plain PIL (the practical limit).
Per contender: steady samples/s, time to first batch, peak memory of its process tree, and the
data stall under a fake training step at 80% of its own top rate. All data is generated here,
deterministically, and cached in benchmarks/.data/ (the inputs are shared with convert.py).

    python benchmarks/loader.py [--only tokens|images] [--quick] [--skip-streaming] [--repeat N]

Results: benchmarks/results/loader.json (--quick: benchmarks/.data/loader-quick.json).
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
import textwrap
import threading
import time

import convert  # data generators, cache markers and Streaming's venv, shared with convert.py

HERE, DATA = convert.HERE, convert.DATA
OUT = os.path.join(DATA, "loader")  # converted copies of the inputs, one per format
RESULTS = os.path.join(HERE, "results", "loader.json")
RUNNER = os.path.join(HERE, "_loaders.py")
SEQ = 2049
WORKERS = 2
STEP_FACTOR = (
    1.25  # fake step = 1.25 x mean batch time: the loader is asked for 80% of its top rate
)
MB = 1e6

# fastload's conversions, as the issue spells them (zstd is convert's default); the second
# token copy is uncompressed, which fastload reads on its batched raw path.
FASTLOAD_TOKENS = ["--from", "tokens", "--seq-len", str(SEQ), "--dtype", "uint16"]
FASTLOAD_IMAGES = ["--from", "imagefolder"]

TARGETS = {  # from the issue
    "tokens": "samples/s >= 10x torch DataLoader and >= 0.3x the bare gather; stall < 5% at 80% "
    "load; first batch < 0.5 s; peak memory <= torch DataLoader's",
    "images": "samples/s >= 1.1x torch+PIL and >= 0.95x the two-core PIL limit, ahead of every "
    "other CPU contender (DALI CPU included); stall < 2%; first batch < 0.5 s; "
    "peak memory <= torch DataLoader's",
}


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
            if f.endswith(".py") and "loader" not in d
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


# ---------------------------------------------------------------- contenders


def contender(
    name, kind, data, python=sys.executable, role=None, stall=True, error=None, judge=False
):
    """One row: ``kind`` is _loaders.py's name for it, ``role`` 'torch' or 'limit' for the
    rows others are compared to; ``error`` says why it cannot run (its data did not build);
    ``judge``: the row the issue's targets are checked on (fastload as the issue spells it)."""
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
    n = os.path.basename(tokens).split(".")[0]  # tokens-50000000
    fl, fl_raw = os.path.join(OUT, f"fastload-{n}"), os.path.join(OUT, f"fastload-{n}-raw")
    fresh = fastload_mtime()
    raw_error = built(
        fl_raw, fastload_convert(tokens, fl_raw, FASTLOAD_TOKENS + ["--compression", "none"]), fresh
    )
    rows = [
        contender("torch DataLoader, memmap", "torch-tokens", tokens, role="torch"),
        # Token data is converted uncompressed for random access (a zstd block must be
        # decompressed whole for each 4 KB sample drawn from it): the row the targets judge.
        contender("fastload DataLoader", "fastload-tokens", fl_raw, error=raw_error, judge=True),
        contender(
            "fastload, seed= (planned order)", "fastload-planned-tokens", fl_raw, error=raw_error
        ),
        contender(
            "fastload, zstd (convert default)",
            "fastload-tokens",
            fl,
            error=built(fl, fastload_convert(tokens, fl, FASTLOAD_TOKENS), fresh),
        ),
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
            error=built(lit, runner(sys.executable, "write-litdata-tokens", tokens, lit)),
        )
    )
    # Its stall passes too: the floor the 80% protocol sets (its next() is the whole gather).
    rows.append(contender("bare memmap gather", "gather-tokens", tokens, role="limit"))
    return rows


def image_contenders(images: str, streaming: str | None, why: str) -> list[dict]:
    n = os.path.basename(images)  # images-3000
    fl, wds, mds = (os.path.join(OUT, f"{k}-{n}") for k in ("fastload", "wds", "mds"))
    rows = [
        contender("torch DataLoader + PIL", "torch-images", images, role="torch"),
        contender(
            "fastload DataLoader",
            "fastload-images",
            fl,
            error=built(fl, fastload_convert(images, fl, FASTLOAD_IMAGES), fastload_mtime()),
            judge=True,
        ),
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
        contender(
            "fastload, decode by DALI (CPU)",
            "fastload-dali-images",
            fl,
            error=built(fl, fastload_convert(images, fl, FASTLOAD_IMAGES), fastload_mtime()),
        )
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


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (threads can fork too: every task's children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:  # it exited meanwhile
            pass
    return out


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pss(pid: int) -> tuple[int, int]:
    """(PSS, the part of it that is anonymous or shared memory): the second leaves out
    file-backed pages (mapped data files, shared libraries), page cache the kernel can drop."""
    total = held = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                total = int(line.split()[1]) * 1024
            elif line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                held += int(line.split()[1]) * 1024
    return total, held


class TreeMemory(threading.Thread):
    """Peak memory of a process tree: summed RSS every 50 ms and summed PSS (shared pages
    counted once) every 250 ms. PSS costs ~2.5 ms per process to read; reading it every
    50 ms would take ~15% of a core from the contender on this 2-core machine."""

    def __init__(self, pid: int, interval: float = 0.05, pss_every: int = 5):
        super().__init__(daemon=True)
        self.pid, self.interval, self.pss_every = pid, interval, pss_every
        self.peak_rss = self.peak_pss = self.peak_held = self.peak_procs = 0
        self.halt = threading.Event()

    def run(self) -> None:
        tick = 0
        while not self.halt.wait(self.interval if tick else 0):
            pids = tree(self.pid)
            self.peak_procs = max(self.peak_procs, len(pids))
            self.peak_rss = max(self.peak_rss, self.total(rss, pids))
            if tick % self.pss_every == 0:
                total = held = 0
                for p in pids:
                    try:
                        t, h = pss(p)
                    except OSError:
                        continue
                    total, held = total + t, held + h
                self.peak_pss, self.peak_held = max(self.peak_pss, total), max(self.peak_held, held)
            tick += 1

    @staticmethod
    def total(read, pids: list[int]) -> int:
        size = 0
        for p in pids:
            try:
                size += read(p)
            except OSError:
                pass
        return size

    def stop(self) -> None:
        self.halt.set()
        self.join()


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


def warm_cache(path: str) -> None:
    """Read the contender's data once, so every run starts from the same warm page cache."""
    paths = (
        [path]
        if os.path.isfile(path)
        else [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]
    )
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def run_once(spec: dict, opts: list[str], timeout: float, quiet_wait: float) -> dict:
    """One fresh process of one contender: what it printed, plus its tree's peak memory and
    how much CPU others used meanwhile. Never raises."""
    waited = wait_for_quiet(quiet_wait)
    warm_cache(spec["data"])
    cmd = runner(spec["python"], "run", spec["kind"], spec["data"], *opts)
    cpu0, kids0, self0 = (
        busy_cpu_s(),
        resource.getrusage(resource.RUSAGE_CHILDREN),
        resource.getrusage(resource.RUSAGE_SELF),
    )
    start = time.perf_counter()
    # Its own session, so a timeout can end its whole tree (and only it).
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
        start_new_session=True,
    )
    memory = TreeMemory(proc.pid)
    memory.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        memory.stop()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        lines = (err or out).strip().splitlines() or [f"exit {proc.returncode}"]
        return {"error": lines[-1], "stderr_tail": lines[-15:]}

    def cpu(r):
        return r.ru_utime + r.ru_stime

    own = cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - cpu(kids0)
    mine = cpu(resource.getrusage(resource.RUSAGE_SELF)) - cpu(self0)
    others = max(0.0, busy_cpu_s() - cpu0 - own - mine)
    return {
        **json.loads(out.strip().splitlines()[-1]),
        "wall_s": wall,
        "cpu_s": own,
        "peak_pss_mb": memory.peak_pss / MB,
        "peak_rss_mb": memory.peak_rss / MB,
        "peak_held_mb": memory.peak_held / MB,
        "processes": memory.peak_procs,
        "quiet_wait_s": waited,
        "others_pct": 100 * others / (wall * os.cpu_count()),
    }


def import_footprint(spec: dict) -> float:
    """Peak PSS (MB) of a process that only imports the contender's libraries: the part of
    its peak memory that is its environment (Streaming's venv has a CUDA build of torch)."""
    proc = subprocess.Popen(
        runner(spec["python"], "imports", spec["kind"], "-"),
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    memory = TreeMemory(proc.pid)
    memory.start()
    proc.wait()
    memory.stop()
    return memory.peak_pss / MB


# ---------------------------------------------------------------- a suite


def pass_options(suite: str, samples: int, batch: int, quick: bool) -> list[str]:
    """Tokens: one epoch per pass, capped in time. Images: one epoch (~12 batches of 256) for
    the steady pass, 8 batches for each stall pass (~3 s each)."""
    epoch = -(-samples // batch)
    if suite == "tokens":
        steady, stall, secs, stall_secs = epoch, epoch, (2 if quick else 4), (1 if quick else 2)
    else:
        steady, stall, secs, stall_secs = (
            epoch,
            min(epoch, 8),
            (10 if quick else 20),
            (3 if quick else 6),
        )
    return [
        "--batch",
        str(batch),
        "--batches",
        str(steady),
        "--stall-batches",
        str(stall),
        "--seconds",
        str(secs),
        "--stall-seconds",
        str(stall_secs),
        "--step-factor",
        str(STEP_FACTOR),
    ]


def run_suite(
    specs: list[dict], opts: list[str], a: argparse.Namespace, torch_step: bool = False
) -> list[dict]:
    """Runs interleave (every contender once, then again), so a noisy minute on this shared
    machine spreads over all rows instead of sinking one; a run during which other processes
    used over --max-others % of the CPU is run again once, and the quieter one kept.

    ``torch_step``: the contenders after torch's DataLoader (the first row) also measure their
    stall under the step at which torch's run of the same round was at 80% load."""
    runs = {s["name"]: [] for s in specs}
    for r in range(a.repeat):
        fixed: list[str] = []
        for s in specs:
            if s["error"] or s["python"] is None:
                continue
            no_stall = [] if s["stall"] else ["--stall-batches", "0"]  # the last one counts
            extra = no_stall + (fixed if s["stall"] else [])
            res = run_once(s, opts + extra, a.timeout, a.quiet_wait)
            if res.get("others_pct", 0) > a.max_others:
                print(
                    f"  [{r + 1}/{a.repeat}] {s['name']}: others used "
                    f"{res['others_pct']:.0f}% of the CPU, once more",
                    flush=True,
                )
                again = run_once(s, opts + extra, a.timeout, a.quiet_wait)
                if "error" in again or again["others_pct"] < res["others_pct"]:
                    res = again
            runs[s["name"]].append(res)
            if torch_step and s["role"] == "torch" and "step_s" in res:
                fixed = ["--fixed-step", f"{res['step_s']:.6g}"]
            what = (
                f"failed: {res['error']}"
                if "error" in res
                else f"{res['samples_per_s']:,.0f} samples/s, others {res['others_pct']:.0f}%"
            )
            print(f"  [{r + 1}/{a.repeat}] {s['name']}: {what}", flush=True)
    rows = [summarize(s, runs[s["name"]], a.max_others) for s in specs]
    for s, row in zip(specs, rows):
        if "error" not in row:
            row["imports_mb"] = import_footprint(s)
            row["net_mb"] = row["peak_pss_mb"] - row["imports_mb"]
    return rows


def summarize(spec: dict, runs: list[dict], max_others: float) -> dict:
    """Each measure's median over the runs that worked, the quiet ones if any (range: min-max
    of samples/s over those)."""
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

    def med(get):
        return statistics.median(get(r) for r in ok)

    rates = [r["samples_per_s"] for r in ok]
    row.update(
        samples_per_s=med(lambda r: r["samples_per_s"]),
        range=f"{min(rates):.0f}-{max(rates):.0f}",
        peak_pss_mb=med(lambda r: r["peak_pss_mb"]),
        peak_held_mb=med(lambda r: r["peak_held_mb"]),
        peak_rss_mb=med(lambda r: r["peak_rss_mb"]),
        others_pct=max(r["others_pct"] for r in ok),
        runs_used=f"{len(ok)}/{len(runs)}",
        failed_runs=len(runs) - len(done),
        batch=ok[0]["batch"],
        versions=ok[0]["versions"],
        runs=runs,
    )
    if ok[0]["first_batch_s"] is not None:
        row["first_batch_s"] = med(lambda r: r["first_batch_s"])
    if ok[0].get("main_cpu_us") is not None:
        row["main_cpu_us"] = med(lambda r: r["main_cpu_us"])
    for kind in ("busy", "sleep", "fixed"):
        if all(f"stall_{kind}" in r for r in ok):
            row[f"stall_{kind}_pct"] = med(lambda r, kind=kind: r[f"stall_{kind}"]["pct"])
    if spec["kind"].startswith("streaming"):  # it ran from its own venv: say so in the row
        row["name"] += f" (venv, torch {row['versions'].get('torch', '?')})"
    if "loader_stats" in ok[0]:
        row["loader_stats"] = [r["loader_stats"] for r in ok]
    return row


def add_ratios(rows: list[dict]) -> None:
    """x torch / x limit: samples/s against the torch DataLoader and practical-limit rows;
    mem x torch: peak PSS against torch DataLoader's."""
    ref = {r["role"]: r for r in rows if r["role"] and "error" not in r}
    for r in rows:
        if "error" in r:
            continue
        if "torch" in ref:
            r["x_torch"] = r["samples_per_s"] / ref["torch"]["samples_per_s"]
            r["mem_x_torch"] = r["peak_held_mb"] / ref["torch"]["peak_held_mb"]
            r["pss_x_torch"] = r["peak_pss_mb"] / ref["torch"]["peak_pss_mb"]
        if "limit" in ref:
            r["x_limit"] = r["samples_per_s"] / ref["limit"]["samples_per_s"]


# ---------------------------------------------------------------- report

COLUMNS = [
    ("samples/s", "samples_per_s", ".0f", 10),
    ("range", "range", "s", 14),
    ("x torch", "x_torch", ".2f", 8),
    ("x limit", "x_limit", ".3f", 8),
    ("1st s", "first_batch_s", ".2f", 7),
    ("main us/b", "main_cpu_us", ".1f", 10),
    ("stall busy", "stall_busy_pct", ".1f", 11),
    ("stall sleep", "stall_sleep_pct", ".1f", 12),
    ("@torch step", "stall_fixed_pct", ".1f", 12),
    ("peak MB", "peak_pss_mb", ".0f", 8),
    ("held MB", "peak_held_mb", ".0f", 8),
    ("mem x torch", "mem_x_torch", ".2f", 12),
    ("others", "others_pct", ".0f", 7),
    ("runs", "runs_used", "s", 5),
]
NAME = 34


def table(title: str, rows: list[dict]) -> str:
    lines = [f"{title:<{NAME}}" + "".join(f"{h:>{w}}" for h, _, _, w in COLUMNS)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']:<{NAME}}{r['error'][:110]}")
            continue
        cells = [format(r[k], f) if k in r else "-" for _, k, f, _ in COLUMNS]
        lines.append(
            f"{r['name'][: NAME - 1]:<{NAME}}"
            + "".join(f"{c:>{w}}" for c, (_, _, _, w) in zip(cells, COLUMNS))
        )
    return "\n".join(lines)


def verdicts(suite: str, rows: list[dict]) -> list[str]:
    """Each fastload row against the issue's targets (met or not, with the number)."""
    others = [
        r
        for r in rows
        if "error" not in r and not r["kind"].startswith("fastload") and r["role"] is None
    ]
    out = []
    for r in rows:
        if not r.get("judge"):
            continue
        if "error" in r:
            out.append(f"{r['name']}: not available")
            continue
        stall = 5 if suite == "tokens" else 2
        checks = [
            ("x torch", r.get("x_torch"), 10 if suite == "tokens" else 1.1, ">="),
            ("x limit", r.get("x_limit"), 0.3 if suite == "tokens" else 0.95, ">="),
            ("stall sleep %", r.get("stall_sleep_pct"), stall, "<"),
            ("stall busy %", r.get("stall_busy_pct"), stall, "<"),
            ("1st batch s", r.get("first_batch_s"), 0.5, "<"),
            ("mem x torch", r.get("mem_x_torch"), 1.0, "<="),
        ]
        if suite == "tokens":
            checks.append(("main us/batch", r.get("main_cpu_us"), 20, "<="))
        parts = []
        for label, value, goal, op in checks:
            if value is None:
                parts.append(f"{label} ? ({op} {goal})")
                continue
            met = {">=": value >= goal, "<": value < goal, "<=": value <= goal}[op]
            parts.append(f"{label} {value:.3g} ({op} {goal}: {'yes' if met else 'NO'})")
        if suite == "tokens":
            ref = {o["role"]: o for o in rows if o.get("role") and "error" not in o}
            if "stall_fixed_pct" in r and "torch" in ref:
                parts.append(
                    f"(not a target) stall at torch's step {r['stall_fixed_pct']:.2g}% "
                    f"against torch's {ref['torch'].get('stall_sleep_pct', 0):.2g}%"
                )
            if "stall_sleep_pct" in ref.get("limit", {}):
                parts.append(
                    f"(the bare gather's own stall at its 80%: "
                    f"{ref['limit']['stall_sleep_pct']:.2g}%)"
                )
        if suite == "images":
            best = max(others, key=lambda o: o["samples_per_s"], default=None)
            if best:
                met = r["samples_per_s"] > best["samples_per_s"]
                parts.append(f"ahead of {best['name']}: {'yes' if met else 'NO'}")
        out.append(f"{r['name']}: " + "; ".join(parts))
    return out


def legend(results: dict, path: str) -> list[tuple[str, str]]:
    """(label, text) lines under the tables."""
    a, d = results["args"], results["data"]
    ver = results.get("versions", {})
    sver = results.get("streaming_versions")
    main_env = ", ".join(f"{k} {v}" for k, v in ver.items() if k != "python")
    venv = (
        ", ".join(f"{k} {v}" for k, v in sver.items() if k != "python")
        if sver
        else results["streaming"]
    )
    shards = 10
    out = []
    if "tokens" in results:
        out.append(
            (
                "tokens",
                f"{d['token_samples']:,} samples of {SEQ} uint16 tokens "
                f"({d['token_mb']:.0f} MB), batch {d['token_batch']}, shuffled.",
            )
        )
    if "images" in results:
        out.append(
            (
                "images",
                f"{d['images']} JPEGs ({d['image_kb']:.0f} KB avg), "
                f"RandomResizedCrop(224) + horizontal flip, batch {d['image_batch']}.",
            )
        )
    out += [
        (
            "",
            f"num_workers=2 everywhere (DALI: num_threads=2); {os.cpu_count()} cores. Median "
            f"of {a['repeat']} runs, each a fresh process; runs of different contenders "
            "interleave.",
        ),
        (
            "samples/s",
            "steady state: the batches after the first 2 (with 2 workers the first "
            "two arrive together), over their time. A pass is one epoch (tokens: at "
            "most 4 s). range: slowest-fastest run.",
        ),
        (
            "x torch",
            "samples/s / torch DataLoader's. x limit: / the practical limit's (bare "
            "memmap gather; two-core PIL limit).",
        ),
        (
            "1st s",
            "time to first batch: from building the dataset and loader (imports done "
            "before: torch, the contender's library, and Pillow for every row that "
            "decodes with it) to the first batch.",
        ),
        (
            "stall",
            f"a fresh pass in which a fake step of {STEP_FACTOR} x the contender's own "
            "mean batch time (80% of its top rate) consumes each batch: time inside "
            "next() / pass time, its first batch left out. busy: the step spins on a "
            "core, the issue's definition; on 2 cores that core is taken from the "
            "workers, so any loader that needs both cores stalls. sleep: the step sleeps, "
            "as a step that waits on a GPU does (a step under 0.2 ms spins: the token "
            "rows' steps do, so their two stall columns measure the same thing). The "
            "targets are checked on sleep, the training loop the issue has in mind "
            "(a GPU step; ~30% for torch's tokens, as the issue measured). Time inside "
            "next() includes the loader's own work in the consumer (main us/b), so at a "
            "top rate of T per batch a stall < 5% needs that work under ~0.066 T. DALI's "
            "pipeline is not restarted. The bare gather is measured the same way: its "
            "next() is the whole gather, so its stall is the floor this protocol sets "
            "for a loop that does its work in the consumer.",
        ),
        (
            "@torch step",
            "tokens: one more such pass, the step sleeping as long as torch's "
            "DataLoader's step at 80% load in the same round (1.25x torch's own "
            "time per batch; stall_fixed.step_s in the JSON): every "
            "loader under the same training step, the question of a user who "
            "switches loaders. Not a target of the issue; shown next to it.",
        ),
        (
            "main us/b",
            "CPU time of the consumer thread per batch during the steady pass "
            "(time.thread_time): what the loader costs the training process. DALI's "
            "own threads are not in it.",
        ),
        (
            "peak MB",
            "peak summed PSS (/proc/PID/smaps_rollup: shared pages counted once) of "
            "the contender's process tree, sampled every 250 ms (RSS every 50 ms: in "
            "the JSON). held MB: the anonymous and shared-memory part of it (Pss_Anon "
            "+ Pss_Shmem), i.e. without file-backed pages: shared libraries and "
            "memory-mapped data files are page cache the kernel can drop, and a "
            "loader that mmaps its shards (fastload, Streaming, LitData) would "
            "otherwise be charged for the page cache a loader that read()s its files "
            "also fills but is not charged for. mem x torch: held MB against torch "
            "DataLoader's (PSS ratio in the JSON: pss_x_torch). JSON net_mb: peak MB "
            "less that of one process that only imports the contender's libraries "
            "(the Streaming venv's torch is a CUDA build: ~535 MB against ~166).",
        ),
        (
            "others",
            "% of the machine's CPU used by other processes (tests, other benchmarks) "
            "during a run, max over the runs used. Before each run we wait up to "
            f"{a['quiet_wait']:.0f} s for them to use < 0.25 core; a run with others > "
            f"{a['max_others']:.0f}% is run again once and the quieter one kept. runs: "
            f"runs used / runs: only runs with others <= {a['max_others']:.0f}% are used "
            "when there are any.",
        ),
        (
            "torch",
            "torch.utils.data.DataLoader(shuffle=True, num_workers=2), default collate. "
            "Tokens: map-style Dataset over np.memmap returning "
            "torch.from_numpy(np.array(row)). Images: ImageFolder-like; PIL open + "
            "convert RGB, torchvision's RandomResizedCrop parameters, crop + resize "
            "BILINEAR, flip, uint8 CHW tensor as PILToTensor.",
        ),
        (
            "fastload",
            "fastload.DataLoader(fastload.Dataset(path), batch_size, shuffle=True, "
            "num_workers=2, generator=seeded) as a drop-in (torch's RandomSampler "
            "order); images with decode={'image': ImageDecode(size=224, train=True)}, "
            "batches (B, 224, 224, 3) uint8. Data: tokens converted with "
            "`--compression none` (random access; the row the targets judge), images "
            "with convert's defaults. 'seed=': the same with fastload's own planned "
            "order (seed=0). 'zstd': tokens as convert writes them by default. "
            "'decode by DALI': ImageDecode(..., backend='dali'): the 2 workers read "
            "the JPEG bytes and draw the crops, DALI's CPU backend (2 threads) "
            "decodes them in the main process, a batch ahead (not judged: DALI is "
            "meant for the GPU; on 2 cores it shares them with the workers).",
        ),
        (
            "Streaming",
            "StreamingDataset(local=MDS dir, batch_size, shuffle=True) + torch "
            f"DataLoader. MDS: 64 MB shards, uncompressed; tokens ndarray:uint16:"
            f"{SEQ}; images a 'bytes' column, PIL-decoded in __getitem__, then the "
            f"torch transform. Ran from its own venv: {venv}.",
        ),
        (
            "LitData",
            "litdata.optimize with TokensLoader (chunks of 8192 samples); "
            f"StreamingDataset(item_loader=TokensLoader(block_size={SEQ}), shuffle="
            "True) + StreamingDataLoader.",
        ),
        (
            "WebDataset",
            f"{shards} tar shards (ShardWriter), split over the 2 workers; "
            f"WebDataset(urls, shardshuffle={shards}).shuffle(1000).decode('pil')"
            f".map(torch transform).batched({d['image_batch']}) + WebLoader("
            "batch_size=None, num_workers=2).",
        ),
        (
            "DALI CPU",
            "readers.file(random_shuffle=True) -> decoders.image(device='cpu') -> "
            "random_resized_crop(224) -> flip(coin_flip); device_id=None, "
            "num_threads=2; DALIGenericIterator (it copies each output into a torch "
            "tensor). fused: decoders.image_random_crop (decodes only the crop) + "
            "resize, DALI's own ImageNet recipe.",
        ),
        (
            "limits",
            f"bare gather: one process, shuffled order, np.take of 16 rows of the "
            f"memmap into one preallocated (16, {SEQ}) array. Two-core PIL limit: 2 "
            "processes, each PIL decode + crop + resize + flip of every other image, "
            "no loader, no batching; images / (last end - first start). It decodes every "
            "pixel, as torchvision does. 'scaled decode': the same with Image.draft, "
            "decoding at the smallest DCT scale that keeps the crop >= 224 px (as "
            "fastload's ImageDecode does): the limit for a loader that decodes less.",
        ),
        ("versions", f"main env: {main_env}."),
        ("targets", f"tokens: {TARGETS['tokens']}. images: {TARGETS['images']}."),
    ]
    for suite in ("tokens", "images"):
        out += [("", f"{suite}: {line}") for line in verdicts(suite, results.get(suite, []))]
        for r in results.get(suite, []):
            if r.get("loader_stats"):
                s = r["loader_stats"][0]
                out.append(
                    (
                        "",
                        f"{suite}: {r['name']}: stats() of its first run: "
                        + ", ".join(
                            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in s.items()
                            if not isinstance(v, dict)
                        ),
                    )
                )
    out.append(("results", os.path.relpath(path)))
    return out


def report(results: dict, path: str) -> None:
    for suite in ("tokens", "images"):
        if suite in results:
            print(f"\n{table(suite, results[suite])}")
    print()
    for label, text in legend(results, path):
        print(textwrap.fill(text, 100, initial_indent=f"{label:<11}", subsequent_indent=" " * 11))


# ---------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", choices=["tokens", "images"], help="run one suite")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 5M tokens, 300 images "
        "(batch 64), 1 run, short passes; results go to .data/, not results/",
    )
    p.add_argument("--skip-streaming", action="store_true", help="do not run Streaming")
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per contender (default 3; 1 with --quick)"
    )
    p.add_argument("--images", type=int, default=3000, help="JPEGs (default 3000)")
    p.add_argument("--tokens", type=int, default=50_000_000, help="uint16 tokens (default 50M)")
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
    image_batch = 256
    if a.quick:
        a.images, a.tokens, a.repeat, image_batch = 300, 5_000_000, 1, 64
        a.quiet_wait = min(a.quiet_wait, 5)
    suites = [a.only] if a.only else ["tokens", "images"]
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
    n_bytes = convert.tree_bytes(images)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "args": vars(a),
        "streaming": why,
        "data": {
            "token_samples": token_samples,
            "token_mb": os.path.getsize(tokens) / MB,
            "token_batch": 16,
            "images": a.images,
            "image_batch": image_batch,
            "image_kb": n_bytes / a.images / 1e3,
        },
    }
    plans = {
        "tokens": lambda: (token_contenders(tokens, streaming, why), token_samples, 16),
        "images": lambda: (image_contenders(images, streaming, why), a.images, image_batch),
    }
    for suite in suites:
        specs, samples, batch = plans[suite]()
        print(f"{suite}:", flush=True)
        rows = run_suite(
            specs, pass_options(suite, samples, batch, a.quick), a, torch_step=suite == "tokens"
        )
        add_ratios(rows)
        results[suite] = rows
        for r in rows:
            v = r.get("versions", {})
            key = "streaming_versions" if "mosaicml-streaming" in v else "versions"
            if v and key not in results:
                results[key] = {k: x for k, x in v.items() if k not in ("python_version",) and x}
    path = os.path.join(DATA, "loader-quick.json") if a.quick else RESULTS
    report(results, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
