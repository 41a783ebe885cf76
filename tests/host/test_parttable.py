"""The partition table generator against the ESP-IDF binary format, byte for byte where the format is fixed."""

from __future__ import annotations

import hashlib
import struct

import pytest

from edgefleet.board import parttable
from edgefleet.board.boards import available_boards, load_board
from edgefleet.errors import EdgefleetError


@pytest.mark.parametrize("name", [b for b in available_boards()])
def test_round_trip_matches_board(name):
    board = load_board(name)
    data = parttable.generate(board)
    assert len(data) == parttable.TABLE_MAX
    entries = parttable.parse(data)
    assert [e.name for e in entries] == [p.name for p in board.partitions()]
    assert [(e.offset, e.size) for e in entries] == [(p.offset, p.size) for p in board.partitions()]
    assert parttable.matches_board(data, board) == []


def test_documented_layout_bytes():
    """ESP-IDF: <magic AA 50> <type> <subtype> <offset u32 LE> <size u32 LE> <label 16> <flags u32>, MD5 row."""
    data = parttable.generate(load_board("esp32-devkitc"))
    nvs = data[:32]
    assert nvs[:2] == b"\xaa\x50"
    assert nvs[2:4] == b"\x01\x02"  # data / nvs
    assert struct.unpack_from("<II", nvs, 4) == (0x9000, 0x6000)
    assert nvs[12:28] == b"nvs" + b"\x00" * 13
    assert nvs[28:32] == b"\x00" * 4
    factory = data[64:96]
    assert factory[2:4] == b"\x00\x00" and struct.unpack_from("<I", factory, 4)[0] == 0x10000
    vfs, logp = data[96:128], data[128:160]
    assert vfs[2:4] == b"\x01\x81"  # data / fat, as stock MicroPython's vfs
    assert logp[2:4] == b"\x01\x06" and logp[12:15] == b"log"  # data / undefined: our raw flash log
    md5row = data[160:192]
    assert md5row[:16] == b"\xeb\xeb" + b"\xff" * 14
    assert md5row[16:] == hashlib.md5(data[:160]).digest()
    assert data[192:] == b"\xff" * (parttable.TABLE_MAX - 192)


def test_corrupt_table_is_detected():
    board = load_board("esp32-s3")
    data = bytearray(parttable.generate(board))
    data[40] ^= 0x01  # one bit of the phy_init offset
    with pytest.raises(EdgefleetError, match="MD5 mismatch"):
        parttable.parse(bytes(data))
    data = bytearray(parttable.generate(board))
    data[0] = 0x00
    with pytest.raises(EdgefleetError, match="magic"):
        parttable.parse(bytes(data))


def test_differs_from_other_board():
    data = parttable.generate(load_board("esp32-devkitc"))
    diffs = parttable.matches_board(data, load_board("esp32-s3"))
    assert any(d.startswith("factory") for d in diffs) and any(d.startswith("vfs") for d in diffs)


def test_partition_overlapping_table_is_refused(tmp_path):
    import json

    board = load_board("esp32-devkitc")
    data = json.loads(board.path.read_text())
    data["name"] = "bad-layout"
    data["flash"]["partitions"][0]["offset"] = "0x8000"
    p = tmp_path / "bad-layout.json"
    p.write_text(json.dumps(data))
    with pytest.raises(EdgefleetError, match="overlaps the partition table"):
        parttable.generate(load_board(p))


def test_cli_writes_the_table(tmp_path, capsys):
    from edgefleet.cli import main

    out = tmp_path / "table.bin"
    assert main(["parttable", "--board", "esp32-c3", "-o", str(out)]) == 0
    assert parttable.matches_board(out.read_bytes(), load_board("esp32-c3")) == []
    assert "log" in capsys.readouterr().out
