"""The ``fastload`` command: ``convert``, ``inspect``, ``verify`` and ``cache``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import __version__
from .dataset import Dataset
from .errors import FastloadError
from .format.imageinfo import EncodedImage
from .utils import format_size

__all__ = ["main"]


def _storage_options(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"fastload: error: --storage-options is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise SystemExit("fastload: error: --storage-options must be a JSON object")
    return value


def _describe(value: Any) -> str:
    """A short, printable summary of one field value."""
    if isinstance(value, EncodedImage):
        return repr(value)
    if isinstance(value, np.ndarray):
        head = np.array2string(value.reshape(-1)[:8], separator=", ")
        return f"ndarray {value.dtype}{list(value.shape)} {head}{' ...' if value.size > 8 else ''}"
    if isinstance(value, bytes):
        return f"{len(value)} bytes {value[:16]!r}{'...' if len(value) > 16 else ''}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _feature_name(feature: Any) -> str | None:
    """A source column's type in a few words: a Hugging Face feature's ``_type``, an Arrow
    type, or None."""
    if not isinstance(feature, dict):
        return None
    name = feature.get("_type") or feature.get("arrow")
    return str(name) if name is not None else "struct"


def cmd_inspect(args: argparse.Namespace) -> int:
    with Dataset(
        args.path,
        storage_options=_storage_options(args.storage_options),
        follow_symlinks=args.follow_symlinks,
    ) as ds:
        m = ds.manifest
        raw = sum(s.raw_bytes for s in m.shards)
        info = {
            "path": args.path,
            "format_version": m.version,
            "records": len(ds),
            "shards": len(m.shards),
            "bytes": m.bytes,
            "raw_bytes": raw,
            "compression_ratio": round(raw / m.bytes, 3) if m.bytes else None,
            "options": m.options,
            "schema": ds.schema.to_dict(),
            "fingerprint": ds.fingerprint,
            "classes": m.classes,
            "features": m.features,
        }
        sample = ds[0] if len(ds) else None
        if args.json:
            info["sample"] = {k: _describe(v) for k, v in sample.items()} if sample else None
            print(json.dumps(info, indent=2))
            return 0
        print(f"dataset      {args.path}")
        print(f"format       fastload v{m.version}, fingerprint {ds.fingerprint}")
        print(f"records      {len(ds):,}")
        print(f"shards       {len(m.shards)}")
        print(
            f"size         {format_size(m.bytes)} on disk, {format_size(raw)} raw "
            f"(ratio {info['compression_ratio']})"
        )
        print("options      " + ", ".join(f"{k}={v}" for k, v in m.options.items()))
        print("schema")
        for f in ds.schema:
            source = _feature_name((m.features or {}).get(f.name))
            print(f"  {f.name:<20} {f.spec}{f'   (source: {source})' if source else ''}")
        for field, names in (m.classes or {}).items():
            shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:20]))
            more = f", ... ({len(names)} in all)" if len(names) > 20 else ""
            print(f"classes      {field}: {shown}{more}")
        if sample is not None:
            print("record 0")
            for k, v in sample.items():
                print(f"  {k:<20} {_describe(v)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .verify import verify_dataset

    options = _storage_options(args.storage_options)
    links = args.follow_symlinks
    with Dataset(args.path, storage_options=options, follow_symlinks=links) as ds:
        total = ds.manifest.bytes
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="verify",
        disable=args.no_progress,
        file=sys.stderr,
    ) as bar:
        report = verify_dataset(
            args.path,
            storage_options=options,
            on_shard=bar.update,
            deep=args.deep,
            follow_symlinks=links,
        )
    for problem in report.problems:
        print(f"CORRUPT {problem}")
    if report.ok:
        print(
            f"OK: {report.shards} shards, {report.records:,} records, "
            f"{format_size(report.bytes)}: every checksum matches"
            + (" and every record decodes" if report.deep else "")
        )
        return 0
    print(f"FAILED: {len(report.problems)} problem(s) in {args.path}", file=sys.stderr)
    return 1


def cmd_cache(args: argparse.Namespace) -> int:
    import os

    from .io.cache import LAYOUT, BlockCache, default_cache_dir

    cache_dir = args.cache_dir or default_cache_dir()
    if not os.path.isdir(os.path.join(cache_dir, LAYOUT)):
        print(f"no fastload cache in {cache_dir}")
        return 0
    cache = BlockCache(cache_dir, 1 << 60)  # listing and clearing need no limit
    if args.action == "ls":
        entries = cache.entries()
        if args.json:
            print(
                json.dumps(
                    {
                        "cache_dir": cache.dir,
                        "bytes": sum(e.bytes for e in entries),
                        "objects": [e.__dict__ for e in entries],
                    },
                    indent=2,
                )
            )
            return 0
        for e in entries:
            print(f"{format_size(e.bytes):>10}  {e.blocks:>7} blocks  {e.url}  ({e.hash})")
        total = sum(e.bytes for e in entries)
        print(f"{format_size(total):>10}  in {len(entries)} object(s) in {cache.dir}")
        return 0
    freed = cache.clear(args.url)
    what = f"of objects under {args.url} " if args.url else ""
    print(f"removed {format_size(freed)} of cached blocks {what}from {cache.dir}")
    return 0


def _add_follow_symlinks(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="read local shards that are symbolic links to files outside the dataset "
        "(refused by default)",
    )


def build_parser() -> argparse.ArgumentParser:
    from .convert.cli import add_parser as add_convert

    parser = argparse.ArgumentParser(
        prog="fastload",
        description="Convert datasets to fastload's sharded, checksummed format; inspect and "
        "verify them.",
    )
    parser.add_argument("--version", action="version", version=f"fastload {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_convert(sub)
    p = sub.add_parser(
        "inspect",
        help="show a dataset's schema, size, shards and one record",
        description="Show a dataset's schema, size, shards and its first record.",
    )
    p.add_argument("path", help="dataset directory or URL (s3://, gs://, ...)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--storage-options", metavar="JSON", help="fsspec storage options")
    _add_follow_symlinks(p)
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser(
        "verify",
        help="check every checksum; exit 1 naming what is corrupt",
        description="Read every block of every shard and check its checksums (and with "
        "--deep, decode every record). Exits 1 and names the shard, block and record of "
        "each problem.",
    )
    p.add_argument("path", help="dataset directory or URL")
    p.add_argument("--storage-options", metavar="JSON", help="fsspec storage options")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--deep",
        action="store_true",
        help="also decode every record's structure and image headers, and report records "
        "that can never be read (slower: a decode per record)",
    )
    _add_follow_symlinks(p)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser(
        "cache",
        help="list or clear the local cache of remote blocks",
        description="List (ls) or delete (clear) the local copies of remote "
        "blocks. The cache directory is --cache-dir, else $FASTLOAD_CACHE_DIR, "
        "else ~/.cache/fastload. Only fastload's own cache files are deleted.",
    )
    p.add_argument("action", choices=["ls", "clear"], help="ls: what is cached; clear: delete it")
    p.add_argument("--cache-dir", metavar="DIR", help="the cache directory")
    p.add_argument(
        "--url",
        metavar="PREFIX",
        help="clear: only objects whose URL starts with PREFIX (e.g. s3://bucket/dataset/)",
    )
    p.add_argument("--json", action="store_true", help="ls: print JSON")
    p.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A warning shown as one line of the command's, not as Python's file:line and source;
    # only the format changes, so filters and recorders still see every warning.
    python_format = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: (
        f"fastload {args.command}: warning: {message}\n"
    )
    try:
        return int(args.func(args) or 0)
    except FastloadError as e:
        print(f"fastload {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fastload {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fastload inspect DS | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    finally:
        warnings.formatwarning = python_format
