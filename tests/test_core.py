"""Tests of the compiled core, fastload._core (hashing, gathers, GIL release, CUDA queries)."""

from __future__ import annotations

import array
import mmap
import random
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

xxhash = pytest.importorskip("xxhash")
from fastload import _core  # noqa: E402

U64_MAX = 2**64 - 1
SEEDS = [0, 1, 0x9E3779B1, 2**32, U64_MAX]


def u64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64)


def u32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.uint32)


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------- xxh64


@pytest.mark.parametrize("seed", SEEDS)
def test_xxh64_every_tail_length(seed):
    data = rand_bytes(200, seed=1)
    for n in range(0, 201):  # covers the <32 path, every 8/4/1-byte tail and several stripes
        assert _core.xxh64(data[:n], seed) == xxhash.xxh64_intdigest(data[:n], seed), n


def test_xxh64_empty_and_default_seed():
    assert _core.xxh64(b"") == xxhash.xxh64_intdigest(b"") == 0xEF46DB3751D8E999
    assert _core.xxh64(b"abc") == xxhash.xxh64_intdigest(b"abc")


@pytest.mark.parametrize("size", [1 << 16, (1 << 20) + 13, (8 << 20) - 1])
def test_xxh64_large(size):
    data = rand_bytes(size, seed=size)
    for seed in (0, 12345, U64_MAX):
        assert _core.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed)


@given(st.binary(max_size=2000), st.integers(0, U64_MAX))
def test_xxh64_property(data, seed):
    assert _core.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed)


def test_xxh64_buffer_types(tmp_path):
    raw = rand_bytes(5000, seed=7)
    want = xxhash.xxh64_intdigest(raw)
    assert _core.xxh64(bytearray(raw)) == want
    assert _core.xxh64(memoryview(raw)) == want
    assert _core.xxh64(np.frombuffer(raw, dtype=np.uint8)) == want
    assert _core.xxh64(np.frombuffer(raw, dtype=np.float64)) == want  # 5000 = 625 * 8
    assert _core.xxh64(np.frombuffer(raw, dtype=np.uint8).reshape(50, 100)) == want
    assert _core.xxh64(array.array("B", raw)) == want
    # memoryview slices of the middle, odd offsets
    mv = memoryview(raw)
    assert _core.xxh64(mv[3:4001], 9) == xxhash.xxh64_intdigest(raw[3:4001], 9)
    # anonymous and file-backed read-only mmaps
    with mmap.mmap(-1, len(raw)) as m:
        m.write(raw)
        assert _core.xxh64(m) == want
    path = tmp_path / "data.bin"
    path.write_bytes(raw)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert _core.xxh64(m) == want
        assert _core.xxh64(memoryview(m)[100:]) == xxhash.xxh64_intdigest(raw[100:])


@pytest.mark.parametrize(
    "bad",
    [
        "a string",
        12,
        None,
        [1, 2, 3],
        memoryview(b"0123456789")[::2],  # not contiguous
        np.arange(20, dtype=np.uint8)[::2],
        np.zeros((4, 4), dtype=np.uint8).T,  # Fortran order
    ],
    ids=["str", "int", "None", "list", "strided-memoryview", "strided-numpy", "fortran-numpy"],
)
def test_xxh64_rejects_non_buffers(bad):
    with pytest.raises(TypeError):
        _core.xxh64(bad)


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_xxh64_seed_out_of_range(seed):
    with pytest.raises(TypeError):
        _core.xxh64(b"abc", seed)


# --------------------------------------------------------------------------- slices


def slice_hash(data: bytes, off: int, length: int, seed: int = 0) -> int:
    return xxhash.xxh64_intdigest(data[off : off + length], seed)


def test_xxh64_slices_matches_xxhash():
    data = rand_bytes(10_000, seed=3)
    rng = random.Random(3)
    offsets, lengths = [], []
    for _ in range(500):
        off = rng.randrange(0, len(data) + 1)
        offsets.append(off)
        lengths.append(rng.randrange(0, len(data) - off + 1))
    offsets[:3], lengths[:3] = [0, len(data), 5], [len(data), 0, 0]  # whole, empty at end, empty
    for seed in (0, 77):
        got = _core.xxh64_slices(data, u64(offsets), u64(lengths), seed)
        assert got.dtype == np.uint64 and got.shape == (500,)
        want = [slice_hash(data, o, n, seed) for o, n in zip(offsets, lengths)]
        assert got.tolist() == want


