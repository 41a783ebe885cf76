"""pytest plugin: test_*.py files under tests/firmware/ are MicroPython modules, run on the unix port.

Each top-level `test_*` function becomes one pytest item that runs in its own `micropython -X heapsize=...`
process with firmware/ and the test's folder on MICROPYPATH. The function's parameter names are pytest
fixtures resolved on the host (a broker, a flash image path); their values are passed as JSON. A value with
an `mpy_value()` method is converted with it first.

The heap is that of the board under test (--fw-board, default esp32-devkitc; scaled for a 64-bit
interpreter by runtime.unix_heap_bytes), so a firmware test that needs more heap than the board has fails. A module may set HEAPSIZE = <bytes> to test a bigger board,
TIMEOUT = <seconds>, and MARKS = ("slow", ...). These are read with `ast`, the module is never imported
by CPython.

A pass needs the completion marker printed by the runner after the function returned: a crash of the
interpreter, a hang (killed at TIMEOUT) or an exit before the end is a failure with the MicroPython output.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import secrets
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgefleet.board.boards import load_board
from edgefleet.runtime import find_micropython, micropython_env, unix_heap_bytes

RUNNER = Path(__file__).with_name("mpy_runner.py")
DEFAULT_TIMEOUT = 120.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("edgefleet firmware")
    group.addoption(
        "--fw-board",
        default="esp32-devkitc",
        help="board whose heap limits MicroPython firmware tests (default: esp32-devkitc, ~110 KB)",
    )


def _is_firmware_test(path: Path) -> bool:
    return path.name.startswith("test_") and path.suffix == ".py" and "firmware" in path.parent.parts


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if _is_firmware_test(module_path):
        return MicroPythonModule.from_parent(parent, path=module_path)
    return None


def _module_settings(tree: ast.Module) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("HEAPSIZE", "TIMEOUT", "MARKS"):
                try:
                    settings[name] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return settings


def _to_json(value: Any) -> Any:
    if hasattr(value, "mpy_value"):
        return value.mpy_value()
    if isinstance(value, Path):
        return str(value)
    return value


class MicroPythonFailure(Exception):
    pass


class MicroPythonModule(pytest.Module):
    """A module whose `obj` is a synthetic CPython module of wrappers, one per MicroPython test."""

    def _getobj(self) -> types.ModuleType:
        source = self.path.read_text()
        tree = ast.parse(source, filename=str(self.path))
        settings = _module_settings(tree)
        mod = types.ModuleType(self.path.stem)
        mod.__file__ = str(self.path)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
                params = [a.arg for a in node.args.args]
                wrapper = self._make_wrapper(node.name, params, settings, ast.get_docstring(node))
                setattr(mod, node.name, wrapper)
        return mod

    def _make_wrapper(
        self, fname: str, params: list[str], settings: dict[str, Any], doc: str | None
    ) -> Callable[..., None]:
        path = self.path
        config = self.config

        def run(**fixtures: Any) -> None:
            heap = settings.get("HEAPSIZE") or unix_heap_bytes(load_board(config.getoption("fw_board")).heap_bytes)
            timeout = float(settings.get("TIMEOUT", DEFAULT_TIMEOUT))
            run_micropython_test(path, fname, {k: _to_json(v) for k, v in fixtures.items()}, heap, timeout)

        run.__name__ = fname
        run.__doc__ = doc
        run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params]
        )
        for mark in settings.get("MARKS", ()):
            run = getattr(pytest.mark, mark)(run)
        return run


def run_micropython_test(path: Path, fname: str, kwargs: dict[str, Any], heap: int, timeout: float) -> str:
    token = secrets.token_hex(8)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(kwargs, f)
        argfile = f.name
    argv = [find_micropython(), "-X", f"heapsize={heap}", str(RUNNER), path.stem, fname, argfile, token]
    env = micropython_env(extra_path=[path.parent])
    try:
        proc = subprocess.run(
            argv, env=env, cwd=path.parent, capture_output=True, text=True, timeout=timeout, errors="replace"
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"MicroPython test {fname} hung: killed after {timeout:.0f} s\n{out[-4000:]}", pytrace=False)
    finally:
        os.unlink(argfile)
    output = proc.stdout + proc.stderr
    passed = f"EF-PASS-{token}" in proc.stdout and proc.returncode == 0
    if not passed:
        why = (
            f"exit code {proc.returncode}"
            if f"EF-FAIL-{token}" in proc.stdout
            else f"interpreter ended without completing (exit code {proc.returncode})"
        )
        pytest.fail(f"MicroPython test {fname} failed ({why}, heap {heap} bytes):\n{output[-8000:]}", pytrace=False)
    sys.stdout.write(output.replace(f"EF-PASS-{token}\n", ""))
    return output
