"""Train a tiny next-token model with DDP on fastload batches, checkpoint, and resume.

    torchrun --nproc_per_node 2 examples/ddp_train.py [--workdir DIR] [--epochs 2]
    # interrupted? the same command again continues from the last checkpoint

1. rank 0 makes a small token file and converts it (``--from tokens --compression none``:
   token rows are read at random, and raw blocks need no decompressing), the others wait;
2. every rank builds the same ``fastload.DataLoader(..., seed=0)``: the loader plans one
   shuffled order per epoch and hands each rank its own slice of it, with equal batch counts
   (no DistributedSampler);
3. every ``--save-every`` steps rank 0 writes the model, the optimiser and
   ``loader.state_dict()`` (the same on every rank) to one checkpoint, atomically;
4. on start, a checkpoint found in the workdir is loaded: the loader continues its epoch at the
   next sample, even with another number of ranks or workers.

Runs on CPU (gloo) or GPUs (nccl, batches copied with ``device=``). ``--stop-after N`` ends the
run after N steps, as a crash would (for trying resumption out).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import fastload

VOCAB, SEQ = 512, 129  # 128 inputs and their next tokens


def make_dataset(workdir: str, rows: int) -> str:
    """A flat uint16 token file, converted to a fastload dataset (once)."""
    dst = os.path.join(workdir, "tokens")
    if os.path.exists(os.path.join(dst, "manifest.json")):
        return dst
    os.makedirs(workdir, exist_ok=True)
    src = os.path.join(workdir, "tokens.bin")
    rng = np.random.default_rng(0)
    # A learnable stream: each token mostly follows from the one before it.
    tokens = np.empty(rows * SEQ, np.uint16)
    tokens[0] = 1
    steps = rng.integers(1, 4, tokens.size, dtype=np.uint16)
    np.cumsum(steps, out=tokens)
    tokens %= VOCAB
    tokens.tofile(src)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fastload",
            "convert",
            src,
            dst,
            "--from",
            "tokens",
            "--seq-len",
            str(SEQ),
            "--dtype",
            "uint16",
            "--compression",
            "none",
            "--overwrite",
            "--no-progress",
        ],
        check=True,
    )
    return dst


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 64)
        self.out = torch.nn.Linear(64, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.embed(tokens)))


def save(path: str, state: dict) -> None:
    """Write, then rename: a crash mid-write leaves the previous checkpoint whole."""
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "fastload-ddp"))
    p.add_argument("--rows", type=int, default=4096, help="samples in the made-up dataset")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--workers", type=int, default=2, help="loader workers per rank")
    p.add_argument("--save-every", type=int, default=20, help="steps between checkpoints")
    p.add_argument("--stop-after", type=int, default=0, help="end after this many steps")
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
    if rank == 0:
        make_dataset(args.workdir, args.rows)
    dist.barrier()  # the others wait for the dataset
    dataset = fastload.Dataset(os.path.join(args.workdir, "tokens"))

    torch.manual_seed(0)
    model = TinyLM().to(device or "cpu")
    ddp = DistributedDataParallel(model, device_ids=[device] if cuda else None)
    optim = torch.optim.AdamW(ddp.parameters(), lr=3e-3)
    # rank and world size come from torch.distributed; seed= makes the loader plan the order
    loader = fastload.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        seed=0,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=True,
        device=device,
    )

    checkpoint = os.path.join(args.workdir, "checkpoint.pt")
    first_epoch, step = 0, 0
    if os.path.exists(checkpoint):
        ckpt = torch.load(checkpoint, map_location=device or "cpu")
        model.load_state_dict(ckpt["model"])
        optim.load_state_dict(ckpt["optim"])
        loader.load_state_dict(ckpt["data"])
        first_epoch, step = ckpt["data"]["epoch"], ckpt["step"]
        if rank == 0:
            print(
                f"resumed at step {step}: epoch {first_epoch}, sample "
                f"{ckpt['data']['consumed']} of {ckpt['data']['n']}",
                flush=True,
            )

    for epoch in range(first_epoch, args.epochs):
        loader.set_epoch(epoch)  # keeps a loaded position if it is this epoch's
        start, samples, loss = time.perf_counter(), 0, torch.zeros(())
        for batch in loader:
            tokens = batch["tokens"].long()  # (batch, SEQ), this rank's share of the step
            logits = ddp(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1)
            )
            optim.zero_grad()
            loss.backward()
            optim.step()
            step += 1
            samples += len(tokens)
            if step % args.save_every == 0 and rank == 0:
                save(
                    checkpoint,
                    {
                        "model": model.state_dict(),
                        "optim": optim.state_dict(),
                        "data": loader.state_dict(),
                        "step": step,
                    },
                )
            if args.stop_after and step >= args.stop_after:
                print(f"rank {rank}: stopping after step {step}, as asked", flush=True)
                dist.destroy_process_group()
                return
        seconds = time.perf_counter() - start
        print(
            f"rank {rank}/{world} epoch {epoch}: {samples} samples in {seconds:.2f} s "
            f"({samples / seconds:,.0f} samples/s), last loss {loss.item():.3f}",
            flush=True,
        )
    loader.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