def test_xxh64_slices_empty_batch():
    got = _core.xxh64_slices(b"", u64([]), u64([]))
    assert got.dtype == np.uint64 and got.shape == (0,)


def make_records(n: int, seed: int = 0):
    rng = random.Random(seed)
    lengths = [rng.randrange(0, 300) for _ in range(n)]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.uint64)
    data = bytearray(rand_bytes(sum(lengths), seed=seed))
    expected = u32(
        [slice_hash(bytes(data), int(o), n) & 0xFFFFFFFF for o, n in zip(offsets, lengths)]
    )
    return data, offsets, u64(lengths), expected


def test_check_slices_all_ok():
    data, offsets, lengths, expected = make_records(1000)
    assert _core.check_slices(data, offsets, lengths, expected) == -1
    assert _core.check_slices(b"", u64([]), u64([]), u32([])) == -1


def test_check_slices_reports_first_corrupt():
    data, offsets, lengths, expected = make_records(1000, seed=1)
    nonempty = [i for i in range(1000) if lengths[i] > 0]
    first, later = nonempty[100], nonempty[700]
    data[int(offsets[later])] ^= 0x01
    assert _core.check_slices(data, offsets, lengths, expected) == later
    data[int(offsets[first]) + int(lengths[first]) - 1] ^= 0x80
    assert _core.check_slices(data, offsets, lengths, expected) == first
    # a wrong expected value counts too, even for an empty record
    bad = expected.copy()
    bad[3] ^= 1
    assert _core.check_slices(bytes(data), offsets, lengths, bad) == 3


def test_check_slices_uses_low_32_bits():
    data = b"hello world"
    full = xxhash.xxh64_intdigest(data)
    assert _core.check_slices(data, u64([0]), u64([11]), u32([full & 0xFFFFFFFF])) == -1
    assert _core.check_slices(data, u64([0]), u64([11]), u32([full >> 32])) == 0


@pytest.mark.parametrize("fn", ["xxh64_slices", "check_slices"])
@pytest.mark.parametrize(
    "offset,length",
    [(101, 0), (100, 1), (0, 101), (50, 51), (U64_MAX, 2), (1, U64_MAX), (U64_MAX, U64_MAX)],
)
def test_slices_out_of_bounds(fn, offset, length):
    data = bytes(100)
    offsets, lengths = u64([0, 10, offset]), u64([5, 5, length])
    args = (data, offsets, lengths) + ((u32([0, 0, 0]),) if fn == "check_slices" else ())
    with pytest.raises(ValueError) as exc:
        getattr(_core, fn)(*args)
    msg = str(exc.value)
    assert "item 2" in msg and str(offset) in msg and str(length) in msg and "100" in msg


def test_slices_bad_arrays():
    data = bytes(100)
    with pytest.raises(ValueError, match="lengths"):
        _core.xxh64_slices(data, u64([0, 1]), u64([1]))
    with pytest.raises(ValueError, match="expected"):
        _core.check_slices(data, u64([0, 1]), u64([1, 1]), u32([0]))
    for offsets, lengths in [
        (np.array([0, 1], dtype=np.int64), u64([1, 1])),  # wrong dtype: no silent conversion
        (u64([0, 1]), np.array([1, 1], dtype=np.uint32)),
        ([0, 1], u64([1, 1])),  # a list is not an array
        (u64([[0, 1]]), u64([1, 1])),  # 2-D
        (u64([0, 9, 1, 9])[::2], u64([1, 1])),  # not contiguous
    ]:
        with pytest.raises(TypeError):
            _core.xxh64_slices(data, offsets, lengths)
    with pytest.raises(TypeError):
        _core.check_slices(data, u64([0]), u64([1]), u64([0]))  # expected must be uint32


# --------------------------------------------------------------------------- gather


