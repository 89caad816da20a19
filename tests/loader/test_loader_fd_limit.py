"""The open-file limit (docs/reliability.md C9): mapped shards and cached blocks hold no descriptor,
kept batches grow the pool by few arenas, and running out of descriptors is an error that
says so and how to fix it. Each case runs in its own process (the limit is process-wide)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.format.formattools import write_index_dataset


def run_limited(script: str, *args: str) -> subprocess.CompletedProcess:
    prelude = textwrap.dedent("""
        import os, resource, sys
        import fastload
        def open_fds():
            return len(os.listdir("/proc/self/fd"))
        def limit(n):
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (n, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    """)
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hundreds_of_mapped_shards_fit_under_a_low_limit(tmp_path):
    """Each worker maps every shard it reads; a map used to keep a dup of its file open, so
    ~200 shards per worker failed under a limit of 64 (EMFILE in a worker)."""
    path = write_index_dataset(tmp_path / "d", 600, shard_size=400)
    done = run_limited(
        """
        limit(64)
        ds = fastload.Dataset(sys.argv[1])
        assert len(ds.shards) > 150, len(ds.shards)
        loader = fastload.DataLoader(ds, batch_size=8, shuffle=True, num_workers=2)
        for epoch in range(2):
            seen = sorted(int(i) for b in loader for i in b["i"])
            assert seen == list(range(600)), epoch
        print("fds", open_fds())
    """,
        str(path),
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) < 20


def test_keeping_many_batches_grows_the_pool_by_few_arenas(tmp_path):
    path = write_index_dataset(tmp_path / "d", 800)
    done = run_limited(
        """
        limit(64)
        ds = fastload.Dataset(sys.argv[1])
        loader = fastload.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2)
        kept = list(loader)  # 200 batches alive at once: the pool grows to hold them
        assert sorted(int(i) for b in kept for i in b["i"]) == list(range(800))
        print(len(loader._slabs), len(loader._slabs.arenas), open_fds())
    """,
        str(path),
    )
    assert done.returncode == 0, done.stderr
    slabs, arenas, fds = map(int, done.stdout.split())
    assert slabs >= 200 and arenas <= 8 and fds < 30


def test_running_out_of_descriptors_says_so_and_how_to_fix_it(tmp_path):
    path = write_index_dataset(tmp_path / "d", 800)
    done = run_limited(
        """
        ds = fastload.Dataset(sys.argv[1])
        loader = fastload.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2,
                                     persistent_workers=True)
        for b in loader:
            pass
        limit(open_fds() + 1)  # the pool's next arena has no descriptor to take
        kept = []
        try:
            for b in loader:
                kept.append(b)
        except OSError as e:
            print("ERROR", e)
        else:
            print("no error", len(kept))
    """,
        str(path),
    )
    assert "ERROR" in done.stdout, done.stdout + done.stderr
    assert "RLIMIT_NOFILE" in done.stdout and "ulimit -n" in done.stdout, done.stdout
