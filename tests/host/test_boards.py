"""Board definitions: all shipped boards validate, broken ones get a message naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.board.boards import available_boards, load_board
from edgefleet.cli import main
from edgefleet.errors import EdgefleetError
from edgefleet.paths import boards_dir

ROOT = Path(__file__).resolve().parents[2]


def test_all_four_boards_validate() -> None:
    assert set(available_boards()) >= {"esp32-devkitc", "esp32-s3", "esp32-c3", "sim"}
    devkit = load_board("esp32-devkitc")
    assert (devkit.chip, devkit.arch, devkit.flash_size, devkit.firmware_offset) == (
        "esp32",
        "xtensawin",
        4 << 20,
        0x1000,
    )
    assert 100_000 <= devkit.heap_bytes <= 120_000
    assert load_board("esp32-c3").arch == "rv32imc"
    assert load_board("esp32-s3").firmware_offset == 0
    assert load_board("sim").arch == "x64"


def _broken(tmp_path: Path, mutate) -> Path:
    data = json.loads((ROOT / "boards" / "esp32-devkitc.json").read_text())
    mutate(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(heap_bytes="lots"), "heap_bytes"),
        (lambda d: d.update(arch="rv32imc"), "arch: chip esp32 needs arch xtensawin"),
        (lambda d: d["flash"]["partitions"][3].update(size="0x300000"), "flash/partitions/3: vfs ends at"),
        (lambda d: d["flash"]["partitions"][4].update(offset="0x370000"), "flash/partitions/4: log overlaps vfs"),
        (lambda d: d["sensors"][0].update(bus="i2c7"), "sensors/0/bus: no bus named 'i2c7'"),
        (lambda d: d["sensors"][2].pop("calibration"), "sensors/2"),
        (lambda d: d.pop("chip"), "'chip' is a required property"),
    ],
)
def test_broken_board_names_the_field(tmp_path: Path, mutate, expected: str) -> None:
    with pytest.raises(EdgefleetError) as err:
        load_board(_broken(tmp_path, mutate))
    assert expected in str(err.value)


def test_cli_reports_bad_board_without_traceback(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    assert main(["boards", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "Traceback" not in err
    assert main(["boards", "validate", "no-such-board"]) == 2
    assert "known boards: esp32-c3" in capsys.readouterr().err


def test_cli_validates_all_boards(capsys) -> None:
    assert main(["boards", "validate"]) == 0
    assert capsys.readouterr().out.count(": ok") == len(available_boards())


def test_a_board_name_is_never_shadowed_by_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    """`simulate --workdir sim` creates ./sim; a file named like a board must not be taken for it either."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sim").mkdir()
    (tmp_path / "esp32-c3").write_text("not a board")
    assert load_board("sim").name == "sim" and load_board("sim").path == boards_dir() / "sim.json"
    assert load_board("esp32-c3").arch == "rv32imc"


def test_a_board_path_has_a_separator_or_ends_in_json(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = json.loads((boards_dir() / "sim.json").read_text())
    data["name"] = "my-sim"
    (tmp_path / "custom.json").write_text(json.dumps(data))
    assert load_board("custom.json").name == "my-sim"  # ends in .json: a file in the working directory
    assert load_board("./custom.json").name == "my-sim"
    assert load_board(str(tmp_path / "custom.json")).name == "my-sim"
    with pytest.raises(EdgefleetError, match="no board named 'custom'"):
        load_board("custom")  # a name: boards/custom.json, which does not exist
    with pytest.raises(EdgefleetError, match=r"sim\.json does not exist"):
        load_board("sim.json")  # a path: there is no ./sim.json, and we do not guess boards/sim.json
    (tmp_path / "sim").mkdir()
    with pytest.raises(EdgefleetError, match="is not a file"):
        load_board("./sim")


def test_cli_board_name_with_a_same_named_directory(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sim").mkdir()
    assert main(["boards", "validate", "sim"]) == 0, capsys.readouterr().err
    assert main(["boards", "validate", "sim/"]) == 2
    err = capsys.readouterr().err
    assert "is not a file" in err and "Traceback" not in err
