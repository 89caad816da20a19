"""fastload's compiled core (``fastload._core``): hashing, bounds-checked gathers, keyed
permutations, batch finishing, CUDA queries.

Buffers are any object exporting a C-contiguous buffer (bytes, bytearray, memoryview, mmap.mmap,
numpy arrays); ``out`` buffers must also be writable. Index arrays must be 1-D C-contiguous numpy
arrays of exactly the stated dtype (no implicit conversion: a wrong dtype raises TypeError).

The finishing functions take arrays by DLPack or the buffer protocol (torch tensors, numpy
arrays), on the CPU or on a CUDA device (where the core was built with CUDA).

Every offset/length is checked before any byte is touched: a bad one raises ValueError naming
the item and the numbers, and nothing is written. Calls with real work in them (>= 64 KiB of bytes
or >= 1024 items) run with the GIL released.
"""

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from _typeshed import ReadableBuffer, WriteableBuffer

# Buffers the core reads and writes. Numpy arrays are named beside the buffer protocol because
# numpy's stubs declare their ``__buffer__`` only for Python >= 3.12, while they are buffers on
# every Python fastload supports.
_Buffer = ReadableBuffer | npt.NDArray[Any]
_OutBuffer = WriteableBuffer | npt.NDArray[Any]

class _Array(Protocol):
    """An array the finishing functions take: a torch tensor or a numpy array (anything that
    exports DLPack)."""

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any: ...

core_has_cuda: bool
"""True when the CUDA part was compiled into this module."""

def xxh64(data: _Buffer, seed: int = 0) -> int:
    """XXH64 of ``data``; equal to ``xxhash.xxh64_intdigest(data, seed)``."""

def xxh64_slices(
    data: _Buffer,
    offsets: npt.NDArray[np.uint64],
    lengths: npt.NDArray[np.uint64],
    seed: int = 0,
) -> npt.NDArray[np.uint64]:
    """XXH64 of each slice ``data[offsets[i] : offsets[i] + lengths[i]]``.

    Raises ValueError if the arrays differ in length or a slice is out of bounds.
    """

def check_slices(
    data: _Buffer,
    offsets: npt.NDArray[np.uint64],
    lengths: npt.NDArray[np.uint64],
    expected: npt.NDArray[np.uint32],
) -> int:
    """Index of the first slice whose checksum is wrong, or -1 when all match.

    The checksum of slice i is the low 32 bits of ``xxh64(data[offsets[i] : offsets[i] +
    lengths[i]], 0)``. Raises ValueError if the arrays differ in length or a slice is out of
    bounds (all slices are bounds-checked before any is hashed).
    """

def gather(
    sources: Sequence[_Buffer],
    source_index: npt.NDArray[np.uint32],
    offsets: npt.NDArray[np.uint64],
    lengths: npt.NDArray[np.uint64],
    out: _OutBuffer,
    out_offsets: npt.NDArray[np.uint64],
) -> None:
    """Copy ``sources[source_index[i]][offsets[i] : +lengths[i]]`` to ``out[out_offsets[i] :
    +lengths[i]]`` for each i, in order (a later item wins where destinations overlap).

    Raises ValueError for a source index out of range, a slice outside its source or outside
    ``out``, or arrays of different lengths; TypeError for a non-buffer or read-only ``out``.
    """

def gather_fixed(
    source: _Buffer,
    offsets: npt.NDArray[np.uint64],
    size: int,
    out: _OutBuffer,
) -> None:
    """Copy ``size`` bytes from ``source[offsets[i]:]`` to ``out[i * size :]`` for each i.

    ``out`` must hold at least ``len(offsets) * size`` bytes. Raises ValueError when it does
    not or a slice is outside ``source``.
    """

def gather_records(
    sources: Sequence[_Buffer],
    source: npt.NDArray[np.uint32],
    offset: npt.NDArray[np.uint64],
    length: npt.NDArray[np.uint64],
    checksum: npt.NDArray[np.uint32],
    indices: npt.NDArray[np.int64],
    verify: bool,
    field_at: npt.NDArray[np.uint64],
    field_size: npt.NDArray[np.uint64],
    outs: Sequence[_OutBuffer],
) -> int:
    """A batch of fixed-size fields straight from whole records, in one call.

    Record r lies at ``sources[source[r]][offset[r] : +length[r]]`` with ``checksum[r]`` the
    low 32 bits of its xxh64. For row i (record ``indices[i]``) and field f, copies the
    record's bytes ``[field_at[f] : +field_size[f]]`` to ``outs[f][i * field_size[f] :]``;
    with ``verify``, each record's checksum is checked just before (one pass over its bytes).
    Only the sources the batch reads are acquired.

    Returns -1, or the first row whose record cannot be read this way (index out of range,
    shorter than a field, failed checksum): earlier rows are copied, later ones are not.
    Raises ValueError for a table entry outside its source or an out too small for the rows.
    """

