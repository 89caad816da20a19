"""``fastload/_core.pyi`` describes the built ``fastload._core``.

nanobind's stub generator reads the module's own signatures; its stub and the committed one are
parsed and compared declaration by declaration: the same public names, and for each function
the same parameters (names, order, kinds, defaults) and return, with compatible types. The
committed stub may say more than the binding does (a buffer type where the binding takes any
``object``, an element type for a bare ``Sequence``), never something else: an array's dtype
must match exactly. Docstrings and the values of constants are not compared (``core_has_cuda``
depends on the build), nor is the spelling of a type (``numpy.uint64`` / ``np.uint64``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.childenv import ROOT, child_env

STUB = ROOT / "fastload" / "_core.pyi"
HOW_TO_FIX = (
    "See what the module has with `python -m nanobind.stubgen -m fastload._core -o "
    "/tmp/_core.pyi` and bring the new or changed declarations into fastload/_core.pyi, keeping "
    "its buffer types (_Buffer / _OutBuffer), npt.NDArray[np.<dtype>] for arrays "
    "and docstrings that state each function's contract (CONTRIBUTING.md: 'The stub of the "
    "compiled core')."
)


# ----------------------------------------------------------------------------- the comparison


def _dtype_in(meta: ast.expr) -> str | None:
    """The ``dtype='uint64'`` that some nanobind versions put in ``Annotated``'s metadata."""
    if isinstance(meta, ast.Call):
        for kw in meta.keywords:
            if kw.arg == "dtype" and isinstance(kw.value, ast.Constant):
                return str(kw.value.value)
    return None


def canonical(node: ast.expr | None) -> str:
    """A type annotation without spelling differences: module prefixes dropped; nanobind's
    ``Annotated[NDArray[numpy.uint64], dict(...)]`` (or ``Annotated[ArrayLike,
    dict(dtype='uint64', ...)]``) and ``npt.NDArray[np.uint64]`` are all ``ndarray[uint64]``."""
    if node is None:
        return "?"
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript):
        base = canonical(node.value)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Annotated":
            dtype = next(filter(None, map(_dtype_in, args[1:])), None)
            return f"ndarray[{dtype}]" if dtype else canonical(args[0])
        if base in ("NDArray", "ArrayLike"):
            return f"ndarray[{canonical(args[-1])}]"
        return f"{base}[{', '.join(canonical(a) for a in args)}]"
    return ast.unparse(node)


def compatible(stub: str, module: str) -> bool:
    """Whether the committed stub's type may stand for the type the module declares."""
    if stub == module or module == "object":  # the binding checks what it takes at run time
        return True
    if module.endswith(" | None") and stub.endswith(" | None"):  # an optional one, the same
        return compatible(stub[: -len(" | None")], module[: -len(" | None")])
    return module == "Sequence" and stub.startswith("Sequence[")


