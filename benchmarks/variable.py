"""Variable-length token documents into fixed-length batches: fastload's ``variable=`` specs
against torch's DataLoader doing the same in a ``collate_fn``.

Data: documents of 20-2,000 int32 tokens (~1,000 on average), as a tokenizer writes them.
Two ways to make fixed-length batches, each measured for both loaders:

- pad: each document cut or padded to ``--seq-len`` tokens, plus its length
  (fastload ``Pad(seq_len, truncate=True)``, written into the batch slab by the workers;
  torch: a collate_fn that pads into a new tensor);
- pack: a batch's documents end to end in rows of ``--seq-len``, plus each document's start
  (fastload ``PackRows(seq_len)``; torch: a collate_fn that concatenates and cuts).

torch reads a flat token file (np.memmap) with an offsets array, the usual layout for such
data; fastload reads the same documents converted uncompressed and with zstd (its default).
``batch_size`` documents, shuffled (seeded), ``num_workers=2``; tokens/s counts the tokens
delivered (pad: those kept). Median of ``--repeat`` runs, contenders interleaved; each run is
one epoch after a warm-up epoch (page cache warm).

    python benchmarks/variable.py [--docs 20000] [--seq-len 512] [--repeat 3]

Results: a table on stdout and benchmarks/results/variable.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

import fastload  # noqa: E402

RESULTS = os.path.join(HERE, "results", "variable.json")
DATA = os.path.join(HERE, ".data", "variable")
BATCH, WORKERS, SEED = 32, 2, 0


def build(n_docs: int) -> dict:
    """The documents as a flat token file + offsets (torch's input) and as fastload datasets."""
    root = os.path.join(DATA, f"docs-{n_docs}")
    paths = {
        "tokens": os.path.join(root, "tokens.bin"),
        "offsets": os.path.join(root, "offsets.npy"),
        "none": os.path.join(root, "fastload-none"),
        "zstd": os.path.join(root, "fastload-zstd"),
    }
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 2001, n_docs)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = rng.integers(0, 50_000, int(offsets[-1]), dtype=np.int32)
    tokens.tofile(paths["tokens"])
    np.save(paths["offsets"], offsets)
    for compression in ("none", "zstd"):
        with fastload.Writer(
            paths[compression], {"input_ids": "int32[?]"}, compression=compression
        ) as w:
            for i in range(n_docs):
                w.write({"input_ids": tokens[offsets[i] : offsets[i + 1]]})
    return paths


class Documents(torch.utils.data.Dataset):
    """torch's side: document i is tokens[offsets[i]:offsets[i + 1]] of a memmapped file."""

    def __init__(self, tokens: str, offsets: str) -> None:
        self.tokens_path, self.offsets = tokens, np.load(offsets)
        self.tokens = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.tokens is None:  # opened in each worker
            self.tokens = np.memmap(self.tokens_path, np.int32, "r")
        return torch.from_numpy(np.array(self.tokens[self.offsets[i] : self.offsets[i + 1]]))


def pad_collate(seq_len: int):
    def collate(docs: list) -> dict:
        out = torch.zeros(len(docs), seq_len, dtype=torch.int32)
        lengths = torch.tensor([min(len(d), seq_len) for d in docs])
        for row, d in enumerate(docs):
            out[row, : lengths[row]] = d[:seq_len]
        return {"input_ids": out, "input_ids_lengths": lengths}

    return collate


def pack_collate(seq_len: int):
    def collate(docs: list) -> dict:
        flat = torch.cat(docs)
        rows = -(-len(flat) // seq_len)
        out = torch.zeros(rows * seq_len, dtype=torch.int32)
        out[: len(flat)] = flat
        offsets = torch.zeros(len(docs) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(torch.tensor([len(d) for d in docs]), 0)
        return {"input_ids": out.view(rows, seq_len), "input_ids_offsets": offsets}

    return collate


def loaders(paths: dict, seq_len: int) -> dict:
    """name -> (mode, a function that builds the loader)."""
    docs = Documents(paths["tokens"], paths["offsets"])
    gen = lambda: torch.Generator().manual_seed(SEED)  # noqa: E731
    torch_kw = dict(batch_size=BATCH, shuffle=True, num_workers=WORKERS)
    out = {
        "torch DataLoader, pad collate_fn": (
            "pad",
            lambda: torch.utils.data.DataLoader(
                docs, collate_fn=pad_collate(seq_len), generator=gen(), **torch_kw
            ),
        ),
        "torch DataLoader, pack collate_fn": (
            "pack",
            lambda: torch.utils.data.DataLoader(
                docs, collate_fn=pack_collate(seq_len), generator=gen(), **torch_kw
            ),
        ),
    }
    for compression in ("none", "zstd"):
        for mode, spec in (
            ("pad", fastload.Pad(seq_len, truncate=True)),
            ("pack", fastload.PackRows(seq_len)),
        ):
            out[f"fastload {compression}, {type(spec).__name__}"] = (
                mode,
                (
                    lambda c=compression, s=spec: fastload.DataLoader(
                        fastload.Dataset(paths[c]),
                        generator=gen(),
                        variable={"input_ids": s},
                        **torch_kw,
                    )
                ),
            )
    return out


def tokens_of(batch: dict, mode: str) -> int:
    if mode == "pad":
        return int(batch["input_ids_lengths"].sum())
    return int(batch["input_ids_offsets"][-1])


def epoch(build_loader, mode: str) -> float:
    """Tokens/s over one epoch after its first 2 batches (a warm-up epoch first)."""
    loader = build_loader()
    for _ in loader:
        pass
    tokens, start = 0, None
    for k, batch in enumerate(loader):
        if k == 2:
            start = time.perf_counter()
        elif k > 2:
            tokens += tokens_of(batch, mode)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=20_000)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    paths = build(a.docs)
    contenders = loaders(paths, a.seq_len)
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(a.repeat):
        for name, (mode, make) in contenders.items():
            runs[name].append(epoch(make, mode))
            print(f"  [{r + 1}/{a.repeat}] {name}: {runs[name][-1]:,.0f} tokens/s", flush=True)
    rows = []
    for name, (mode, _) in contenders.items():
        base = np.median(runs[f"torch DataLoader, {mode} collate_fn"])
        median = float(np.median(runs[name]))
        rows.append(
            {
                "name": name,
                "mode": mode,
                "tokens_per_s": median,
                "range": [min(runs[name]), max(runs[name])],
                "x_torch": median / base,
            }
        )
    print(f"\n{'contender':36} {'mode':5} {'tokens/s':>12} {'range':>23} {'x torch':>8}")
    for row in rows:
        lo, hi = row["range"]
        print(
            f"{row['name']:36} {row['mode']:5} {row['tokens_per_s']:12,.0f} "
            f"{lo:11,.0f}-{hi:<11,.0f} {row['x_torch']:8.2f}"
        )
    print(
        f"\n{a.docs:,} documents of 20-2,000 int32 tokens, batch {BATCH}, seq_len {a.seq_len}, "
        f"num_workers={WORKERS}, shuffled; median of {a.repeat} runs; x torch: against "
        "torch's DataLoader making the same batches in a collate_fn."
    )
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(
            {
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "torch": torch.__version__,
                },
                "args": vars(a),
                "rows": rows,
            },
            f,
            indent=1,
        )
    print(f"results    {os.path.relpath(RESULTS)}")


if __name__ == "__main__":
    main()