def gather_reference(sources, source_index, offsets, lengths, out: bytearray, out_offsets):
    """Pure-Python gather: returns the error kind (None when valid) and applies it if valid."""
    for _i, (s, o, n, d) in enumerate(zip(source_index, offsets, lengths, out_offsets)):
        if s >= len(sources) or o + n > len(sources[s]) or d + n > len(out):
            return "invalid"
    for s, o, n, d in zip(source_index, offsets, lengths, out_offsets):
        out[d : d + n] = bytes(sources[s][o : o + n])  # copy first: a source may be `out`
    return None


def test_gather_matches_reference():
    rng = np.random.default_rng(0)
    raw = [rand_bytes(size, seed=size) for size in (0, 1, 1000, 65_536, 300_000)]
    sources = [
        raw[0],
        bytearray(raw[1]),
        memoryview(raw[2]),
        np.frombuffer(raw[3], np.uint8),
        raw[4],
    ]
    n = 3000
    idx = rng.integers(0, len(sources), n).astype(np.uint32)
    sizes = np.array([len(r) for r in raw], dtype=np.uint64)[idx]
    offsets = (rng.random(n) * (sizes + 1)).astype(np.uint64)
    offsets = np.minimum(offsets, sizes)
    lengths = np.minimum((rng.random(n) * 500).astype(np.uint64), sizes - offsets)
    out_offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.uint64)
    out = np.zeros(int(lengths.sum()) + 7, dtype=np.uint8)
    _core.gather(sources, idx, offsets, lengths, out, out_offsets)

    want = bytearray(len(out))
    assert (
        gather_reference(
            raw, idx.tolist(), offsets.tolist(), lengths.tolist(), want, out_offsets.tolist()
        )
        is None
    )
    assert out.tobytes() == bytes(want)


def test_gather_into_mmap_and_tuple_sources():
    with mmap.mmap(-1, 16) as out:
        _core.gather(
            (b"abcdef", bytearray(b"XYZ")), u32([1, 0]), u64([1, 2]), u64([2, 3]), out, u64([0, 10])
        )
        assert out[:] == b"YZ" + bytes(8) + b"cde" + bytes(3)


def test_gather_aliasing_source_is_out():
    buf = bytearray(b"0123456789")
    _core.gather([buf], u32([0]), u64([0]), u64([6]), buf, u64([2]))  # overlapping move
    assert buf == bytearray(b"0101234589")


def test_gather_empty():
    _core.gather([], u32([]), u64([]), u64([]), bytearray(), u64([]))
    _core.gather([b""], u32([0]), u64([0]), u64([0]), bytearray(), u64([0]))


GATHER_ERRORS = {
    # name: (source_index, offset, length, out_offset) for the third item; sources are 100 bytes
    "offset-past-end": (0, 101, 0, 0),
    "length-past-end": (0, 90, 11, 0),
    "offset-wraps": (0, U64_MAX, 2, 0),
    "length-wraps": (0, 1, U64_MAX, 0),
    "bad-source-index": (2, 0, 1, 0),
    "huge-source-index": (2**32 - 1, 0, 1, 0),
    "out-too-small": (0, 0, 51, 0),
    "out-offset-past-end": (0, 0, 0, 51),
    "out-offset-wraps": (0, 0, 2, U64_MAX),
}


@pytest.mark.parametrize("case", GATHER_ERRORS, ids=list(GATHER_ERRORS))
def test_gather_out_of_bounds(case):
    s, o, n, d = GATHER_ERRORS[case]
    sources = [bytes(range(100)), bytes(100)]
    out = bytearray(b"\xaa" * 50)
    with pytest.raises(ValueError, match="item 2"):
        _core.gather(sources, u32([0, 1, s]), u64([0, 0, o]), u64([5, 5, n]), out, u64([0, 5, d]))
    assert out == bytearray(b"\xaa" * 50)  # all checks run before the first copy


