"""Opens a shard, validates its index, and hands out record bytes with their checksums checked.

The file is untrusted: every size, offset and count is checked against the file's real size and
against each other before anything is read or allocated (docs/reliability.md A1-A12), and
errors name the shard, the block, the record and the byte offset.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Protocol

import numpy as np

from .. import _core
from ..errors import CorruptRecordError, ShardChecksumError, ShardFormatError
from .checksum import first_bad_record, format_hash, hash64, record_checksum
from .codec import BlockCodecError, decompress_block
from .decoded import DEFAULT_DECODED_LIMIT, DecodedBlocks
from .manifest import ShardInfo
from .record import RecordLayout
from .shard_index import block_problems
from .shard_records import ShardRecords, shard_records
from .spec import (
    CODEC_NONE,
    FLAG_CHECKSUM_GROUPS,
    FLAG_FIXED_SIZE,
    HEADER_DTYPE,
    HEADER_SIZE,
    KNOWN_FLAGS,
    MAGIC,
    MAX_BLOCK_RAW_SIZE,
    MIN_SHARD_SIZE,
    SUPPORTED_VERSIONS,
    TRAILER_DTYPE,
    TRAILER_SIZE,
    index_size,
)

__all__ = ["ByteSource", "ShardReader", "BLOCK_SIZE_FACTOR"]

#: By default a compressed block may decompress to this many times the dataset's block size.
#: The writer never puts several records in a block larger than the block size, so a block
#: claiming more is damaged or forged; a record larger than the block size gets a block of
#: its own, which may be as large as that record (what reading it returns anyway).
BLOCK_SIZE_FACTOR = 4


class ByteSource(Protocol):
    """Where a shard's bytes come from (a mapped local file, ranged reads of an object...)."""

    name: str  # shown in errors
    size: int
    # The whole file as one buffer when it is mapped locally (zero-copy slices), else None.
    buffer: memoryview | None
    # Optional: True when the source reads (and caches) whole blocks, so a record of a raw
    # block is sliced from its block rather than read on its own (remote sources).
    # whole_blocks: bool
    # Optional: release(offset, length): this process need not keep those bytes (read through
    # ``buffer``) resident: a mapped file's pages leave the process's memory and come back
    # from the page cache when touched again. Called on the index once it is checked.

    def read(self, offset: int, length: int) -> bytes | memoryview:
        """Exactly ``length`` bytes at ``offset`` (raises if the file is shorter)."""
        ...

    def close(self) -> None:
        """Let go of the file (a closed source is not read again)."""
        ...