def parameters(fn: ast.FunctionDef) -> list[tuple[str, str, str | None]]:
    """(name as written in a signature, type, default) of each parameter, in order: ``/`` and
    ``*`` appear as entries of their own, as in the signature."""
    a = fn.args
    positional = a.posonlyargs + a.args
    first_default = len(positional) - len(a.defaults)
    out: list[tuple[str, ast.expr | None, ast.expr | None]] = []
    for i, p in enumerate(positional):
        default = a.defaults[i - first_default] if i >= first_default else None
        out.append((p.arg, p.annotation, default))
        if i + 1 == len(a.posonlyargs):
            out.append(("/", None, None))
    if a.vararg:
        out.append(("*" + a.vararg.arg, a.vararg.annotation, None))
    elif a.kwonlyargs:
        out.append(("*", None, None))
    out += [(p.arg, p.annotation, d) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        out.append(("**" + a.kwarg.arg, a.kwarg.annotation, None))
    return [(n, canonical(t), None if d is None else ast.unparse(d)) for n, t, d in out]


def declarations(source: str) -> dict[str, list[ast.stmt]]:
    """Public top-level declarations by name (a list: overloads repeat a name)."""
    found: dict[str, list[ast.stmt]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        else:
            continue  # imports, docstrings
        if not name.startswith("_"):
            found.setdefault(name, []).append(node)
    return found


def compare_function(name: str, stub: ast.FunctionDef, module: ast.FunctionDef) -> list[str]:
    ours, theirs = parameters(stub), parameters(module)
    names = [p[0] for p in ours], [p[0] for p in theirs]
    if names[0] != names[1]:
        return [f"{name}({', '.join(names[0])}) in the stub, ({', '.join(names[1])}) in the module"]
    problems = []
    for (param, s_type, s_default), (_, m_type, m_default) in zip(ours, theirs):
        if not compatible(s_type, m_type):
            problems.append(f"{name}({param}): {s_type} in the stub, {m_type} in the module")
        if s_default != m_default:
            problems.append(
                f"{name}({param}): default {s_default} in the stub, {m_default} in the module"
            )
    s_ret, m_ret = canonical(stub.returns), canonical(module.returns)
    if not compatible(s_ret, m_ret):
        problems.append(f"{name}: returns {s_ret} in the stub, {m_ret} in the module")
    return problems


def compare(stub_source: str, module_source: str) -> list[str]:
    """What the committed stub gets wrong about the module, one line per difference."""
    stub, module = declarations(stub_source), declarations(module_source)
    problems = [f"{n}: in the module, missing from the stub" for n in module if n not in stub]
    problems += [f"{n}: in the stub, not in the module" for n in stub if n not in module]
    for name in module.keys() & stub.keys():
        ours, theirs = stub[name], module[name]
        kinds = [type(n).__name__ for n in ours], [type(n).__name__ for n in theirs]
        if kinds[0] != kinds[1]:  # also a different number of overloads
            problems.append(f"{name}: {kinds[0]} in the stub, {kinds[1]} in the module")
            continue
        for s, m in zip(ours, theirs):
            if isinstance(s, ast.FunctionDef) and isinstance(m, ast.FunctionDef):
                problems += compare_function(name, s, m)
            elif isinstance(s, ast.AnnAssign) and isinstance(m, ast.AnnAssign):
                s_type, m_type = canonical(s.annotation), canonical(m.annotation)
                if not compatible(s_type, m_type):
                    problems.append(f"{name}: {s_type} in the stub, {m_type} in the module")
            elif isinstance(s, ast.ClassDef) and isinstance(m, ast.ClassDef):
                problems += compare_class(name, s, m)
            elif ast.dump(s) != ast.dump(m):
                problems.append(f"{name}: differs from the generated one")
    return sorted(problems)


def compare_class(name: str, stub: ast.ClassDef, module: ast.ClassDef) -> list[str]:
    """A class's methods (``__init__`` and the public ones), each as a function."""

    def methods(node: ast.ClassDef) -> dict[str, ast.FunctionDef]:
        return {
            f.name: f
            for f in node.body
            if isinstance(f, ast.FunctionDef) and (f.name == "__init__" or f.name[0] != "_")
        }

    ours, theirs = methods(stub), methods(module)
    problems = [f"{name}.{n}: in the module, missing from the stub" for n in theirs.keys() - ours]
    problems += [f"{name}.{n}: in the stub, not in the module" for n in ours.keys() - theirs]
    for n in ours.keys() & theirs.keys():
        problems += compare_function(f"{name}.{n}", ours[n], theirs[n])
    return problems


# ----------------------------------------------------------------------------- the real stub


def generated_stub(tmp_path: Path) -> str:
    out = tmp_path / "_core.pyi"
    done = subprocess.run(
        [sys.executable, "-m", "nanobind.stubgen", "-m", "fastload._core", "-o", str(out)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert done.returncode == 0, f"nanobind's stubgen failed:\n{done.stdout}{done.stderr}"
    return out.read_text()


def test_the_committed_stub_matches_the_built_module(tmp_path):
    generated = generated_stub(tmp_path)
    assert declarations(generated), generated  # the module was read
    problems = compare(STUB.read_text(), generated)
    assert not problems, (
        "fastload/_core.pyi does not match the built fastload._core:\n  "
        + "\n  ".join(problems)
        + "\n"
        + HOW_TO_FIX
    )


# ----------------------------------------------------------------------------- the check itself

# What nanobind's stubgen writes (versions spell arrays differently), and a curated stub of the
# same functions, as fastload/_core.pyi is.
MODULE = '''
from collections.abc import Sequence
from typing import Annotated
import numpy
from numpy.typing import ArrayLike, NDArray

def digest(data: object, seed: int = 0) -> int:
    """XXH64."""

def gather(sources: Sequence, index: Annotated[NDArray[numpy.uint32], dict(shape=(None,),
    order='C', device='cpu', writable=False)], out: object) -> None: ...

def permute(n: int, positions: Annotated[ArrayLike, dict(dtype='uint64', shape=(None,))]
    ) -> Annotated[NDArray[numpy.uint64], dict(shape=(None,))]: ...

has_cuda: bool = True

class Table:
    """Records."""

    def __init__(self, starts: Annotated[NDArray[numpy.int64], dict(shape=(None,), order='C',
        device='cpu', writable=False)]) -> None: ...

    def add(self, blocks: object, size: int | None) -> None: ...
'''

CURATED = '''
from collections.abc import Sequence
import numpy as np
import numpy.typing as npt
from _typeshed import ReadableBuffer, WriteableBuffer

has_cuda: bool
"""Whether CUDA was compiled in."""

def digest(data: ReadableBuffer, seed: int = 0) -> int:
    """XXH64 of ``data``."""

def gather(
    sources: Sequence[ReadableBuffer], index: npt.NDArray[np.uint32], out: WriteableBuffer
) -> None: ...
def permute(n: int, positions: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]: ...
def _helper() -> None: ...

class Table:
    """A dataset's records."""

    def __init__(self, starts: npt.NDArray[np.int64]) -> None: ...
    def add(self, blocks: ReadableBuffer, size: int | None) -> None: ...
    def _private(self) -> None: ...
'''


def test_a_curated_stub_of_the_same_functions_passes():
    assert compare(CURATED, MODULE) == []
    assert compare(MODULE, MODULE) == []  # nanobind's own stub, committed as it is


# (a change to the curated stub, what the check says of it)
DRIFTS = [
    (
        ("def digest(", "def hash("),
        ["digest: in the module, missing from the stub", "hash: in the stub, not in the module"],
    ),
    (("def _helper", "def helper"), ["helper: in the stub, not in the module"]),
    (("has_cuda: bool", "has_cuda: int"), ["has_cuda: int in the stub, bool in the module"]),
    (
        ("has_cuda: bool", "def has_cuda() -> bool: ..."),
        ["has_cuda: ['FunctionDef'] in the stub, ['AnnAssign'] in the module"],
    ),
    (("int = 0)", "int = 1)"), ["digest(seed): default 1 in the stub, 0 in the module"]),
    (("(data: R", "(buf: R"), ["digest(buf, seed) in the stub, (data, seed) in the module"]),
    (
        ("(data: R", "(*, data: R"),
        ["digest(*, data, seed) in the stub, (data, seed) in the module"],
    ),
    (
        ("int = 0)", "int = 0, /)"),
        ["digest(data, seed, /) in the stub, (data, seed) in the module"],
    ),
    (
        ("Sequence[ReadableBuffer]", "list[ReadableBuffer]"),
        ["gather(sources): list[ReadableBuffer] in the stub, Sequence in the module"],
    ),
    (
        ("np.uint32]", "np.uint64]"),
        ["gather(index): ndarray[uint64] in the stub, ndarray[uint32] in the module"],
    ),
    (
        ("positions: npt.NDArray[np.uint64]", "positions: npt.NDArray[np.int64]"),
        ["permute(positions): ndarray[int64] in the stub, ndarray[uint64] in the module"],
    ),
    (
        ("-> npt.NDArray[np.uint64]", "-> list[int]"),
        ["permute: returns list[int] in the stub, ndarray[uint64] in the module"],
    ),
    (
        ("def add(self", "def put(self"),
        [
            "Table.add: in the module, missing from the stub",
            "Table.put: in the stub, not in the module",
        ],
    ),
    (
        ("size: int | None", "size: int"),
        ["Table.add(size): int in the stub, int | None in the module"],
    ),
    (
        ("starts: npt.NDArray[np.int64]", "starts: npt.NDArray[np.uint64]"),
        ["Table.__init__(starts): ndarray[uint64] in the stub, ndarray[int64] in the module"],
    ),
    (
        ("class Table:", "class Tables:"),
        ["Table: in the module, missing from the stub", "Tables: in the stub, not in the module"],
    ),
]


@pytest.mark.parametrize("change,problems", DRIFTS)
def test_each_kind_of_drift_is_reported(change, problems):
    old, new = change
    assert CURATED.count(old) == 1, old
    assert compare(CURATED.replace(old, new), MODULE) == problems