def test_gather_bad_arguments():
    src, out = [bytes(100)], bytearray(100)
    ok = dict(
        source_index=u32([0, 0]), offsets=u64([0, 1]), lengths=u64([1, 1]), out_offsets=u64([0, 1])
    )
    for name in ok:
        args = dict(ok, **{name: ok[name][:1]})
        with pytest.raises(ValueError, match=name):
            _core.gather(
                src,
                args["source_index"],
                args["offsets"],
                args["lengths"],
                out,
                args["out_offsets"],
            )
    with pytest.raises(TypeError):  # source_index must be uint32
        _core.gather(src, u64([0, 0]), ok["offsets"], ok["lengths"], out, ok["out_offsets"])
    with pytest.raises(TypeError, match=r"sources\[1\]"):
        _core.gather(
            [bytes(10), "str"],
            ok["source_index"],
            ok["offsets"],
            ok["lengths"],
            out,
            ok["out_offsets"],
        )
    with pytest.raises(TypeError):
        _core.gather(5, ok["source_index"], ok["offsets"], ok["lengths"], out, ok["out_offsets"])


def read_only_outs(tmp_path):
    ro_array = np.zeros(100, dtype=np.uint8)
    ro_array.flags.writeable = False
    path = tmp_path / "ro.bin"
    path.write_bytes(bytes(100))
    f = open(path, "rb")
    ro_mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return f, [bytes(100), memoryview(bytearray(100)).toreadonly(), ro_array, ro_mmap]


def test_read_only_out_is_rejected(tmp_path):
    f, outs = read_only_outs(tmp_path)
    try:
        for out in outs:
            with pytest.raises(TypeError, match="writable"):
                _core.gather([bytes(10)], u32([0]), u64([0]), u64([1]), out, u64([0]))
            with pytest.raises(TypeError, match="writable"):
                _core.gather_fixed(bytes(10), u64([0]), 1, out)
    finally:
        outs[-1].close()
        f.close()


@st.composite
def gather_cases(draw):
    """Mostly valid batches; some items get one field replaced by a bad or wrapping value."""
    sizes = draw(st.lists(st.integers(0, 64), min_size=1, max_size=4))
    out_size = draw(st.integers(0, 128))
    extreme = st.sampled_from([U64_MAX, U64_MAX - 3, 2**63, 2**32])
    items = []
    for _ in range(draw(st.integers(0, 12))):
        s = draw(st.integers(0, len(sizes) - 1))
        o = draw(st.integers(0, sizes[s]))
        n = draw(st.integers(0, min(sizes[s] - o, out_size)))
        d = draw(st.integers(0, out_size - n))
        item = [s, o, n, d]
        if draw(st.integers(0, 9)) == 0:  # break one field
            field = draw(st.integers(0, 3))
            if field == 0:
                item[0] = draw(
                    st.one_of(st.integers(len(sizes), len(sizes) + 2), st.just(2**32 - 1))
                )
            else:
                item[field] = draw(st.one_of(st.integers(item[field] + 1, 200), extreme))
        items.append(tuple(item))
    return sizes, out_size, items


@settings(max_examples=300, deadline=None)
@given(gather_cases(), st.integers(0, 2**32))
def test_gather_property(case, seed):
    sizes, out_size, items = case
    sources = [rand_bytes(size, seed=seed + i) for i, size in enumerate(sizes)]
    idx, offsets, lengths, out_offsets = (
        (list(col) for col in zip(*items)) if items else ([], [], [], [])
    )
    out = bytearray(rand_bytes(out_size, seed=seed + 99))
    want = bytearray(out)
    kind = gather_reference(sources, idx, offsets, lengths, want, out_offsets)
    event("valid batch" if kind is None else "invalid batch")
    args = (sources, u32(idx), u64(offsets), u64(lengths), out, u64(out_offsets))
    if kind is None:
        _core.gather(*args)
    else:
        with pytest.raises(ValueError, match="item"):
            _core.gather(*args)
    assert out == want  # invalid batches leave out untouched


# --------------------------------------------------------------------------- gather_fixed


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 8, 12, 16, 17, 100])
def test_gather_fixed_matches_numpy(size):
    rng = np.random.default_rng(size)
    src = np.frombuffer(rand_bytes(10_000, seed=size), np.uint8)
    n = 2000
    offsets = rng.integers(0, len(src) - size + 1, n).astype(np.uint64)
    out = np.zeros(n * size + 3, dtype=np.uint8)
    _core.gather_fixed(src, offsets, size, out)
    want = src[offsets.astype(np.int64)[:, None] + np.arange(size)].reshape(-1)
    assert out[: n * size].tobytes() == want.tobytes()
    assert not out[n * size :].any()


