"""Check a ``.pt2`` archive before ``torch.export.load`` sees it: nothing in it may run code.

``torch.export.load`` is not safe on untrusted files. In torch 2.x it

- unpickles the sample inputs (``data/sample_inputs/<model>.pt``) with ``weights_only=True``
  and, when that fails, again with ``weights_only=False``;
- unpickles weights and constants flagged ``use_pickle`` in ``data/*/<model>_*_config.json``
  with ``weights_only=False``, custom objects with the TorchBind unpickler and opaque objects
  with plain ``pickle.loads``;
- reads older layouts (``data/weights/<model>.pt``, the pre-2.8 zip) through the same fallback;
- loads compiled AOTInductor libraries from ``data/aotinductor/``;
- parses symbolic sizes (``expr_str`` in ``models/<model>.json``) with ``sympy.sympify``, which
  calls ``eval``; and resolves each graph node's ``target`` by walking attributes from ``torch``,
  ``math`` or ``operator`` (``torch.os.system`` resolves), then calls it when the program runs.

:func:`check_pt2` reads the archive with :mod:`zipfile` and refuses, in one line, anything
outside the layout ``torch.export.save`` writes for one model: an unknown member, AOTInductor
code, custom or opaque objects, a pickle that ``torch.load(..., weights_only=True)`` does not
read as tensors, a size expression that is not plain arithmetic on symbols, a graph target that
is not an ``aten`` / ``prims`` operator or a known ``operator`` function. It returns the bytes
it checked, so the caller hands torch exactly those (no second read of a file that could change).
"""

from __future__ import annotations

import ast
import io
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CSRAError

MODEL = "model"  # the one program torch.export.save writes and torch.export.load returns
_TOP = {"archive_format", "archive_version", "byteorder", "version", ".data/version", ".data/serialization_id"}
_FIXED = {
    f"models/{MODEL}.json",
    f"data/weights/{MODEL}_weights_config.json",
    f"data/constants/{MODEL}_constants_config.json",
    f"data/sample_inputs/{MODEL}.pt",
}
_MEMBER_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_TARGET = re.compile(
    r"torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|torch\.sym_(max|min|not|float|int|ite|sqrt|sum)|math\.(ceil|floor|trunc|sqrt)"
)
_OPERATOR_TARGETS = {
    f"_operator.{name}"
    for name in (
        "getitem",
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "neg",
        "pow",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and_",
        "or_",
        "not_",
    )
}
_SYMBOL = re.compile(r"[a-z]{1,4}[0-9]+")
_SYMPY_NAMES = {
    # what torch.export writes in size expressions: sympy's own classes and torch's sympy functions
    "Symbol", "Integer", "Rational", "Float", "Max", "Min", "Mod", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
    "And", "Or", "Not", "Piecewise", "floor", "ceiling", "sqrt", "oo", "zoo", "nan", "pi", "E", "true", "false",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "Add", "Mul", "Pow", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
}  # fmt: skip
_EXPR_NODES = (
    ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword, ast.BinOp, ast.UnaryOp, ast.Compare,
    ast.BoolOp, ast.operator, ast.unaryop, ast.cmpop, ast.boolop,
)  # fmt: skip
MAX_EXPR = 2000


class UnsafeArchive(ValueError):
    """Why an archive was refused (one line)."""


