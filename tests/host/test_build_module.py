"""`edgefleet build-module`: names exactly what is missing, and (with MPY_DIR) builds the C module for x64 and
loads it into the unix port, where it predicts what the MicroPython runner predicts."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet import cli
from edgefleet.errors import EdgefleetError
from edgefleet.model import build_module, parity

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "basicmotions-rf"


def _fake_mpy_dir(tmp_path: Path) -> Path:
    for f in ("py/dynruntime.mk", "tools/mpy_ld.py"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    return tmp_path


def test_missing_micropython_source_is_named(tmp_path, capsys):
    with pytest.raises(EdgefleetError, match="MicroPython source tree not given"):
        build_module.build("sim", None)
    with pytest.raises(EdgefleetError, match=r"lacks py/dynruntime\.mk"):
        build_module.build("sim", str(tmp_path))
    assert cli.main(["build-module", "--board", "sim", "--mpy-dir", str(tmp_path / "nope")]) == 2
    assert "lacks py/dynruntime.mk" in capsys.readouterr().err


def test_missing_cross_toolchain_is_named(tmp_path):
    if shutil.which("xtensa-esp32-elf-gcc"):
        pytest.skip("xtensa-esp32-elf-gcc is installed here, so it cannot be missing")
    with pytest.raises(EdgefleetError, match="cross toolchain for xtensawin missing: xtensa-esp32-elf-gcc") as e:
        build_module.build("esp32-devkitc", str(_fake_mpy_dir(tmp_path)))
    assert "ESP-IDF" in (e.value.hint or "")


def test_missing_emlearn_headers_are_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "emlearn", None)
    with pytest.raises(EdgefleetError, match="emlearn headers missing"):
        build_module.build("sim", str(_fake_mpy_dir(tmp_path)))


@pytest.mark.needs_mpy_dir
@pytest.mark.skipif(not os.environ.get("MPY_DIR"), reason="MPY_DIR not set: no MicroPython source tree to link "
                    "a native .mpy (py/dynruntime.mk, tools/mpy_ld.py); set MPY_DIR to a micropython checkout")  # fmt: skip
def test_x64_module_builds_and_loads_into_unix_port(tmp_path):
    mpy = build_module.build("sim", os.environ["MPY_DIR"], tmp_path / "build")
    assert mpy.is_file() and mpy.stat().st_size > 0
    ts = np.load(MODEL / "testset.npz")
    c = parity.run_node(MODEL / "model.efm", ts["x"], 72, extra_path=[mpy.parent])
    py = parity.run_node(MODEL / "model.efm", ts["x"], 72)
    assert c.backend == "cmodule" and py.backend == "micropython"
    np.testing.assert_array_equal(c.index, py.index)
    np.testing.assert_allclose(c.score, py.score, rtol=1e-6)


@pytest.mark.needs_mpy_dir
@pytest.mark.skipif(not os.environ.get("MPY_DIR"), reason="MPY_DIR not set: no MicroPython source tree to link "
                    "a native .mpy; set MPY_DIR to a micropython checkout")  # fmt: skip
@pytest.mark.skipif(not shutil.which("riscv64-unknown-elf-gcc"), reason="riscv64-unknown-elf-gcc not installed "
                    "(apt-get install gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf)")  # fmt: skip
def test_rv32imc_module_builds_for_esp32_c3(tmp_path):
    """Cross build for the ESP32-C3 (cannot run here: there is no rv32 MicroPython on this machine)."""
    mpy = build_module.build("esp32-c3", os.environ["MPY_DIR"], tmp_path / "build")
    head = mpy.read_bytes()[:4]
    assert head[0] == ord("M") and head[1] == 6, head  # .mpy v6 header


def test_make_gets_our_python_on_its_command_line(tmp_path):
    """dynruntime.mk sets PYTHON itself: only a command-line variable overrides it (an env var does not)."""
    argv = build_module.make_argv("x64", tmp_path, tmp_path, tmp_path / "w", "")
    assert f"PYTHON={sys.executable}" in argv and argv[0] == "make"


@pytest.mark.needs_mpy_dir
@pytest.mark.skipif(not os.environ.get("MPY_DIR"), reason="MPY_DIR not set: no MicroPython source tree to link "
                    "a native .mpy; set MPY_DIR to a micropython checkout")  # fmt: skip
def test_build_ignores_a_foreign_python3_and_leaves_the_source_tree_clean(tmp_path, monkeypatch):
    """A python3 without pyelftools first on PATH (here: one that always fails) must not be what links."""
    decoy = tmp_path / "bin"
    decoy.mkdir()
    (decoy / "python3").write_text("#!/bin/sh\necho decoy python3 >&2\nexit 3\n")
    (decoy / "python3").chmod(0o755)
    monkeypatch.setenv("PATH", f"{decoy}:{os.environ['PATH']}")
    src = ROOT / "firmware" / "cmodule"
    before = sorted(p.name for p in src.iterdir())
    mpy = build_module.build("sim", os.environ["MPY_DIR"], tmp_path / "out")
    assert mpy.read_bytes()[:1] == b"M"
    assert sorted(p.name for p in src.iterdir()) == before