def test_gather_fixed_empty():
    _core.gather_fixed(b"", u64([]), 8, bytearray())
    _core.gather_fixed(b"abc", u64([3, 0]), 0, bytearray())


@pytest.mark.parametrize(
    "offsets,size,out_size,match",
    [
        ([0, 93], 8, 16, "item 1: offset 93 \\+ size 8"),
        ([0, 101], 0, 0, "item 1: offset 101"),
        ([0, U64_MAX], 2, 4, "item 1"),
        ([0, 0], 8, 15, "out holds 15 bytes"),
        ([0, 0], 2**63, 100, "out holds"),  # 2 * 2**63 wraps to 0: must still be rejected
        ([0, 0], U64_MAX, 100, "out holds"),
    ],
)
def test_gather_fixed_out_of_bounds(offsets, size, out_size, match):
    out = bytearray(b"\x55" * out_size)
    with pytest.raises(ValueError, match=match):
        _core.gather_fixed(bytes(100), u64(offsets), size, out)
    assert out == bytearray(b"\x55" * out_size)


def test_gather_fixed_bad_arguments():
    with pytest.raises(TypeError):
        _core.gather_fixed(bytes(100), np.array([0], np.int64), 1, bytearray(1))
    with pytest.raises(TypeError):
        _core.gather_fixed(bytes(100), u64([0]), -1, bytearray(1))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 64),
    st.integers(0, 20),
    st.lists(st.one_of(st.integers(0, 80), st.just(U64_MAX)), max_size=10),
    st.integers(0, 200),
)
def test_gather_fixed_property(src_size, size, offsets, out_size):
    src = rand_bytes(src_size, seed=src_size)
    out = bytearray(b"\x33" * out_size)
    valid = len(offsets) * size <= out_size and all(o + size <= src_size for o in offsets)
    if valid:
        _core.gather_fixed(src, u64(offsets), size, out)
        want = b"".join(src[o : o + size] for o in offsets)
        assert out == want + b"\x33" * (out_size - len(want))
    else:
        with pytest.raises(ValueError):
            _core.gather_fixed(src, u64(offsets), size, out)
        assert out == bytearray(b"\x33" * out_size)


# --------------------------------------------------------------------------- GIL


def other_thread_progresses(call, attempts: int = 30) -> bool:
    """True if a Python thread runs while `call` runs in this thread.

    With a huge switch interval this thread never hands the GIL over on its own, so the spinner
    can only advance between the two counter reads if `call` releases the GIL: no timing involved.
    """
    counter = [0]
    stop, started = threading.Event(), threading.Event()

    def spin():
        started.set()
        while not stop.is_set():
            counter[0] += 1
            # Sleep without the GIL most of the time, so this thread gets it back promptly.
            time.sleep(0.0002)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    thread = threading.Thread(target=spin, daemon=True)
    try:
        thread.start()
        started.wait()
        for _ in range(attempts):
            before = counter[0]
            call()
            if counter[0] != before:
                return True
        return False
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)


BIG = 32 << 20


@pytest.fixture(scope="module")
def big():
    return np.ones(BIG, dtype=np.uint8)


