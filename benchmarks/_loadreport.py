"""loader.py's report: the tables, each judged row against its targets, and the legend."""

from __future__ import annotations

import os
import textwrap

SEQ = 2049

TARGETS = {  # from the issues: the loader's first targets, and the defaults' (issue 18)
    "tokens": "convert's defaults and --compression zstd, with shuffle=True: >= 0.8x "
    "--compression none from the second epoch on and >= 0.5x on the first, >= 10x torch "
    "DataLoader; every fastload row: "
    "stall < 2% under the sleeping step at 80% load, first batch < 0.2 s warm, steady PSS "
    "<= torch DataLoader's",
    "images": "samples/s >= 1.1x torch+PIL and >= 0.95x the two-core PIL limit, ahead of every "
    "other CPU contender (DALI CPU included); stall < 2% under the sleeping step at 80% load; "
    "first batch < 0.2 s warm; steady PSS <= torch DataLoader's",
    "scale": "each process's private memory after random reads over every shard < 100 MB "
    "beyond the caches' budgets; index <= 4 bytes per record on disk",
}

COLUMNS = [  # (header, key, format, width)
    ("samples/s", "samples_per_s", ".0f", 10),
    ("range", "range", "s", 14),
    ("x torch", "x_torch", ".2f", 8),
    ("x raw", "x_raw", ".2f", 6),
    ("x limit", "x_limit", ".3f", 8),
    ("ep0 s/s", "epoch0_samples_per_s", ".0f", 9),
    ("ep0 x raw", "epoch0_x_raw", ".2f", 10),
    ("1st s", "first_batch_s", ".2f", 6),
    ("cold 1st", "cold_first_batch_s", ".2f", 9),
    ("main us/b", "main_cpu_us", ".1f", 10),
    ("T ms", "stall_step_ms", ".2f", 8),
    ("stall", "stall_pct", ".1f", 6),
    ("load", "stall_load_pct", ".0f", 5),
    ("thr us/b", "stall_threads_cpu_us", ".1f", 9),
    ("@torch T", "stall_fixed_pct", ".1f", 9),
    ("PSS MB", "steady_pss_mb", ".0f", 7),
    ("PSS x t", "pss_x_torch", ".2f", 8),
    ("RSS MB", "steady_rss_mb", ".0f", 7),
    ("priv MB", "steady_private_mb", ".0f", 8),
    ("peak PSS", "peak_pss_mb", ".0f", 9),
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
            + "".join(f"{c:>{w}}" for c, (_, _, _, w) in zip(cells, COLUMNS, strict=True))
        )
    return "\n".join(lines)


