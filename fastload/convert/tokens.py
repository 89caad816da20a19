"""Token files (a raw ``.bin`` or a ``.npy``) cut into fixed-length samples for LM training.

Sample ``i`` is ``tokens[i*seq_len : i*seq_len + seq_len]`` in field ``tokens`` of type
``uint16[seq_len]`` (or the file's integer dtype). With ``overlap=True`` each sample takes one
more token, ``tokens[i*seq_len : i*seq_len + seq_len + 1]``, so consecutive samples share one
token and a sample holds both the inputs and the next-token targets. The trailing tokens that do
not fill a sample are dropped (and counted in :meth:`TokensSource.notes`).

A raw ``.bin`` needs ``dtype`` (uint16 or uint32); a ``.npy`` carries its own. Files are
memory-mapped and samples are slices of the map: there is no Python work per token. Input may
be a directory of token files (sorted); samples never span two files. Remote files (any fsspec
URL) are read in ranged GETs of a few thousand samples each, never downloaded whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import ConvertError
from ..format.schema import Schema
from ..io.inputs import Inputs
from .base import Consumed, ReadItem, Source, Task, as_inputs, balanced_target, list_files

__all__ = ["TokensSource", "TokensTask", "SUFFIXES", "BIN_DTYPES"]

SUFFIXES = (".bin", ".npy")
BIN_DTYPES = ("uint16", "uint32")
_ROWS_PER_CHUNK = 4096  # samples handed to the Writer at a time: ~16 MB of 2k-token samples


@dataclass(frozen=True)
class TokensTask(Task):
    """Samples ``[start, stop)`` of one token file."""

    path: str
    start: int
    stop: int

    def describe(self) -> str:
        return f"{self.path} samples {self.start}..{self.stop - 1}"


class TokensSource(Source[TokensTask]):
    """Fixed-length token samples; see the module docstring."""

    name = "tokens"
    threads_suffice = True  # memmap slices, numpy encode and zstd: all without the GIL

    def __init__(
        self,
        src: str | os.PathLike | Inputs,
        *,
        shard_size: int,
        seq_len: int | None = None,
        dtype: str | None = None,
        overlap: bool = False,
    ) -> None:
        if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
            raise ConvertError(
                f"tokens: seq_len (--seq-len) must be a positive integer, got {seq_len!r}"
            )
        if dtype is not None and dtype not in BIN_DTYPES:
            raise ConvertError(f"tokens: dtype must be one of {BIN_DTYPES}, got {dtype!r}")
        self.shard_size = shard_size
        self.seq_len = seq_len
        self.overlap = overlap
        self.sample_len = seq_len + 1 if overlap else seq_len
        self.inputs = as_inputs(src)
        src = self.inputs.src
        listed = list_files(self.inputs, SUFFIXES, what="token")
        self.files = [f.path for f in listed]
        layouts = self.inputs.map(lambda f: _token_file(f.path, dtype, self.inputs, f.size), listed)
        self._layout = {f.path: (offset, dt) for f, (_, dt, offset) in zip(listed, layouts)}
        dtypes = {str(dt.newbyteorder("=")) for _, dt, _ in layouts}
        if len(dtypes) > 1:
            raise ConvertError(f"{src}: token files have different dtypes {sorted(dtypes)}")
        self.dtype = np.dtype(dtypes.pop())
        self.n_tokens = {f.path: n for f, (n, _, _) in zip(listed, layouts)}
        if not any(self._n_samples(p) for p in self.files):
            raise ConvertError(
                f"{src}: fewer than {self.sample_len} tokens in every file; "
                "nothing to convert (lower --seq-len?)"
            )

    def schema(self) -> Schema:
        return Schema({"tokens": f"{self.dtype.name}[{self.sample_len}]"})

    def _n_samples(self, path: str) -> int:
        n = self.n_tokens[path] - (1 if self.overlap else 0)
        return max(0, n // self.seq_len)

    def tasks(self) -> list[TokensTask]:
        sample_bytes = self.sample_len * self.dtype.itemsize
        tasks: list[TokensTask] = []
        for path in self.files:
            n = self._n_samples(path)
            per_task = max(1, balanced_target(n * sample_bytes, self.shard_size) // sample_bytes)
            for start in range(0, n, per_task):
                stop = min(n, start + per_task)
                size = (stop - start) * self.seq_len * self.dtype.itemsize
                tasks.append(TokensTask(size, path, start, stop))
        return tasks

    def _tokens(self, task: TokensTask) -> np.ndarray:
        """A local task's file mapped, checked to still hold the tokens its tasks were cut
        from (a shorter file would be read past its end)."""
        tokens = _map(task.path, self._layout[task.path][1])
        if tokens.size != self.n_tokens[task.path]:
            raise ConvertError(
                f"{task.path}: changed size during the convert (had "
                f"{self.n_tokens[task.path]} tokens, now {tokens.size})"
            )
        return tokens

    def _chunks(self, task: TokensTask) -> Iterator[np.ndarray]:
        """The task's samples as 2-D arrays of up to _ROWS_PER_CHUNK rows: views of the map
        (local files), or of one ranged read each (remote files)."""
        step, length = self.seq_len, self.sample_len
        n = task.stop - task.start
        if self.inputs.local:
            tokens = self._tokens(task)[task.start * step :]
            yield from _rows(tokens, 0, n, step, length)
            return
        offset, dtype = self._layout[task.path]
        for first in range(0, n, _ROWS_PER_CHUNK):
            rows = min(_ROWS_PER_CHUNK, n - first)
            start = (task.start + first) * step
            count = (rows - 1) * step + length
            data = self.inputs.read_range(
                task.path,
                offset + start * dtype.itemsize,
                offset + (start + count) * dtype.itemsize,
            )
            yield from _rows(np.frombuffer(data, dtype), 0, rows, step, length)

    def read(self, task: TokensTask) -> Iterator[ReadItem]:
        for rows in self._chunks(task):
            for row in rows:
                yield {"tokens": row}
            yield Consumed(rows.shape[0] * self.seq_len * self.dtype.itemsize)

    def read_columns(self, task: TokensTask) -> Iterator[dict[str, np.ndarray]]:
        """Samples as 2-D views, a few thousand rows at a time (no copies here)."""
        for rows in self._chunks(task):
            yield {"tokens": rows}

    def dropped_tokens(self) -> int:
        """Tokens at the ends of files that fill no whole sample."""
        used = sum(
            self._n_samples(p) * self.seq_len + (self.overlap and self._n_samples(p) > 0)
            for p in self.files
        )
        return sum(self.n_tokens.values()) - used

    def notes(self) -> list[str]:
        dropped = self.dropped_tokens()
        return [
            f"tokens: {sum(self.n_tokens.values())} {self.dtype.name} tokens in "
            f"{len(self.files)} file(s) -> samples of {self.sample_len}; "
            f"{dropped} trailing token(s) dropped"
        ]


def _rows(tokens: np.ndarray, first: int, n: int, step: int, length: int) -> Iterator[np.ndarray]:
    """Rows ``first..first+n`` of samples of ``length`` tokens every ``step``, as read-only
    strided views, _ROWS_PER_CHUNK at a time."""
    rows = np.lib.stride_tricks.as_strided(
        tokens[first * step :],
        shape=(n, length),
        strides=(step * tokens.itemsize, tokens.itemsize),
        writeable=False,
    )
    for start in range(0, n, _ROWS_PER_CHUNK):
        yield rows[start : start + _ROWS_PER_CHUNK]


def _token_file(
    path: str, dtype: str | None, inputs: Inputs, size: int
) -> tuple[int, np.dtype, int]:
    """``(number of tokens, the file's dtype, offset of the first token)`` of a token file,
    checking it can be read as one."""
    if path.lower().endswith(".npy"):
        if inputs.local:
            arr = _load_npy(path)
            n, file_dtype, offset = arr.size, arr.dtype, 0
        else:
            n, file_dtype, offset = _npy_header(path, inputs)
            if offset + n * file_dtype.itemsize > size:
                raise ConvertError(
                    f"{path}: {size} bytes, fewer than its header's {n} {file_dtype} tokens "
                    "need (a truncated file?)"
                )
        if dtype is not None and file_dtype != np.dtype(dtype):
            raise ConvertError(f"{path}: holds {file_dtype} tokens but dtype {dtype} was asked for")
        return n, file_dtype, offset
    if dtype is None:
        raise ConvertError(
            f"{path}: a raw .bin token file needs its dtype: pass --dtype "
            f"{' or '.join(BIN_DTYPES)} (dtype=...)"
        )
    item = np.dtype(dtype).itemsize
    if size % item:
        raise ConvertError(
            f"{path}: {size} bytes is not a whole number of {dtype} tokens "
            f"({item} bytes each); wrong --dtype, or a truncated file?"
        )
    return size // item, np.dtype(dtype), 0


def _npy_header(path: str, inputs: Inputs) -> tuple[int, np.dtype, int]:
    """``(tokens, dtype, data offset)`` of a remote .npy, from its header alone."""
    fmt = np.lib.format
    try:
        with inputs.open(path, buffer_size=64 << 10) as f:
            version = fmt.read_magic(f)
            read_header = (
                fmt.read_array_header_1_0 if version == (1, 0) else (fmt.read_array_header_2_0)
            )
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except ValueError as e:
        raise ConvertError(f"{path}: not a readable .npy token file ({e})") from None
    if dtype.hasobject:
        raise ConvertError(f"{path}: holds Python objects; token files hold integers")
    if dtype.kind not in "iu":
        raise ConvertError(f"{path}: holds {dtype} values; token files hold integers")
    if len(shape) > 1 and fortran:
        raise ConvertError(f"{path}: a {len(shape)}-d array must be C-ordered to read as tokens")
    return int(np.prod(shape)), dtype, offset


def _load_npy(path: str) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ConvertError(f"{path}: not a readable .npy token file ({e})") from None
    if arr.dtype.kind not in "iu":
        raise ConvertError(f"{path}: holds {arr.dtype} values; token files hold integers")
    if arr.ndim != 1 and not arr.flags.c_contiguous:
        raise ConvertError(f"{path}: a {arr.ndim}-d array must be C-ordered to read as tokens")
    return arr.reshape(-1)


def _map(path: str, dtype: np.dtype) -> np.ndarray:
    """The file's tokens, memory-mapped read-only (an empty array for an empty file).

    Returned as a plain ndarray view of the map: slicing an np.memmap costs microseconds more
    per sample, which shows at hundreds of thousands of samples a second.
    """
    if path.lower().endswith(".npy"):
        return _load_npy(path).view(np.ndarray)
    if os.path.getsize(path) == 0:
        return np.empty(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r").view(np.ndarray)
