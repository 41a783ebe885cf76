"""Firmware modules the host runs too: the files written in the Python subset both runtimes run.

Loading them from firmware/ (rather than keeping a host copy) is what keeps a contract defined once: the
window features (node/features.py) and the node config rules (node/config.py). Firmware modules CPython cannot
run (micropython.const, viper code) give the host their numbers through firmware_constants: the flash log's
geometry and power-cut loss (node/flashlog.py), and through firmware_literal their tables: the channels of each
sensor kind (node/records.py KIND_CHANNELS).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from functools import cache
from types import ModuleType
from typing import Any

from ..errors import EdgefleetError
from ..paths import firmware_dir


@cache
def firmware_module(relpath: str) -> ModuleType:
    """firmware/<relpath> imported under CPython, once per process. Its own `from node.x import ...` find
    firmware/node/x.py (the node's config rules span node/config.py and node/cfgset.py)."""
    _node_package()
    path = firmware_dir() / relpath
    name = "edgefleet_fw_" + relpath.removesuffix(".py").replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _node_package() -> None:
    """`node` as a namespace over firmware/node/ for the firmware modules loaded here; never replaces an
    existing `node` module."""
    if "node" in sys.modules:
        return
    pkg = ModuleType("node")
    pkg.__path__ = [str(firmware_dir() / "node")]
    sys.modules["node"] = pkg


@cache
def firmware_constants(relpath: str) -> dict[str, int]:
    """firmware/<relpath>'s module-level integer constants (`NAME = const(N)` or `NAME = N`, N a literal or
    literal arithmetic), read with ast, never executed: for firmware modules CPython cannot import."""
    path = firmware_dir() / relpath
    out: dict[str, int] = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        value = node.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "const":
            value = value.args[0] if len(value.args) == 1 else value
        try:
            out[node.targets[0].id] = _int_expr(value, out)
        except ValueError:  # not an integer constant (a string, a table, a buffer): not one of ours
            continue
    return out


@cache
def firmware_literal(relpath: str, name: str) -> Any:
    """firmware/<relpath>'s module-level `NAME = <literal>` (a table of strings, numbers and tuples), read with
    ast.literal_eval, never executed: for firmware modules CPython cannot import (viper code)."""
    path = firmware_dir() / relpath
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise EdgefleetError(f"firmware/{relpath} defines no {name}", hint="the firmware and the host are out of step")


def kind_channels() -> dict[str, tuple[str, ...]]:
    """Channel names of each sensor kind, as the node decodes its records (docs/sensors.md)."""
    return firmware_literal("node/records.py", "KIND_CHANNELS")


_OPS = {ast.Add: int.__add__, ast.Sub: int.__sub__, ast.Mult: int.__mul__, ast.FloorDiv: int.__floordiv__,
        ast.Mod: int.__mod__, ast.LShift: int.__lshift__, ast.RShift: int.__rshift__, ast.BitOr: int.__or__,
        ast.BitAnd: int.__and__}  # fmt: skip


def _int_expr(node: ast.expr, known: dict[str, int]) -> int:
    """An integer literal, a constant defined above it, or arithmetic on those; ValueError for anything else."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name) and node.id in known:
        return known[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_int_expr(node.operand, known)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_int_expr(node.left, known), _int_expr(node.right, known))
    raise ValueError("not an integer constant")


def firmware_constant(relpath: str, name: str) -> int:
    """One integer constant of a firmware module (firmware_constants), or EdgefleetError naming what is missing."""
    consts = firmware_constants(relpath)
    if name not in consts:
        raise EdgefleetError(f"firmware/{relpath} defines no integer constant {name}")
    return consts[name]
