"""Pretraining input: tokenized documents of any length, packed into fixed-length rows.

    python examples/pack_tokens.py [--docs 20000] [--seq-len 512] [--workdir /tmp/fastload-pack]

1. writes JSON Lines of token id lists (documents of 20-2,000 tokens, as a tokenizer makes),
2. converts them with ``fastload convert`` (lists of ints become an ``int64[?]`` field, zstd),
3. reads them shuffled in 2 worker processes, each batch's documents laid end to end in rows
   of ``--seq-len`` tokens (``PackRows``) with each document's start (``input_ids_offsets``,
   the ``cu_seqlens`` of variable-length attention), and checks that every document came
   back whole, once;
4. reads them again padded to ``--seq-len`` (``Pad``, a static shape written straight into
   the batch buffers; longer documents cut with ``truncate=True``) and prints both rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import fastload


def write_docs(path: str, n: int, seed: int = 0) -> None:
    """``n`` documents of token ids, document ``i`` starting with token ``i`` (to find it)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            body = rng.integers(0, 50_000, int(rng.integers(20, 2000)))
            f.write(json.dumps({"input_ids": [i, *body.tolist()]}) + "\n")


def packed_epoch(path: str, seq_len: int, n_docs: int) -> float:
    loader = fastload.DataLoader(
        fastload.Dataset(path),
        batch_size=32,
        shuffle=True,
        seed=0,
        num_workers=2,
        variable={"input_ids": fastload.PackRows(seq_len)},
    )
    start, seen, tokens = time.perf_counter(), np.zeros(n_docs, np.int64), 0
    for batch in loader:
        rows, offsets = batch["input_ids"], batch["input_ids_offsets"]
        assert rows.shape[1] == seq_len
        flat = rows.reshape(-1)
        np.add.at(seen, flat[offsets[:-1]].numpy(), 1)  # a document's first token: its number
        tokens += int(offsets[-1])
    seconds = time.perf_counter() - start
    assert (seen == 1).all(), "every document once"
    print(
        f"packed rows of {seq_len}: {n_docs:,} documents, {tokens:,} tokens in "
        f"{seconds:.2f} s, {tokens / seconds:,.0f} tokens/s"
    )
    return seconds


def padded_epoch(path: str, seq_len: int) -> None:
    pad = fastload.Pad(seq_len, truncate=True)
    loader = fastload.DataLoader(
        fastload.Dataset(path),
        batch_size=32,
        shuffle=True,
        seed=0,
        num_workers=2,
        variable={"input_ids": pad},
    )
    start, tokens = time.perf_counter(), 0
    for batch in loader:
        assert batch["input_ids"].shape[1:] == (seq_len,)
        tokens += int(batch["input_ids_lengths"].sum())
    seconds = time.perf_counter() - start
    print(
        f"padded to {seq_len}: {tokens:,} tokens kept in {seconds:.2f} s, "
        f"{tokens / seconds:,.0f} tokens/s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=20_000)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--workdir", default=None, help="default: a fresh temporary directory")
    a = p.parse_args()
    workdir = a.workdir or tempfile.mkdtemp(prefix="fastload-pack-")
    os.makedirs(workdir, exist_ok=True)
    src, dst = os.path.join(workdir, "docs.jsonl"), os.path.join(workdir, "docs")
    write_docs(src, a.docs)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fastload",
            "convert",
            src,
            dst,
            "--workers",
            "2",
            "--overwrite",
            "--no-progress",
        ],
        check=True,
    )
    print(fastload.Dataset(dst).schema)
    packed_epoch(dst, a.seq_len, a.docs)
    padded_epoch(dst, a.seq_len)


if __name__ == "__main__":
    main()
