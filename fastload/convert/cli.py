"""The ``fastload convert`` subcommand: argument parsing and the summary it prints.

``fastload/cli.py`` registers it with ``add_parser(subparsers)`` and calls ``args.func(args)``
(this module's :func:`run`), which returns the exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from ..errors import FastloadError
from ..format.codec import COMPRESSIONS
from .auto import SOURCES
from .tokens import BIN_DTYPES

__all__ = ["add_parser", "run", "build_parser"]

_DESCRIPTION = """\
Convert a dataset into fastload's sharded, compressed, checksummed format.

Input kinds (--from, or detected from SRC):
  imagefolder  SRC/<class>/<image>; fields image, label (class index), filename
  parquet      .parquet/.arrow/.feather files, Hugging Face datasets (Parquet, or folders
               of datasets.save_to_disk); one field per column, Image columns as images,
               ClassLabel names kept
  jsonl        .jsonl(.gz) files; schema inferred from the first lines
  webdataset   .tar files; one field per extension, plus key
  tokens       .bin (needs --dtype) or .npy token files; --seq-len tokens per sample

SRC is a file, a directory, a glob (train-*.parquet) or a brace pattern (shard-{000..099}.tar),
local or at an fsspec URL (s3://, gs://, hf://, ...); DST a local path or an fsspec URL. The
output is identical for any --workers, or with --ray (the tasks on a Ray cluster: every node
must reach SRC and DST).
Nothing counts as written until the manifest appears, last; an interrupted convert is
cleaned up by the next one to the same DST.
"""

_EXAMPLES = """\
examples:
  fastload convert imagenet/train out/imagenet-train --workers 8
  fastload convert data.parquet s3://bucket/ds --storage-options '{"anon": false}'
  fastload convert logs/ out/logs --from jsonl --skip-bad
  fastload convert ./saved_by_datasets out/hf --split train
  fastload convert 'shards-{000..099}.tar' out/wds
  fastload convert tokens.bin out/lm --dtype uint16 --seq-len 2048 --overlap
  fastload convert 's3://raw/train-*.parquet' s3://bucket/ds --src-storage-options '{"anon": true}'
  fastload convert 'gs://bucket/wds/shard-{000..099}.tar' out/wds --from webdataset --ray
"""


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser for ``convert`` (what ``fastload convert`` parses)."""
    parser = argparse.ArgumentParser(prog="fastload")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``convert`` on an argparse subparsers object; sets ``func=run``."""
    p = subparsers.add_parser(
        "convert",
        help="convert a dataset (image folder, Parquet, JSONL, WebDataset, tokens) to fastload",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="input file, directory, glob or brace pattern; a path or fsspec URL",
    )
    p.add_argument("dst", metavar="DST", help="output directory or fsspec URL")
    p.add_argument(
        "--from",
        dest="source",
        default="auto",
        choices=["auto", *SOURCES],
        help="input kind (default: detect from SRC)",
    )
    _add_output_options(p.add_argument_group("output"))
    _add_running_options(p.add_argument_group("running"))
    _add_source_options(p.add_argument_group("source options"))
    p.set_defaults(func=run)
    return p


def _add_output_options(out: Any) -> None:
    out.add_argument(
        "--shard-size",
        default="64MiB",
        metavar="SIZE",
        help="input bytes per task, and output bytes per shard (default: 64MiB)",
    )
    out.add_argument(
        "--block-size",
        default="1MiB",
        metavar="SIZE",
        help="bytes per compressed block inside a shard (default: 1MiB, as convert() and Writer)",
    )
    out.add_argument(
        "--compression",
        default="auto",
        choices=list(COMPRESSIONS),
        help="auto (default): zstd for the blocks it at least halves, the rest raw (nearly "
        "random data, token ids, reads faster raw); zstd: wherever it saves 5%%; none",
    )
    out.add_argument(
        "--level", type=int, default=3, metavar="N", help="zstd level, -7..22 (default: 3)"
    )
    out.add_argument(
        "--no-jpeg-index",
        dest="jpeg_index",
        action="store_false",
        help="store JPEGs without their entropy index (by default each baseline JPEG gets one, "
        "~3 KB for a 640x480 photo, so that a crop decodes only its own MCUs: ~20%% less "
        "decode time)",
    )
    out.add_argument(
        "--overwrite", action="store_true", help="replace a fastload dataset already at DST"
    )
    out.add_argument(
        "--storage-options",
        metavar="JSON",
        type=_json_object,
        help="fsspec options for SRC and DST, as a JSON object",
    )
    out.add_argument(
        "--src-storage-options",
        metavar="JSON",
        type=_json_object,
        help="fsspec options for SRC alone (then --storage-options is DST's alone)",
    )


def _add_running_options(run_group: Any) -> None:
    run_group.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes (default: min(4, CPU count), as convert())",
    )
    run_group.add_argument(
        "--ray",
        nargs="?",
        const=True,
        default=False,
        metavar="ADDRESS",
        help="run the tasks on a Ray cluster: the one at ADDRESS "
        "(ray://head:10001, auto), else the one ray.init() finds "
        "(RAY_ADDRESS, `ray start`), else a new local one; "
        "--workers is then the cluster's CPUs",
    )
    run_group.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip and count bad input records instead of failing",
    )
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    run_group.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object instead of a summary",
    )


def _add_source_options(src: Any) -> None:
    """The options one kind of input takes (``--from``)."""
    src.add_argument(
        "--decode-check",
        action="store_true",
        default=None,
        help="imagefolder/webdataset: fully decode every image to catch corruption",
    )
    src.add_argument(
        "--seq-len", type=int, default=None, metavar="N", help="tokens: tokens per sample"
    )
    src.add_argument(
        "--dtype",
        choices=BIN_DTYPES,
        default=None,
        help="tokens: the token type of a raw .bin file",
    )
    src.add_argument(
        "--overlap",
        action="store_true",
        default=None,
        help="tokens: samples of seq-len+1 tokens, sharing one with the next",
    )
    src.add_argument(
        "--split",
        default=None,
        metavar="NAME",
        help="parquet: the split to convert of a folder of several (train, validation, test, "
        "...): a datasets.DatasetDict folder, or data files named by split",
    )
    src.add_argument(
        "--image-columns",
        default=None,
        metavar="A,B",
        help="parquet: exactly these columns hold images ('' for none); default: Hugging "
        "Face Image features, and binary columns whose sampled values are all JPEG/PNG/WebP",
    )
    src.add_argument(
        "--infer-lines",
        type=int,
        default=None,
        metavar="N",
        help="jsonl: lines to infer the schema from (default: 1000)",
    )


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``convert`` command; returns the exit status."""
    from .runner import convert

    _setup_logging()
    try:
        result = convert(
            args.src,
            args.dst,
            source=args.source,
            workers=args.workers,
            shard_size=args.shard_size,
            block_size=args.block_size,
            compression=args.compression,
            level=args.level,
            jpeg_index=args.jpeg_index,
            overwrite=args.overwrite,
            skip_bad=args.skip_bad,
            storage_options=args.storage_options,
            src_storage_options=args.src_storage_options,
            progress=not args.no_progress,
            decode_check=args.decode_check,
            seq_len=args.seq_len,
            dtype=args.dtype,
            overlap=args.overlap,
            infer_lines=args.infer_lines,
            split=args.split,
            image_columns=args.image_columns,
            ray=args.ray,
        )
    except FastloadError as e:
        print(f"fastload convert: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastload convert: interrupted; no dataset was written", file=sys.stderr)
        return 130
    print(json.dumps(dataclasses.asdict(result)) if args.json else result.summary())
    return 0


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"anon\": true}'")
    return value


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _setup_logging() -> None:
    """Show the convert's info lines and warnings on stderr, unless logging is configured."""
    log = logging.getLogger("fastload.convert")
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("fastload convert: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