def check_pt2(path: str | Path, param: str = "patched_file") -> bytes:
    """The bytes of ``path`` once they are shown to hold nothing that runs code (else a one-line
    :class:`CSRAError` naming the file)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CSRAError(f"{param} {path}: cannot be read ({exc.strerror or type(exc).__name__})", param=param) from None
    try:
        scan_pt2(data)
    except UnsafeArchive as exc:
        raise CSRAError(
            f"{param} {path}: refused, {exc}; only files written by export_patched (CLI: apply --out FILE.pt2) are read",
            param=param,
        ) from None
    return data


def scan_pt2(data: bytes) -> None:
    """Raise :class:`UnsafeArchive` unless ``data`` is a ``torch.export`` archive of one program
    whose pickled members load weights-only, with plain size expressions and operator targets."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnsafeArchive(f"not a torch.export archive ({exc})") from None
    if len(names) != len(
        set(names)
    ):  # zipfile reads the last of two same-named members, torch's reader may read the first
        raise UnsafeArchive("not a torch.export archive (a member name occurs twice)")
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1 or any("/" not in n for n in names):
        raise UnsafeArchive("not a torch.export archive (members outside one top-level folder)")
    prefix = tops.pop() + "/"
    members = {n[len(prefix) :] for n in names}
    with zf:
        for name in sorted(members):
            _check_name(name)
        if f"models/{MODEL}.json" not in members:
            raise UnsafeArchive(f"not a torch.export archive (no models/{MODEL}.json)")
        read = lambda name: zf.read(prefix + name)  # noqa: E731
        weights = _payload_config(read, members, f"data/weights/{MODEL}_weights_config.json")
        constants = _payload_config(read, members, f"data/constants/{MODEL}_constants_config.json")
        listed = set()
        for where, config in (("data/weights/", weights), ("data/constants/", constants)):
            for fqn, meta in config.items():
                file = meta.get("path_name") if isinstance(meta, dict) else None
                if not isinstance(file, str) or not _MEMBER_NAME.fullmatch(file) or where + file not in members:
                    raise UnsafeArchive(f"{where}: entry {fqn!r} names no member of the archive")
                if where == "data/constants/" and not file.startswith("tensor_"):
                    raise UnsafeArchive(f"constant {fqn!r} is a pickled object ({file}), not a tensor")
                if meta.get("use_pickle"):
                    _weights_only(read(where + file), where + file, torch.Tensor)
                listed.add(where + file)
        for name in members:
            if (
                name.startswith(("data/weights/", "data/constants/"))
                and not name.endswith("_config.json")
                and name not in listed
            ):
                raise UnsafeArchive(f"unexpected member {name}")
        sample = f"data/sample_inputs/{MODEL}.pt"
        if sample in members:
            raw = read(sample)
            if raw:
                _weights_only(raw, sample, (tuple, dict))
        try:
            program = json.loads(read(f"models/{MODEL}.json"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise UnsafeArchive(f"models/{MODEL}.json is not JSON ({exc})") from None
        _check_program(program)


def _check_name(name: str) -> None:
    if name in _TOP or name in _FIXED:
        return
    folder, _, file = name.rpartition("/")
    if folder in ("data/weights", "data/constants") and _MEMBER_NAME.fullmatch(file):
        return
    if folder == "extra" and _MEMBER_NAME.fullmatch(file):
        return  # read as text by torch, parsed as JSON by csra-posthoc
    if name.startswith("data/aotinductor/"):
        raise UnsafeArchive("holds AOTInductor compiled code (data/aotinductor/)")
    raise UnsafeArchive(f"unexpected member {name}")


def _payload_config(read, members: set[str], name: str) -> dict:
    if name not in members:
        raise UnsafeArchive(f"not a torch.export archive (no {name})")
    try:
        config = json.loads(read(name))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnsafeArchive(f"{name} is not JSON ({exc})") from None
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise UnsafeArchive(f"{name} has no 'config' object")
    return entries


def _weights_only(raw: bytes, name: str, kind: type | tuple[type, ...]) -> None:
    """``raw`` must load with ``torch.load(weights_only=True)`` (no global outside torch's allow list)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
        OSError,
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeArchive(f"{name} is not a weights-only pickle ({first[:160]})") from None
    if not isinstance(obj, kind):
        raise UnsafeArchive(f"{name} holds a {type(obj).__name__}, not tensors")


def _check_program(program: Any) -> None:
    """Every size expression plain arithmetic, every node target an operator (walks the whole JSON)."""
    stack = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            expr = item.get("expr_str")
            if expr is not None:
                check_sym_expr(expr)
            if "target" in item and "inputs" in item and "outputs" in item:
                target = item["target"]
                if not isinstance(target, str) or not (_TARGET.fullmatch(target) or target in _OPERATOR_TARGETS):
                    raise UnsafeArchive(f"graph node calls {str(target)[:80]!r}, not an aten / prims operator")
            stack.extend(item.values())


def check_sym_expr(expr: Any) -> None:
    """A size expression is parsed by ``sympy.sympify`` (``eval``): only names, numbers, strings,
    arithmetic and calls of sympy's / torch's size functions pass."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR:
        raise UnsafeArchive("a size expression is not a short string")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise UnsafeArchive(f"size expression {expr[:80]!r} is not an expression") from None
    for node in ast.walk(tree):
        if not isinstance(node, _EXPR_NODES):
            raise UnsafeArchive(f"size expression {expr[:80]!r} uses {type(node).__name__}")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _SYMPY_NAMES):
            raise UnsafeArchive(f"size expression {expr[:80]!r} calls something other than a sympy size function")
        if isinstance(node, ast.Name) and not (node.id in _SYMPY_NAMES or _SYMBOL.fullmatch(node.id)):
            raise UnsafeArchive(f"size expression {expr[:80]!r} names {node.id[:40]!r}")
        if isinstance(node, ast.keyword) and (node.arg is None or node.arg.startswith("_")):
            raise UnsafeArchive(f"size expression {expr[:80]!r} has an unexpected keyword")
        if isinstance(node, ast.Constant):
            value = node.value
            if not isinstance(value, (int, float, str, bool)) or (
                isinstance(value, str) and not _SYMBOL.fullmatch(value)
            ):
                raise UnsafeArchive(f"size expression {expr[:80]!r} has an unexpected constant")
