"""What a Hugging Face dataset says about itself, and where its files are.

- Features: the ``huggingface`` key of a Parquet/Arrow schema's metadata (``{"info":
  {"features": ...}}``, what ``datasets`` writes into every file), else the ``features`` of a
  ``dataset_info.json`` beside the data. Both are untrusted input: anything that does not
  parse as features is ignored, and the columns are typed from Arrow alone.
- Folders written by ``datasets.save_to_disk``: a ``Dataset`` folder holds ``state.json``
  (its Arrow stream files, in order), ``dataset_info.json`` and the files; a ``DatasetDict``
  folder holds ``dataset_dict.json`` (its splits) and one such folder per split.
- ``load_dataset``-style folders of data files: a file's split is named by its path, as the
  Hub names them (``data/train-00000-of-00004.parquet``, ``test/0.parquet``,
  ``validation.parquet``); ``split=`` picks one, and a folder of several needs it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..errors import ConvertError, FastloadError
from ..io.inputs import InputFile, Inputs

__all__ = ["Layout", "resolve_layout", "schema_features", "split_of", "canonical_split"]

# Split names and the words that name them in file paths (as the Hub's data-file patterns).
_SPLIT_WORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_WORD_SPLIT = {w: name for name, words in _SPLIT_WORDS.items() for w in words}
_SHARDED_NAME = re.compile(r"^(?P<split>[A-Za-z][\w.]*?)-\d{5}-of-\d{5}")
_WORD_RE = re.compile(r"[-._ 0-9/]+")


@dataclass(frozen=True)
class Layout:
    """The data files to convert, the directory relative paths inside them are resolved
    against (``base``), the features of a ``dataset_info.json`` (or None) and the split."""

    files: list[InputFile]
    base: str
    info_features: dict[str, Any] | None
    split: str | None


def schema_features(schema: pa.Schema) -> dict[str, Any] | None:
    """The Hugging Face features in an Arrow schema's metadata, or None."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        features = json.loads(raw).get("info", {}).get("features")
    except (ValueError, AttributeError, RecursionError):
        return None
    return features if isinstance(features, dict) else None


def canonical_split(name: str) -> str:
    """``"val"`` -> ``"validation"``; a name that is no synonym stays itself."""
    return _WORD_SPLIT.get(name.lower(), name)


def split_of(parts: list[str]) -> str | None:
    """The split a data file's path (components below the dataset's root) names, or None."""
    sharded = _SHARDED_NAME.match(parts[-1])
    if sharded:
        return canonical_split(sharded.group("split"))
    found = {_WORD_SPLIT[w] for w in _WORD_RE.split("/".join(parts).lower()) if w in _WORD_SPLIT}
    return found.pop() if len(found) == 1 else None


def resolve_layout(inputs: Inputs, split: str | None, suffixes: tuple[str, ...]) -> Layout:
    """Where the data of SRC (for ``split``) is; see the module docstring."""
    kind = inputs.kind()
    if kind == "dir":
        root = inputs.src
        splits_file = inputs.join(root, "dataset_dict.json")
        if inputs.kind(splits_file) == "file":
            return _dataset_dict(inputs, root, splits_file, split)
        if inputs.kind(inputs.join(root, "state.json")) == "file":
            if split is not None:
                raise ConvertError(
                    f"{root}: a datasets.save_to_disk folder of one split; it has no "
                    f"split {split!r} to choose (leave out --split)"
                )
            return _saved_dataset(inputs, root, None)
        base = root
    else:
        base = inputs.base()
    files = inputs.files(suffixes, what="Parquet/Arrow")
    return Layout(_of_split(inputs, files, base, split), base, None, split)


def _of_split(
    inputs: Inputs, files: list[InputFile], base: str, split: str | None
) -> list[InputFile]:
    """The files of ``split``; with none asked for, every file unless they name several
    splits (then converting all of them together is a mistake: ConvertError)."""
    splits = [split_of(inputs.relative(f.path, base)) for f in files]
    named = sorted({s for s in splits if s is not None})
    if split is None:
        if len(named) > 1:
            raise ConvertError(
                f"{inputs.src}: holds the splits {', '.join(named)}; choose one with "
                "--split (split=...)"
            )
        return files
    wanted = canonical_split(split)
    chosen = [f for f, s in zip(files, splits) if s == wanted]
    if not chosen:
        found = f"the splits {', '.join(named)}" if named else "no files named by split"
        raise ConvertError(f"{inputs.src}: no files of split {split!r}; it holds {found}")
    return chosen


def _dataset_dict(inputs: Inputs, root: str, splits_file: str, split: str | None) -> Layout:
    doc = _read_json(inputs, splits_file)
    splits = doc.get("splits") if isinstance(doc, dict) else None
    if not isinstance(splits, list) or not all(_plain_name(s) for s in splits) or not splits:
        raise ConvertError(f"{splits_file}: no list of split names in it")
    if split is None:
        if len(splits) > 1:
            raise ConvertError(
                f"{root}: a datasets.DatasetDict of the splits {', '.join(splits)}; "
                "choose one with --split (split=...)"
            )
        chosen = splits[0]
    else:
        matching = [s for s in splits if s == split or canonical_split(s) == canonical_split(split)]
        if not matching:
            raise ConvertError(f"{root}: no split {split!r}; it has {', '.join(splits)}")
        chosen = matching[0]
    return _saved_dataset(inputs, inputs.join(root, chosen), chosen)


def _saved_dataset(inputs: Inputs, folder: str, split: str | None) -> Layout:
    """The Arrow files of a ``save_to_disk`` Dataset folder, in ``state.json``'s order."""
    state_path = inputs.join(folder, "state.json")
    state = _read_json(inputs, state_path)
    entries = state.get("_data_files") if isinstance(state, dict) else None
    names = [e.get("filename") for e in entries or [] if isinstance(e, dict)]
    if not names or not all(_plain_name(n) for n in names) or len(names) != len(entries or []):
        raise ConvertError(f"{state_path}: no list of data files (_data_files) in it")
    files = [InputFile(p, inputs.size(p)) for p in (inputs.join(folder, str(n)) for n in names)]
    info_path = inputs.join(folder, "dataset_info.json")
    info = _read_json(inputs, info_path) if inputs.kind(info_path) == "file" else {}
    features = info.get("features") if isinstance(info, dict) else None
    return Layout(files, folder, features if isinstance(features, dict) else None, split)


def _plain_name(name: Any) -> bool:
    """A file or folder name inside the dataset: no separator, not '.' or '..'."""
    return isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name


def _read_json(inputs: Inputs, path: str) -> Any:
    try:
        return json.loads(inputs.cat(path))
    except (ValueError, RecursionError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None
    except (OSError, FastloadError) as e:
        raise ConvertError(f"{path}: cannot be read ({e})") from None