class RecordMap:
    """Where the records of a dataset lie, read from its shards' index bytes in place.

    Dataset record i is record ``i - starts[s]`` of shard s, for ``starts[s] <= i <
    starts[s + 1]``; the blocks of shard s are numbered dataset-wide from ``block_base[s]``.
    Shards are added as they are opened; nothing per record is copied (a shard's tables are
    held, as buffers, for as long as the map lives). Safe to read from several threads while
    shards are added.
    """

    def __init__(self, starts: npt.NDArray[np.int64], block_base: npt.NDArray[np.int64]) -> None:
        """``starts`` and ``block_base``: int64 arrays of n_shards + 1 entries, non-decreasing
        from 0. Raises ValueError otherwise."""

    def add(
        self,
        shard: int,
        blocks: ReadableBuffer,
        records: ReadableBuffer,
        n_blocks: int,
        n_records: int,
        record_size: int | None,
        group: int = 1,
    ) -> None:
        """Add shard ``shard``: ``blocks``, its block table's bytes (48 per block);
        ``records``, its record table's bytes: 16 per record, or, with ``record_size`` (the
        fixed layout), the records' checksums (4 bytes each), one per ``group`` records of
        a block where ``group`` > 1.

        Raises ValueError when the bytes do not hold the counts, the counts are not the
        shard's in the map, the shard was added already, or (fixed layout) the blocks do
        not hold the records as that layout lays them out.
        """

    def added(self, shard: int) -> bool:
        """Whether shard ``shard`` was added."""

    def block_numbers(self, indices: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The dataset-wide block number of each of dataset records ``indices`` (int64), or
        -1 where it is not known here (out of range, its shard not added)."""

    def places(
        self, indices: npt.NDArray[np.int64], in_blocks: bool
    ) -> tuple[
        int,
        npt.NDArray[np.uint64],
        npt.NDArray[np.uint64],
        npt.NDArray[np.uint64],
        npt.NDArray[np.uint64],
        npt.NDArray[np.uint64],
        npt.NDArray[np.uint32],
    ]:
        """Where dataset records ``indices`` lie: ``(stop, sources, offsets, lengths,
        check_offsets, check_lengths, checksums)``, as :meth:`gather` would read them
        (``in_blocks``: sources are dataset-wide block numbers and offsets in their raw
        bytes; else shard numbers and offsets in their files, raw blocks only). A checksum
        covers ``source[check_offset : +check_length]``: the record, or its group. ``stop``
        is -1, or the first row that cannot be placed (index out of range, its shard not
        added, a compressed block's record in a file); that row and the ones after it are
        zero."""

    def gather(
        self,
        sources: Sequence[ReadableBuffer | None],
        indices: npt.NDArray[np.int64],
        verify: bool,
        field_at: npt.NDArray[np.uint64],
        field_size: npt.NDArray[np.uint64],
        outs: Sequence[WriteableBuffer],
        in_blocks: bool,
    ) -> int:
        """``gather_records`` of dataset records ``indices``, placed from the shards' tables.

        ``in_blocks`` False: ``sources[s]`` is shard s's whole file, and only records of
        blocks stored raw are read; True: ``sources[g]`` is the raw bytes of the dataset's
        block g. Only the sources the batch reads are acquired.

        Returns -1, or the first row that cannot be read this way (index out of range, its
        shard not added, a compressed block's record from a file, shorter than a field,
        failed checksum; earlier rows may be copied). Raises ValueError for a record outside
        its source or an out too small for the rows, TypeError for a source that is not a
        buffer (a block not at hand, say).
        """

    def read(
        self,
        fds: npt.NDArray[np.int32],
        indices: npt.NDArray[np.int64],
        verify: bool,
        field_at: npt.NDArray[np.uint64],
        field_size: npt.NDArray[np.uint64],
        outs: Sequence[WriteableBuffer],
    ) -> int:
        """:meth:`gather` of records of raw blocks, read from the shards' files with pread
        instead of from maps: ``fds[s]`` (int32) is an open descriptor of shard s's file, or
        -1. Reads of neighbouring records (an unshuffled batch) are joined into one. The GIL
        is released.

        Returns -1, or the first row not read (index out of range, its shard not added or
        its file not open, a compressed block's record, the file ending before the record,
        a read error, shorter than a field, failed checksum; earlier rows are read). Raises
        ValueError for a shard outside ``fds`` or an out too small for the rows.
        """

def permute(n: int, key: int, positions: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """``P(positions[i])`` for the bijection P of [0, n) keyed by ``key`` (a uint64).

    P is a Feistel network over the smallest 2**k >= n with cycle-walking (a keyed
    Fisher-Yates table for n <= 256): O(1) time and memory per position, the same on every
    machine. Raises ValueError for n = 0 or a position >= n (all are checked first).
    """

def permute_inverse(n: int, key: int, values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """``P^-1(values[i])``: the position of each value in the order of :func:`permute`."""

def permute_range(n: int, key: int, start: int, count: int) -> npt.NDArray[np.uint64]:
    """``P(start + i)`` for i in [0, count); ValueError unless ``start + count <= n`` (checked
    before anything is allocated)."""

def cuda_available() -> bool:
    """True when the core was built with CUDA and at least one device is usable. Never raises."""

def cuda_device_count() -> int:
    """Number of visible CUDA devices; 0 without CUDA support, a driver or a device."""

def finish_images(
    images: _Array,
    out: _Array,
    layout_in: str,
    layout_out: str,
    mean: Sequence[float],
    std: Sequence[float],
    stream: int = 0,
    num_threads: int = 1,
) -> None:
    """``out = (images - mean[c]) / std[c]`` per channel, converted to ``out``'s dtype (float32,
    float16 or bfloat16; rounded to nearest even), in one pass.

    ``images``: uint8 ``(N, H, W, C)`` for ``layout_in="HWC"`` or ``(N, C, H, W)`` for
    ``"CHW"``, 1 to 4 channels; ``out`` likewise for ``layout_out``. Both C-contiguous, on the
    CPU or on one CUDA device. ``mean``/``std``: one value per channel in pixel units (0..255),
    finite, std > 0. CPU: the GIL is released and large batches are split over ``num_threads``
    threads. CUDA: the kernel is launched on ``stream`` (a cudaStream_t as an int; 0 the legacy
    default stream) and not waited for. Raises TypeError for a wrong dtype or a non-array,
    ValueError for wrong shapes, layouts, devices or values (all checked before anything is
    written), RuntimeError if the kernel cannot launch. ``fastload.decode.finish_images`` is
    the API.
    """

def finish_tokens(
    rows: _Array,
    inputs: _Array,
    targets: object | None = None,
    stream: int = 0,
    num_threads: int = 1,
) -> None:
    """uint16/uint32 token ``rows`` ``(B, L)`` widened into ``inputs`` (int32 or int64).

    Without ``targets`` (an array like ``inputs``, or None), ``inputs`` is ``(B, L)``; with
    them (the next-token shift) both are ``(B, L - 1)``: ``inputs = rows[:, :-1]``,
    ``targets = rows[:, 1:]``. uint32 into int32 is refused (ValueError: a token over
    2**31 - 1 would wrap). Devices, ``stream`` and ``num_threads`` as :func:`finish_images`;
    ``fastload.decode.finish_tokens`` is the API.
    """

def jpeg_region_available() -> bool:
    """Whether this build decodes JPEG regions (it found libjpeg-turbo)."""

def decode_jpeg_region(
    data: _Buffer,
    scale: int,
    expect_height: int,
    expect_width: int,
    top: int,
    left: int,
    bottom: int,
    right: int,
    out: _OutBuffer,
    index: _Buffer | None = None,
) -> tuple[int, str, int, int, int, int, int, int, bool]:
    """Decode rows [top, bottom) and columns [left, right) of a JPEG at 1/``scale`` (1, 2, 4
    or 8; bounds in scaled pixels, clamped to the image) into ``out`` as packed RGB.

    Returns (status, message, image_height, image_width, row0, col0, rows, cols, indexed):
    status 0 decoded: ``out[: rows * cols * 3]`` holds scaled rows [row0, row0 + rows) and
    columns [col0, col0 + cols) (the columns widened to whole blocks), ``indexed`` whether
    only the MCUs around the region were decoded, through ``index``; 1 not handled here (CMYK
    or YCCK, or libjpeg warned about corrupt or truncated data): decode it another way; 2 the
    header's size is not expect_height x expect_width; 3 libjpeg refused the data (message
    says why), or out is too small; 4 built without libjpeg-turbo. Pixels equal a
    whole-image decode's except on the region's outermost pixels (chroma upsampling at an
    edge): ask for one more on each side than is used. ``index``: the JPEG's entropy index
    (``jpeg_entropy_index``), with which only the MCUs around the region are decoded; the
    same pixels either way, and an index that does not fit these bytes is ignored. Runs with
    the GIL released."""

def jpeg_entropy_index(data: _Buffer) -> bytes | None:
    """The entropy index of a baseline JPEG (the bit position and DC predictors at every 4th
    MCU or so of each MCU row: ~3 KB for a 640x480 photo), or None for a JPEG it is not made for
    (progressive, arithmetic-coded, restart markers, 12-bit, other than 1 or 3 components) or
    whose data does not decode. Runs with the GIL released."""