class ShardReader:
    """Random access to the records of one shard."""

    def __init__(
        self,
        source: ByteSource,
        *,
        expected: ShardInfo | None = None,
        verify: bool = True,
        cached_blocks: int = 8,
        decoded: DecodedBlocks | None = None,
        key: Hashable = 0,
        max_block_bytes: int | None = None,
        block_size: int | None = None,
        layout: RecordLayout | None = None,
    ) -> None:
        """``decoded``: where decompressed blocks are kept (a dataset's readers share one,
        each under its own ``key``); a reader of its own otherwise. ``cached_blocks``: raw
        blocks read from an unmapped source kept (remote ones, without the block cache).
        ``max_block_bytes``: a compressed block that would decompress to more is refused
        before anything is allocated; by default (None) the limit is ``BLOCK_SIZE_FACTOR`` x
        ``block_size`` (the dataset's, from its manifest), or a single-record block's record
        size if larger; without either, the format's own limit, 2 GiB. ``layout``: the
        record layout of the manifest's schema; given, the shard must have been written with
        that schema (version 2 records its fingerprint) and every record must have the
        layout's size (exactly, for a schema of fixed-size fields only)."""
        self.source = source
        self.name = source.name
        self.verify = verify
        self._cached_blocks = cached_blocks
        self._cache: OrderedDict[int, bytes | memoryview] = OrderedDict()
        self._own_decoded = decoded is None
        self._decoded = DecodedBlocks(DEFAULT_DECODED_LIMIT) if decoded is None else decoded
        self._key = key
        self.max_block_bytes = max_block_bytes
        self.block_size = block_size
        self._open(expected, layout)

    # -- opening and validation -----------------------------------------------------------
    def _fail(self, why: str) -> ShardFormatError:
        return ShardFormatError(f"{self.name}: {why}")

    def _open(self, expected: ShardInfo | None, layout: RecordLayout | None) -> None:
        size = self.source.size
        if size == 0:
            raise self._fail(
                "file is 0 bytes; it is not a fastload shard (an interrupted write or download?)"
            )
        if size < MIN_SHARD_SIZE:
            raise self._fail(
                f"file is {size} bytes, smaller than the minimum shard size "
                f"({MIN_SHARD_SIZE} bytes: header + trailer); it is truncated"
            )
        header = np.frombuffer(self.source.read(0, HEADER_SIZE), HEADER_DTYPE)[0]
        if header["magic"] != MAGIC:
            # Nothing of the file is quoted: it may be any file at all (a link gone astray).
            raise self._fail(
                f"not a fastload shard: it does not start with the magic bytes {MAGIC!r} (an "
                "error page or another file saved in its place?)"
            )
        version = int(header["version"])
        self._check_version(version, "header")
        reserved = bytes(header["reserved"])
        if version == 1:  # the schema's fingerprint came with version 2: reserved before
            reserved = int(header["schema_hash"]).to_bytes(8, "little") + reserved
        flags = int(header["flags"])
        self._check_unused(flags, reserved, "header", version)
        if expected is not None and size != expected.bytes:
            raise ShardChecksumError(
                f"{self.name}: file is {size} bytes but the manifest says "
                f"{expected.bytes}: the shard is truncated or was replaced; "
                "re-create or re-download it"
            )
        trailer = np.frombuffer(self.source.read(size - TRAILER_SIZE, TRAILER_SIZE), TRAILER_DTYPE)[
            0
        ]
        if trailer["magic"] != MAGIC:
            raise self._fail("trailer magic bytes missing: the shard is truncated or corrupt")
        self._check_version(int(trailer["version"]), "trailer")
        if int(trailer["version"]) != int(header["version"]):
            raise self._fail(
                f"the header says format version {int(header['version'])} and the trailer "
                f"{int(trailer['version'])}: the shard is corrupt"
            )
        if int(trailer["flags"]) != flags:
            raise self._fail(
                f"the header has flags {flags:#x} and the trailer {int(trailer['flags']):#x}: "
                "the shard is corrupt"
            )
        self._read_index(trailer, size, flags)
        if expected is not None:
            self._check_expected(expected)
        if layout is not None and version >= 2:
            self._check_schema(int(header["schema_hash"]), layout)
        self._check_lengths(layout)
        release = getattr(self.source, "release", None)
        if release is not None:  # checked: from now on only the pages of records read
            release(int(trailer["index_offset"]), int(trailer["index_size"]))

    def _check_version(self, version: int, where: str) -> None:
        if version not in SUPPORTED_VERSIONS:
            raise self._fail(
                f"format version {version} in the {where} is not supported by this "
                f"fastload (supports {list(SUPPORTED_VERSIONS)}); upgrade fastload"
            )

    def _check_unused(self, flags: int, reserved: bytes, where: str, version: int) -> None:
        # A flag this reader does not know is a feature it cannot honour (or a damaged byte),
        # so it is refused rather than ignored; version 1 had no flags at all.
        unknown = flags & ~(KNOWN_FLAGS if version >= 2 else 0)
        if flags & FLAG_CHECKSUM_GROUPS and not flags & FLAG_FIXED_SIZE:
            unknown |= FLAG_CHECKSUM_GROUPS  # groups of records of one size only
        if unknown or any(reserved):
            raise self._fail(
                f"the {where} has flags {flags:#x} and reserved bytes "
                f"{reserved.hex() or '-'} where its format version writes zeros: the "
                "shard is corrupt or needs a newer fastload"
            )

    def _read_index(self, trailer: np.void, size: int, flags: int) -> None:
        offset, length = int(trailer["index_offset"]), int(trailer["index_size"])
        n_blocks, n_records = int(trailer["n_blocks"]), int(trailer["n_records"])
        index_end = size - TRAILER_SIZE
        if offset < HEADER_SIZE or length > index_end or offset + length != index_end:
            raise self._fail(
                f"index claims {length} bytes at offset {offset}, but the file has "
                f"{size} bytes (index must end at {index_end})"
            )
        most = index_size(n_blocks, n_records, flags)
        least = most if not flags & FLAG_CHECKSUM_GROUPS else index_size(n_blocks, 0, flags)
        if not least <= length <= most:  # grouped checksums: counted once the blocks are read
            raise self._fail(
                f"index is {length} bytes, which does not hold {n_blocks} blocks and "
                f"{n_records} records; the trailer is corrupt"
            )
        # Read where it lies: a mapped shard's index stays in the page cache's pages (shared
        # by every process), not copied into each process (views keep the map alive).
        index = self.source.read(offset, length)
        self.index_hash = hash64(index)
        if self.index_hash != int(trailer["index_hash"]):
            raise self._fail(
                f"index (bytes {offset}..{offset + length}) failed its checksum; "
                "the shard is corrupt"
            )
        self.data_end = offset
        self.index: ShardRecords = shard_records(index, n_blocks, n_records, flags)
        self.blocks = self.index.blocks
        problems = block_problems(self.blocks, self.data_end) + self.index.problems()
        if problems:
            raise self._fail("index is inconsistent: " + "; ".join(problems))
        raw = self.blocks["codec"] == CODEC_NONE
        self._raw = raw.tolist()  # per block: stored bytes are the raw bytes
        self._all_raw = bool(raw.all())
        self._block_at = np.ascontiguousarray(self.blocks["offset"])  # (per block: small)
        self._map = self._record_map()

    def _record_map(self) -> _core.RecordMap:
        """The compiled core's view of the tables (checked): a batch's places in one call."""
        n = np.array([0, len(self.index)], np.int64)
        record_map = _core.RecordMap(n, np.array([0, len(self.blocks)], np.int64))
        try:
            self.add_to(record_map, 0)
        except ValueError as e:  # the core checks on its own (what the reader let through)
            raise self._fail(f"index is inconsistent: {e}") from None
        return record_map

    def add_to(self, record_map: _core.RecordMap, s: int) -> None:
        """Place this shard's records as shard ``s`` of ``record_map``: its tables read in
        place (ValueError where the core finds them inconsistent)."""
        index = self.index
        record_map.add(
            s,
            index.block_bytes,
            index.table,
            len(self.blocks),
            len(index),
            index.record_size,
            index.group,
        )

    def _check_expected(self, expected: ShardInfo) -> None:
        if format_hash(self.index_hash) != expected.hash:
            raise ShardChecksumError(
                f"{self.name}: shard hash is {format_hash(self.index_hash)} but the manifest "
                f"says {expected.hash}: the shard was replaced or corrupted; re-create it"
            )
        if len(self.index) != expected.records or len(self.blocks) != expected.blocks:
            raise self._fail(
                f"has {len(self.index)} records in {len(self.blocks)} blocks, the "
                f"manifest says {expected.records} in {expected.blocks}"
            )

    def _check_schema(self, written: int, layout: RecordLayout) -> None:
        expected = layout.schema.fingerprint
        if written != expected:
            raise self._fail(
                f"was written with a schema of fingerprint {format_hash(written)}, but the "
                f"manifest's schema {layout.schema.to_dict()} has {format_hash(expected)}: "
                "the shard belongs to another dataset, or its header is damaged"
            )

    def _check_lengths(self, layout: RecordLayout | None) -> None:
        misfit = self.index.check_lengths(layout)
        if misfit is not None:
            raise self.corrupt_record(*misfit)

    @property
    def shortest(self) -> int:
        """The bytes of the shortest record (0 for an empty shard)."""
        return self.index.shortest

    # -- reading --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def block(self, b: int) -> bytes | memoryview:
        """The raw (decompressed) bytes of block ``b``, checked against its checksum."""
        if not self._raw[b]:  # decompressed once, whichever thread asks first
            return self._decoded.get_or_make((self._key, b), lambda: self._load(b))
        cached = self._cache.get(b)
        if cached is not None:
            self._cache.move_to_end(b)
            return cached
        raw = self._load(b)
        if self.source.buffer is None:  # mapped raw blocks cost nothing
            self._cache[b] = raw
            if len(self._cache) > self._cached_blocks:
                self._cache.popitem(last=False)
        return raw

    def _load(self, b: int) -> bytes | memoryview:
        """Block ``b`` read, checked and decompressed."""
        entry = self.blocks[b]
        offset, stored_size = int(entry["offset"]), int(entry["stored_size"])
        if not self._raw[b]:
            too_large = self._too_large(b)
            if too_large is not None:
                raise self._fail(too_large)
        stored = self.source.read(offset, stored_size)  # (a mapped source notes the read)
        checked = getattr(self.source, "checked", None)  # a source that checks blocks itself
        if (
            self.verify
            and not (checked is not None and checked(b))
            and hash64(stored) != int(entry["checksum"])
        ):
            raise self._corrupt_block(b, "failed its checksum")
        try:
            return decompress_block(int(entry["codec"]), stored, int(entry["raw_size"]))
        except BlockCodecError as e:
            raise self._corrupt_block(b, f"could not be decoded ({e})") from None

    def block_limit(self, b: int) -> int:
        """The most bytes compressed block ``b`` may decompress to (see ``__init__``)."""
        if self.max_block_bytes is not None:
            return self.max_block_bytes
        if not self.block_size:
            return MAX_BLOCK_RAW_SIZE
        limit = BLOCK_SIZE_FACTOR * self.block_size
        entry = self.blocks[b]
        if int(entry["n_records"]) == 1:
            limit = max(limit, self.index.length(int(entry["first_record"])))
        return min(limit, MAX_BLOCK_RAW_SIZE)

    def _too_large(self, b: int) -> str | None:
        """Why block ``b`` must not be decompressed, or None."""
        raw_size, limit = int(self.blocks[b]["raw_size"]), self.block_limit(b)
        if raw_size <= limit:
            return None
        if self.max_block_bytes is not None:
            why = f"max_block_bytes={limit:,}"
        else:
            why = (
                f"{limit:,} ({BLOCK_SIZE_FACTOR} x the dataset's block size, "
                f"{self.block_size:,}, or the size of a block's only record)"
            )
        return (
            f"block {b} would decompress to {raw_size:,} bytes, more than {why} allows: "
            "the shard is damaged or forged (Dataset(max_block_bytes=...) raises the limit)"
        )

    def held(self, b: int) -> bytes | memoryview | None:
        """The raw bytes of block ``b`` if this reader holds them already (no I/O, no
        decompression), else None."""
        held = self._cache.get(b)
        if held is None and not self._raw[b]:  # (a list: this runs per block per batch)
            held = self._decoded.peek((self._key, b))
        return held

    def _corrupt_block(self, b: int, why: str) -> CorruptRecordError:
        entry = self.blocks[b]
        first = int(entry["first_record"])
        last = first + int(entry["n_records"]) - 1
        offset = int(entry["offset"])
        return CorruptRecordError(
            f"{self.name}: block {b} (byte offset {offset}, {int(entry['stored_size'])} bytes, "
            f"records {first}..{last}) {why}; the shard is corrupt: re-create or re-download it"
        )

    def corrupt_record(self, r: int, why: str, *, checksum: bool = False) -> CorruptRecordError:
        """The error for record ``r`` (also used by callers that decode it); ``checksum``: it
        failed its checksum, which it may share with its neighbours (then named too)."""
        b, offset, _, _ = self.index.place(r)
        where = int(self.blocks[b]["offset"]) + offset
        in_block = "" if self.blocks[b]["codec"] == CODEC_NONE else " before decompression"
        first, last = self.index.sharing_checksum(r) if checksum else (r, r)
        shared = f"; one checksum with records {first}..{last}" if first != last else ""
        return CorruptRecordError(
            f"{self.name}: record {r} (block {b}, byte offset {where}{in_block}{shared}) {why}"
        )

    def checksum_failed(self, r: int) -> CorruptRecordError:
        """The error for record ``r`` failing its checksum (shared with its group, if any)."""
        return self.corrupt_record(
            r,
            "failed its checksum; the shard is corrupt: re-create or re-download it",
            checksum=True,
        )

    def record(self, r: int) -> bytes | memoryview:
        """The bytes of record ``r`` (a zero-copy slice when the shard is mapped)."""
        b, offset, length, checksum = self.index.place(r)
        if not self.verify:
            return self._raw_record(b, offset, length)
        at, checked = self.index.checked(r)  # the record, or its group of records
        view = self._raw_record(b, at, checked)
        if record_checksum(view) != checksum:
            raise self.checksum_failed(r)
        return view if checked == length else memoryview(view)[offset - at : offset - at + length]

    def _raw_record(self, b: int, offset: int, length: int) -> bytes | memoryview:
        entry = self.blocks[b]
        if entry["codec"] == CODEC_NONE:
            # Stored raw: the record is one slice of the map, or one ranged read remotely.
            start = int(entry["offset"]) + offset
            if self.source.buffer is not None:
                return self.source.buffer[start : start + length]
            if b not in self._cache and not getattr(self.source, "whole_blocks", False):
                return self.source.read(start, length)
        return memoryview(self.block(b))[offset : offset + length]

    def locate(self, rs: np.ndarray) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
        """Where records ``rs`` lie, for a batched gather in the compiled core.

        Returns ``(buffers, buffer index per record, offset in that buffer, length)``, every
        record already checked (by its own checksum, or its whole block's).
        """
        mapped = self.source.buffer
        in_file = mapped is not None and self._all_raw  # the common case: local, raw shards
        stop, blocks, offsets, lengths, check_at, check_len, checksums = self._map.places(
            np.ascontiguousarray(rs, np.int64), not in_file
        )
        if stop >= 0:
            raise IndexError(
                f"{self.name}: record {rs[stop]} is out of range ({len(self)} records)"
            )
        if in_file:  # offsets in the file
            if self.verify:
                bad = first_bad_record(mapped, check_at, check_len, checksums)
                if bad >= 0:
                    raise self.checksum_failed(int(rs[bad]))
            return [mapped], np.zeros(len(rs), np.uint32), offsets, lengths
        source_index = np.zeros(len(rs), np.uint32)
        buffers: list = []
        in_blocks = np.ones(len(rs), bool)  # records read out of whole (checked) blocks
        if mapped is not None:
            raw_mapped = self.blocks["codec"][blocks] == CODEC_NONE
            if raw_mapped.any():  # sliced straight out of the map, as in the fast path
                buffers.append(mapped)
                offsets[raw_mapped] += self._block_at[blocks[raw_mapped]]
                check_at[raw_mapped] += self._block_at[blocks[raw_mapped]]
                in_blocks = ~raw_mapped
                if self.verify:
                    mine = np.flatnonzero(raw_mapped)
                    bad = first_bad_record(mapped, check_at[mine], check_len[mine], checksums[mine])
                    if bad >= 0:
                        raise self.checksum_failed(int(rs[mine[bad]]))
        if in_blocks.any():
            # One buffer per distinct block. Each was checked whole against its block
            # checksum (verify=True), which covers every record in it: checking the records
            # again cost a call per block per batch, for nothing.
            slot: dict[int, int] = {}  # block -> its buffer (a dict: batches are small)
            mine = [slot.setdefault(b, len(slot)) for b in blocks[in_blocks].tolist()]
            source_index[in_blocks] = np.array(mine, np.uint32) + np.uint32(len(buffers))
            resident = getattr(self.source, "resident", None)  # checked, mapped stored bytes
            for b in slot:
                view = resident(b) if resident is not None and self._raw[b] else None
                buffers.append(view if view is not None else self.block(b))
        return buffers, source_index, offsets, lengths

    def blocks_of(self, rs: np.ndarray) -> np.ndarray:
        """The block (in this shard) of each of records ``rs`` (int64; -1 out of range)."""
        return self._map.block_numbers(np.ascontiguousarray(rs, np.int64))

    def problems(
        self, check: Callable[[memoryview], str | None] | None = None
    ) -> Iterator[CorruptRecordError]:
        """Check every block and record checksum; yield one error per bad block or record.
        ``check``: also ask it of every record that passed its checksum (its bytes in, why it
        can never be read out, or None), and yield an error for each answer."""
        for b in range(len(self.blocks)):
            entry = self.blocks[b]
            offset, stored_size = int(entry["offset"]), int(entry["stored_size"])
            stored = self.source.read(offset, stored_size)
            if hash64(stored) != int(entry["checksum"]):
                yield self._corrupt_block(b, "failed its checksum")
                continue
            too_large = None if self._raw[b] else self._too_large(b)
            if too_large is not None:
                yield self._corrupt_block(b, f"is too large: {too_large}")
                continue
            try:
                raw = decompress_block(int(entry["codec"]), stored, int(entry["raw_size"]))
            except BlockCodecError as e:
                yield self._corrupt_block(b, f"could not be decoded ({e})")
                continue
            first, offsets, lengths, checksums = self.index.in_block(b)
            failed = set()
            done = 0
            while done < len(offsets):
                bad = first_bad_record(
                    raw, offsets[done:], lengths[done:], np.asarray(checksums[done:])
                )
                if bad < 0:
                    break
                failed.add(first + done + bad)
                yield self.corrupt_record(first + done + bad, "failed its checksum", checksum=True)
                done += bad + 1
            if check is not None:
                yield from self._unreadable(memoryview(raw), first, len(offsets), failed, check)

    def _unreadable(
        self,
        raw: memoryview,
        first: int,
        n: int,
        skip: set[int],
        check: Callable[[memoryview], str | None],
    ) -> Iterator[CorruptRecordError]:
        """``check``'s answers for records ``first..first+n-1`` of one block (``raw``)."""
        for r in range(first, first + n):
            if r in skip:
                continue
            _, at, length, _ = self.index.place(r)
            why = check(raw[at : at + length])
            if why is not None:
                yield self.corrupt_record(r, f"can never be read: {why}")

    def close(self) -> None:
        self._cache.clear()
        if self._own_decoded:
            self._decoded.clear()
        # The views of the index let go of it (a mapped shard is unmapped once none is left).
        self.index = shard_records(b"", 0, 0, 0)
        self.blocks = self.index.blocks
        self._all_raw, self._raw, self._block_at = False, [], self._block_at[:0]
        self._map = self._record_map()