def scale_lines(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if "error" in r:
            out.append(f"{r['name']}: {r['error']}")
            continue
        workers = ", ".join(f"{m:.0f}" for m in r["pass_worker_private_mb"])
        index = r.get("index_bytes_per_record")
        out.append(
            f"{r['name']}: {r['records']:,} records in {r['shards']} shards, "
            f"{r['disk_bytes_per_record']:.2f} bytes on disk per record"
            + (f" ({index:.2f} of them index)" if index is not None else "")
            + f"; private MB: after imports {r['imports_private_mb']:.0f}, after opening "
            f"{r['open_private_mb']:.0f}, after one ds[i] per shard {r['read_private_mb']:.0f}"
            f"{anon(r, 'read')}; during {r['pass_batches']} random batches: training process "
            f"{r['pass_main_private_mb']:.0f}{anon(r, 'pass_main')}, workers {workers}"
            f"{anon(r, 'pass_worker')} (block cache budget "
            f"{r['block_cache_budget_mb']:.0f} MB a process)"
        )
    return out


def anon(row: dict, what: str) -> str:
    """' (anonymous N)' for the scale row's measure ``what``, where the run reported it."""
    value = row.get(f"{what}_anonymous_mb")
    if value is None:
        return ""
    if isinstance(value, list):
        return " (anonymous " + ", ".join(f"{v:.0f}" for v in value) + ")"
    return f" (anonymous {value:.0f})"


def check(label: str, value, goal: float, op: str) -> str:
    if value is None:
        return f"{label} ? ({op} {goal})"
    met = {">=": value >= goal, "<": value < goal, "<=": value <= goal}[op]
    return f"{label} {value:.3g} ({op} {goal}: {'yes' if met else 'NO'})"


def verdicts(suite: str, rows: list[dict]) -> list[str]:
    """Each judged row against the issues' targets (met or not, with the number)."""
    if suite == "scale":
        out = []
        for r in rows:
            if "error" in r:
                continue
            budget = r["block_cache_budget_mb"]
            worst = max(
                [r["read_private_mb"], r["pass_main_private_mb"]] + r["pass_worker_private_mb"]
            )
            out.append(
                f"{r['name']}: "
                + "; ".join(
                    [
                        check(
                            "max private beyond imports and cache budget MB",
                            worst - r["imports_private_mb"] - budget,
                            100,
                            "<",
                        ),
                        check("index bytes/record", r.get("index_bytes_per_record"), 4, "<="),
                    ]
                )
            )
        return out
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
        checks = [
            check("stall %", r.get("stall_pct"), 2, "<"),
            check("1st batch s", r.get("first_batch_s"), 0.2, "<"),
            check("PSS x torch", r.get("pss_x_torch"), 1.0, "<="),
        ]
        if suite == "tokens" and r.get("role") != "raw":
            checks = [
                check("x raw", r.get("x_raw"), 0.8, ">="),
                check("first epoch x raw", r.get("epoch0_x_raw"), 0.5, ">="),
                check("x torch", r.get("x_torch"), 10, ">="),
                *checks,
            ]
        if suite == "images":
            checks = [
                check("x torch", r.get("x_torch"), 1.1, ">="),
                check("x limit", r.get("x_limit"), 0.95, ">="),
                *checks,
            ]
            best = max(others, key=lambda o: o["samples_per_s"], default=None)
            if best:
                met = r["samples_per_s"] > best["samples_per_s"]
                checks.append(f"ahead of {best['name']}: {'yes' if met else 'NO'}")
        if "stall_load_pct" in r:
            checks.append(
                f"(the stall's step {r['stall_step_ms']:.2f} ms, load reached "
                f"{r['stall_load_pct']:.0f}%)"
            )
        out.append(f"{r['name']}: " + "; ".join(checks))
    return out


def legend(results: dict, path: str) -> list[tuple[str, str]]:
    """(label, text) lines under the tables."""
    a, d, proto = results["args"], results["data"], results["protocol"]
    ver = results.get("versions", {})
    sver = results.get("streaming_versions")
    main_env = ", ".join(f"{k} {v}" for k, v in ver.items() if k != "python")
    venv = (
        ", ".join(f"{k} {v}" for k, v in sver.items() if k != "python")
        if sver
        else results["streaming"]
    )
    m = results["machine"]
    out = []
    if "tokens" in results:
        out.append(
            (
                "tokens",
                f"{d['token_samples']:,} samples of {SEQ} uint16 tokens "
                f"({d['token_mb']:.0f} MB, {d['token_mb'] / 134.2:.1f}x the 128 MiB a "
                f"process keeps decompressed by default), batch {d['token_batch']}, "
                "shuffle=True (a global order).",
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
            f"num_workers={proto['workers']} everywhere (DALI: num_threads=2), torch's "
            f"default prefetch (2 batches a worker); {m['cpus']} cores; load average "
            f"{m['load_average_at_start']:.1f} at the start, {m.get('load_average_at_end', 0):.1f}"
            f" at the end. Median of {a['repeat']} runs, each a fresh process; runs of "
            "different contenders interleave.",
        ),
        (
            "samples/s",
            "the later epochs: a new iteration after the first epoch (epoch 1; the page cache "
            "warm), the batches after its first 2 (with 2 workers the first two arrive "
            "together) over their time; tokens: at most 6 s of it. range: slowest-fastest "
            "run. ep0 s/s: the same over the first epoch, right after the first batch (tokens: "
            "at most 60 s of it; the JSON says whether it finished), every cache the loader "
            "fills itself empty, the page cache warm.",
        ),
        (
            "x torch",
            "samples/s / torch DataLoader's. x raw, ep0 x raw: fastload on convert's "
            "default copy (or the `--compression zstd` one) / on the `--compression none` "
            "copy, later epochs and first epoch. x limit: / the practical limit's (bare "
            "memmap gather; two-core PIL limit).",
        ),
        (
            "1st s",
            "time to first batch: from building the dataset and loader (imports done "
            "before: torch, the contender's library, and Pillow for every row that "
            "decodes with it) to the first batch, the data read just before (warm page "
            "cache). cold 1st: the same in a fresh process after the data's pages were "
            "dropped from the page cache (posix_fadvise DONTNEED on every data file).",
        ),
        (
            "stall",
            "a fresh iteration in which a step of T consumes each batch: the step sleeps, as "
            "a training step waiting on a GPU leaves its CPU thread waiting, and spins "
            "only its last 0.2 ms (sleep overshoots). T = "
            f"{proto['step_factor']} x the contender's own steady time per batch (80% of its "
            f"rate) but never under {1e3 * proto['min_step_s']:.0f} ms (T ms). stall: time "
            "inside next() / the pass's time, its first batch left out. load: the rate the "
            "pass reached / the steady rate (80% unless T was raised to its floor, or the "
            "loader stalled). Time inside next() includes the loader's own work in the "
            "consumer (main us/b), unless the loader does it on a thread of its own during "
            "the step: thr us/b is the CPU of the training process's threads other than the "
            "consumer's (a loader's, DALI's) per batch during that pass.",
        ),
        (
            "@torch T",
            "tokens: one more such pass with torch DataLoader's T of the same round (its "
            "stall_fixed in the JSON, with its load): every loader under the same training "
            "step, the question of a user who switches loaders.",
        ),
        (
            "main us/b",
            "CPU time of the consumer thread per batch during the steady pass "
            "(time.thread_time): what the loader costs the training process. DALI's "
            "own threads are not in it.",
        ),
        (
            "memory",
            "the contender's process tree (training process and workers) read from "
            "/proc/PID/smaps_rollup every 0.2 s, each measure summed over the processes "
            "at one instant. PSS MB: proportional set size, shared pages divided among the "
            "processes that map them (what the tree costs the machine), the median over the "
            "samples of the later epochs (steady and stall passes); RSS MB: the same for RSS "
            "(counts a shared page once per process); priv MB: Private_Clean + Private_Dirty "
            "(pages one process holds alone); peak PSS: the highest summed PSS of the run. "
            "PSS x t: PSS MB / torch DataLoader's. The JSON also has held (Pss_Anon + "
            "Pss_Shmem: without file-backed pages), each process's share (per_process_mb) "
            "and net_mb (peak PSS less that of a process that only imports the contender's "
            "libraries).",
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
            "tokens: fastload.DataLoader(fastload.Dataset(path), batch_size=16, "
            "shuffle=True, seed=0, num_workers=2), as the issue's new user writes it, on "
            "the copy `fastload convert --from tokens --seq-len 2049 --dtype uint16` writes "
            "(its default, --compression auto, keeps zstd only where it halves a block: "
            "these tokens are stored raw), on the one with `--compression zstd` (every "
            "block compressed: ~30% smaller) and on the one with `--compression none`; 'torch's "
            "order': generator= instead of seed= (torch's RandomSampler order, a drop-in). "
            "Images: the same with generator=, convert's defaults, and decode={'image': "
            "ImageDecode(size=224, train=True)}, batches (B, 224, 224, 3) uint8. 'decode "
            "by DALI': ImageDecode(..., backend='dali'): the 2 workers read the JPEG bytes "
            "and draw the crops, DALI's CPU backend (2 threads) decodes them in the main "
            "process, a batch ahead (not judged: DALI is meant for the GPU).",
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
            "10 tar shards (ShardWriter), split over the 2 workers; "
            "WebDataset(urls, shardshuffle=10).shuffle(1000).decode('pil')"
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
        (
            "scale",
            "a dataset of 16-byte records (8 uint16 tokens: `fastload convert --from tokens "
            "--seq-len 8 --dtype uint16`, convert's defaults, 5 shards), read in a fresh "
            "process: private memory (Private_Clean + Private_Dirty) after the imports, "
            "after fastload.Dataset(path), after one ds[i] in each shard, then the highest "
            "of each process during a loader pass (batch 16, shuffle=True, seed=0, 2 "
            "workers) over random records of every shard, sampled every 0.2 s. Bytes on "
            "disk: every file of the dataset / records; index: the shards' index sections "
            "(their trailers' index_size) / records.",
        ),
        ("versions", f"main env: {main_env}."),
        *(("targets", f"{suite}: {TARGETS[suite]}.") for suite in TARGETS if suite in results),
    ]
    for suite in ("tokens", "images", "scale"):
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
    if "scale" in results:
        print("\nscale")
        for line in scale_lines(results["scale"]):
            print(textwrap.fill(line, 100, subsequent_indent="  "))
    print()
    for label, text in legend(results, path):
        print(textwrap.fill(text, 100, initial_indent=f"{label:<11}", subsequent_indent=" " * 11))
