"""Board definitions (contract 4): load, validate, and answer the questions flash/deploy/build ask.

The JSON schema in boards/board.schema.json is the single definition of the format. This module adds the
checks a schema cannot express (partitions inside the flash and not overlapping, arch matching the chip,
sensors naming buses that exist), and names the offending field in every error.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from ..errors import EdgefleetError
from ..paths import boards_dir

CHIP_ARCH = {
    "esp32": "xtensawin",
    "esp32s3": "xtensawin",
    "esp32c3": "rv32imc",
    "esp32c6": "rv32imc",
    "sim": "x64",
}


def to_int(value: int | str) -> int:
    """Sizes and offsets may be written as hex strings, the way partition tables are usually read."""
    return value if isinstance(value, int) else int(value, 16)


@dataclass(frozen=True)
class Partition:
    name: str
    type: str
    subtype: str
    offset: int
    size: int


@dataclass(frozen=True)
class Board:
    name: str
    path: Path
    data: dict[str, Any]

    @property
    def chip(self) -> str:
        return self.data["chip"]

    @property
    def arch(self) -> str:
        return self.data["arch"]

    @property
    def heap_bytes(self) -> int:
        return self.data["heap_bytes"]

    @property
    def flash_size(self) -> int:
        return to_int(self.data["flash"]["size"])

    @property
    def firmware_offset(self) -> int:
        return to_int(self.data["flash"]["firmware_offset"])

    @property
    def partition_table_offset(self) -> int:
        return to_int(self.data["flash"]["partition_table_offset"])

    @property
    def is_sim(self) -> bool:
        return self.chip == "sim"

    def partitions(self) -> list[Partition]:
        return [
            Partition(p["name"], p["type"], p["subtype"], to_int(p["offset"]), to_int(p["size"]))
            for p in self.data["flash"]["partitions"]
        ]

    def partition(self, name: str) -> Partition:
        for p in self.partitions():
            if p.name == name:
                return p
        raise EdgefleetError(f"board {self.name} has no partition named {name!r}")

    def heapsize_arg(self) -> str:
        """The value for micropython's -X heapsize=, so the unix port gets the board's heap."""
        return str(self.heap_bytes)


@cache
def _schema() -> dict[str, Any]:
    return json.loads((boards_dir() / "board.schema.json").read_text())


def _field(path: Any) -> str:
    parts = [str(p) for p in path]
    return "/".join(parts) if parts else "(top level)"


def _semantic_errors(data: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    if CHIP_ARCH[data["chip"]] != data["arch"]:
        errors.append(f"arch: chip {data['chip']} needs arch {CHIP_ARCH[data['chip']]}, not {data['arch']}")
    flash = data["flash"]
    size = to_int(flash["size"])
    spans = []
    for i, p in enumerate(flash["partitions"]):
        off, psize = to_int(p["offset"]), to_int(p["size"])
        if off % 4096 or psize % 4096:
            errors.append(f"flash/partitions/{i}: offset and size must be multiples of 4096")
        if off + psize > size:
            errors.append(f"flash/partitions/{i}: {p['name']} ends at {off + psize:#x}, past the flash size {size:#x}")
        spans.append((off, off + psize, i, p["name"]))
    spans.sort()
    for (_a0, a1, _ia, an), (b0, _b1, ib, bn) in itertools.pairwise(spans):
        if b0 < a1:
            errors.append(f"flash/partitions/{ib}: {bn} overlaps {an}")
    names = [p["name"] for p in flash["partitions"]]
    if "vfs" not in names:
        errors.append("flash/partitions: a 'vfs' partition for the filesystem is required")
    if len(set(names)) != len(names):
        errors.append("flash/partitions: partition names must be unique")
    buses = data.get("buses", {})
    seen = set()
    for i, s in enumerate(data["sensors"]):
        if s["name"] in seen:
            errors.append(f"sensors/{i}/name: duplicate sensor name {s['name']!r}")
        seen.add(s["name"])
        if "bus" in s and s["bus"] not in buses:
            errors.append(f"sensors/{i}/bus: no bus named {s['bus']!r} in buses")
    inf = data.get("inference")
    if inf and inf["max_model_bytes"] >= data["heap_bytes"]:
        errors.append(
            f"inference/max_model_bytes: {inf['max_model_bytes']} must be below heap_bytes {data['heap_bytes']}"
        )
    return errors


def validate(data: Any, source: str) -> None:
    """Raise EdgefleetError naming every bad field; the first one is enough to fix, all are shown."""
    validator = jsonschema.Draft202012Validator(_schema())
    errs = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    messages = [f"{_field(e.absolute_path)}: {e.message}" for e in errs]
    if not messages:
        messages = _semantic_errors(data)
    if messages:
        raise EdgefleetError(f"invalid board definition {source}:\n  " + "\n  ".join(messages))


BOARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def board_path(name_or_path: str | Path) -> Path:
    """Where a board argument points, without guessing: a `Path`, or a string with a path separator or ending in
    `.json`, is a file (`./sim.json`, `boards/custom.json`, `/abs/board.json`); any other string is a board name,
    boards/<name>.json. Why no guessing: a `sim/` directory in the working directory (`simulate --workdir sim`)
    used to shadow the board named `sim`."""
    if isinstance(name_or_path, Path):
        return name_or_path
    arg = str(name_or_path)
    if "/" in arg or os.sep in arg or (os.altsep and os.altsep in arg) or arg.endswith(".json"):
        return Path(arg)
    if not BOARD_NAME.match(arg):
        raise EdgefleetError(
            f"bad board name {arg!r}",
            hint=f"known boards: {', '.join(available_boards())}; a board file is given as a path ending in .json",
        )
    return boards_dir() / f"{arg}.json"


def load_board(name_or_path: str | Path) -> Board:
    """Load a board by name (boards/<name>.json) or by path (see board_path), validated."""
    path = board_path(name_or_path)
    if not path.is_file():
        known = ", ".join(available_boards())
        if path.parent == boards_dir() and path.suffix == ".json" and not isinstance(name_or_path, Path):
            raise EdgefleetError(f"no board named {path.stem!r}", hint=f"known boards: {known}")
        what = "is not a file" if path.exists() else "does not exist"
        raise EdgefleetError(
            f"board definition file {path} {what}",
            hint=f"a board name is one of: {known}; a board file is a path to a .json file",
        )
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise EdgefleetError(f"cannot read board definition {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise EdgefleetError(f"board definition {path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise EdgefleetError(f"board definition {path} is not valid JSON: line {e.lineno}: {e.msg}") from None
    validate(data, str(path))
    if path.parent == boards_dir() and data["name"] != path.stem:
        raise EdgefleetError(f"invalid board definition {path}:\n  name: {data['name']!r} must match the file name")
    return Board(name=data["name"], path=path, data=data)


def available_boards() -> list[str]:
    return sorted(p.stem for p in boards_dir().glob("*.json") if p.name != "board.schema.json")