GIL_CALLS = {
    "xxh64": lambda b: _core.xxh64(b),
    "xxh64_slices": lambda b: _core.xxh64_slices(b, u64([0] * 4), u64([BIG] * 4)),
    "check_slices": lambda b: _core.check_slices(b, u64([0] * 4), u64([BIG] * 4), u32([0] * 4)),
    "gather": lambda b: _core.gather([b], u32([0]), u64([0]), u64([BIG]), bytearray(BIG), u64([0])),
    "gather_fixed": lambda b: _core.gather_fixed(
        b, np.arange(0, BIG, 64, dtype=np.uint64), 16, np.empty(BIG // 4, np.uint8)
    ),
    "gather_records": lambda b: _core.gather_records(
        [b],
        u32([0]),
        u64([0]),
        u64([BIG]),
        u32([0]),
        np.zeros(1, np.int64),
        False,
        u64([0]),
        u64([BIG]),
        [bytearray(BIG)],
    ),
}


@pytest.mark.parametrize("name", GIL_CALLS)
def test_gil_released_for_big_calls(name, big):
    assert other_thread_progresses(lambda: GIL_CALLS[name](big))


def test_gil_probe_detects_a_held_gil():
    # controls: pure-Python work and a tiny hash (below the release threshold) hold the GIL
    assert not other_thread_progresses(lambda: sum(range(200_000)))
    assert not other_thread_progresses(lambda: _core.xxh64(b"x" * 100))


def test_two_threads_hash_in_parallel(big):
    # not a timing assertion: both threads must finish with the right answers
    want = xxhash.xxh64_intdigest(big)
    results = []
    threads = [threading.Thread(target=lambda: results.append(_core.xxh64(big))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [want, want]


# --------------------------------------------------------------------------- CUDA


def test_cuda_queries_never_raise():
    assert isinstance(_core.core_has_cuda, bool)
    count = _core.cuda_device_count()
    available = _core.cuda_available()
    assert isinstance(count, int) and count >= 0
    assert isinstance(available, bool)
    assert available == (count > 0)
    if not _core.core_has_cuda:
        assert count == 0 and not available


# --------------------------------------------------------------------------- gather_records


def record_table(n_sources: int = 3, per_source: int = 200, size: int = 24):
    """Sources of fixed-size records of ``size`` bytes (at odd offsets), with their table."""
    sources, table = [], []
    for s in range(n_sources):
        data = bytearray(rand_bytes(7 + per_source * size, seed=s))
        sources.append(data)
        for i in range(per_source):
            o = 7 + i * size
            table.append(
                (s, o, size, xxhash.xxh64_intdigest(bytes(data[o : o + size])) & 0xFFFFFFFF)
            )
    src, off, length, checksum = zip(*table)
    return sources, (u32(src), u64(off), u64(length), u32(checksum))


def gather_records(sources, table, indices, fields, verify=True, outs=None):
    """Calls gather_records for ``fields`` [(at, size)]; returns (result, outs)."""
    n = len(indices)
    outs = outs if outs is not None else [bytearray(n * size) for _, size in fields]
    got = _core.gather_records(
        sources,
        *table,
        np.asarray(indices, np.int64),
        verify,
        u64([at for at, _ in fields]),
        u64([size for _, size in fields]),
        outs,
    )
    return got, outs


def test_gather_records_matches_reference():
    sources, table = record_table()
    src, off = table[0], table[1]
    rng = np.random.default_rng(0)
    indices = rng.integers(0, len(src), 300)
    fields = [(0, 8), (8, 4), (12, 12), (5, 0)]
    got, outs = gather_records(sources, table, indices, fields)
    assert got == -1
    for (at, size), out in zip(fields, outs):
        want = b"".join(bytes(sources[src[r]][off[r] + at : off[r] + at + size]) for r in indices)
        assert bytes(out) == want
    assert gather_records(sources, table, [], fields)[0] == -1


def test_gather_records_stops_at_the_first_unreadable_row():
    sources, table = record_table()
    src, off = table[0], table[1]
    fields = [(0, 24)]
    damaged = [bytearray(x) for x in sources]
    damaged[src[150]][off[150] + 3] ^= 0x10
    got, (out,) = gather_records(damaged, table, [4, 9, 150, 2], fields)
    assert got == 2
    assert bytes(out[:48]) == bytes(damaged[src[4]][off[4] : off[4] + 24]) + bytes(
        damaged[src[9]][off[9] : off[9] + 24]
    )
    assert out[72:] == bytearray(24)  # rows after it: not copied
    assert gather_records(damaged, table, [4, 9, 150, 2], fields, verify=False)[0] == -1
    # an index out of range, or a field past the record's end: the row, nothing raised
    assert gather_records(sources, table, [0, 600, 1], fields)[0] == 1
    assert gather_records(sources, table, [0, -1], fields)[0] == 1
    assert gather_records(sources, table, [3], [(20, 8)])[0] == 0


def test_gather_records_bounds_and_arguments():
    sources, table = record_table(n_sources=2)
    src, off, length, checksum = table
    bad_source = (u32([0, 5]), off[:2], length[:2], checksum[:2])
    with pytest.raises(ValueError, match="source_index 5 is out of range"):
        gather_records(sources, bad_source, [1], [(0, 4)])
    past_end = (src[:2], u64([0, len(sources[0]) - 4]), length[:2], checksum[:2])
    with pytest.raises(ValueError, match="past the end of source 0"):
        gather_records(sources, past_end, [1], [(0, 4)])
    with pytest.raises(ValueError, match="too small"):
        gather_records(sources, table, [1, 2], [(0, 4)], outs=[bytearray(7)])
    with pytest.raises(ValueError):  # table arrays of different lengths
        gather_records(sources, (src, off[:3], length, checksum), [1], [(0, 4)])
    with pytest.raises(TypeError):  # a read-only out
        gather_records(sources, table, [1], [(0, 4)], outs=[bytes(4)])


def test_gather_records_acquires_only_the_sources_it_reads():
    sources, table = record_table(n_sources=3)
    src = table[0]
    unused = int(src[-1])
    mixed = list(sources)
    mixed[unused] = object()  # not a buffer: fine as long as no row reads it
    rows = [i for i in range(len(src)) if src[i] != unused][:10]
    assert gather_records(mixed, table, rows, [(0, 24)])[0] == -1
    with pytest.raises(TypeError, match=f"sources\\[{unused}\\]"):
        gather_records(mixed, table, [len(src) - 1], [(0, 24)])


# --------------------------------------------------------------------------- RecordMap


def record_map_dataset(tmp_path, schema, record, n=300):
    """A dataset of raw blocks over several shards, opened; its RecordMap (every shard added)."""
    import fastload

    with fastload.Writer(
        tmp_path / "ds", schema, block_size=256, shard_size=2048, compression="none"
    ) as w:
        for i in range(n):
            w.write(record(i))
    ds = fastload.Dataset(tmp_path / "ds")
    readers = [ds.shard_reader(s) for s in range(len(ds.shards))]
    base = np.cumsum([0] + [len(r.blocks) for r in readers], dtype=np.int64)
    m = _core.RecordMap(np.asarray(ds.record_starts, np.int64), base)
    for s, r in enumerate(readers):
        ix = r.index
        m.add(s, ix.block_bytes, ix.table, len(r.blocks), len(r), ix.record_size, ix.group)
    return ds, readers, base, m


# 40-byte records, a checksum each; 16-byte ones, a checksum per 4; records of any size.
FIXED = ({"i": "int64", "v": "uint16[16]"}, lambda i: {"i": i, "v": np.arange(16) + i})
GROUPED = ({"i": "int64", "v": "uint16[4]"}, lambda i: {"i": i, "v": np.arange(4) + i})
ENTRIES = ({"i": "int64", "s": "str"}, lambda i: {"i": i, "s": "x" * (i % 7)})


@pytest.mark.parametrize("kind", [FIXED, GROUPED, ENTRIES], ids=["fixed", "grouped", "entries"])
def test_record_map_gathers_what_the_dataset_reads(tmp_path, kind):
    ds, readers, base, m = record_map_dataset(tmp_path, *kind)
    size = {id(FIXED): 40, id(GROUPED): 16}.get(id(kind))
    assert len(readers) > 2 and readers[0].index.record_size == size
    assert readers[0].index.group == (4 if kind is GROUPED else 1)
    idx = np.random.default_rng(0).integers(0, len(ds), 64)
    files = [r.source.buffer for r in readers]
    out = bytearray(64 * 8)
    assert m.gather(files, idx, True, u64([0]), u64([8]), [out], False) == -1
    assert np.frombuffer(out, np.int64).tolist() == idx.tolist()
    # the same rows from the blocks' own bytes, sources numbered by block
    blocks = [bytes(r.block(b)) for r in readers for b in range(len(r.blocks))]
    out2 = bytearray(64 * 8)
    assert m.gather(blocks, idx, True, u64([0]), u64([8]), [out2], True) == -1
    assert out2 == out
    stop, src, off, length, check_off, check_len, checksum = m.places(idx, True)
    located = [ds.locate(i) for i in idx.tolist()]
    want = [readers[s].index.entries()[r] for s, r in located]
    assert stop == -1 and length.tolist() == [int(e["length"]) for e in want]
    assert checksum.tolist() == [int(e["checksum"]) for e in want]
    checked = [readers[s].index.checked(r) for s, r in located]  # the record, or its group
    assert list(zip(check_off.tolist(), check_len.tolist())) == checked
    shard = np.searchsorted(ds.record_starts, idx, side="right") - 1
    assert (src - base[shard]).tolist() == [int(e["block"]) for e in want]
    assert off.tolist() == [int(e["offset"]) for e in want]
    assert m.block_numbers(idx).tolist() == src.tolist()


def test_record_map_places_only_the_shards_added(tmp_path):
    ds, readers, base, full = record_map_dataset(tmp_path, *FIXED)
    m = _core.RecordMap(np.asarray(ds.record_starts, np.int64), base)
    ix = readers[1].index
    m.add(1, ix.block_bytes, ix.table, len(readers[1].blocks), len(readers[1]), ix.record_size, 1)
    assert [m.added(s) for s in range(3)] == [False, True, False]
    first = int(ds.record_starts[1])
    idx = np.array([first, first - 1, len(ds), -1, first + 3], np.int64)
    assert m.block_numbers(idx).tolist() == [base[1], -1, -1, -1, base[1]]
    assert m.places(idx, True)[0] == 1
    files = [None, readers[1].source.buffer, None]  # only the sources read are acquired
    out = bytearray(16)
    assert m.gather(files, idx[[0, 4]], True, u64([0]), u64([8]), [out], False) == -1
    assert np.frombuffer(out, np.int64).tolist() == [first, first + 3]
    assert m.gather(files, idx[[0, 1]], True, u64([0]), u64([8]), [out], False) == 1
    with pytest.raises(TypeError, match=r"sources\[1\]"):
        m.gather([None] * 3, idx[[0]], True, u64([0]), u64([8]), [out], False)


def test_record_map_checks_every_record_it_reads(tmp_path):
    ds, readers, _, m = record_map_dataset(tmp_path, *FIXED)
    files = [bytearray(r.source.buffer) for r in readers]
    stop, src, off, *_ = m.places(np.array([7], np.int64), False)
    files[int(src[0])][int(off[0]) + 3] ^= 1
    out = bytearray(3 * 8)
    idx = np.array([2, 7, 9], np.int64)
    assert m.gather(files, idx, True, u64([0]), u64([8]), [out], False) == 1
    assert m.gather(files, idx, False, u64([0]), u64([8]), [out], False) == -1


def test_record_map_refuses_what_its_tables_cannot_hold(tmp_path):
    ds, readers, base, _ = record_map_dataset(tmp_path, *FIXED)
    starts = np.asarray(ds.record_starts, np.int64)
    r = readers[0]
    ix, nb, n = r.index, len(r.blocks), len(r)
    for bad_starts, bad_base in ((starts[::-1].copy(), base), (starts, base[:-1].copy())):
        with pytest.raises(ValueError):
            _core.RecordMap(bad_starts, bad_base)
    m = _core.RecordMap(starts, base)
    with pytest.raises(ValueError, match="do not fit"):
        m.add(0, ix.block_bytes[:-1], ix.table, nb, n, ix.record_size)
    with pytest.raises(ValueError, match="do not fit"):
        m.add(0, ix.block_bytes, ix.table[:-1], nb, n, ix.record_size)
    other = next(s for s, o in enumerate(readers) if len(o) != n)
    with pytest.raises(ValueError, match="the dataset expects"):
        m.add(other, ix.block_bytes, ix.table, nb, n, ix.record_size)  # shard 0's tables
    with pytest.raises(ValueError, match="cannot hold"):
        m.add(0, ix.block_bytes, ix.table, nb, n, ix.record_size + 1)
    with pytest.raises(ValueError, match="out of range"):
        m.add(len(readers), ix.block_bytes, ix.table, nb, n, ix.record_size)
    for group in (0, 2):  # a checksum a record, not one per group; none per 0
        with pytest.raises(ValueError, match="records per checksum|checksums of groups"):
            m.add(0, ix.block_bytes, ix.table, nb, n, ix.record_size, group)
    m.add(0, ix.block_bytes, ix.table, nb, n, ix.record_size)
    with pytest.raises(ValueError, match="added already"):
        m.add(0, ix.block_bytes, ix.table, nb, n, ix.record_size)
    with pytest.raises(TypeError):
        m.block_numbers(np.array([0], np.int32))  # exactly int64
    ds.close()
