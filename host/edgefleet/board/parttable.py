"""The ESP-IDF partition table binary, generated from a board definition (contract 4) and parsed back.

Why our own: the board file is the one source of the flash layout, and boards whose layout differs from stock
MicroPython (we add a raw `log` partition for the flash log) need the table written at 0x8000 when flashing.
Format (ESP-IDF "Partition Tables", binary form): 32-byte little-endian entries
`<H magic 0x50AA, B type, B subtype, I offset, I size, 16s name, I flags>`, then an MD5 entry
(`0xEB 0xEB`, 14 bytes 0xFF, the MD5 of all entries before it), then 0xFF up to the table's maximum length.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from ..errors import EdgefleetError
from .boards import Board, Partition

ENTRY = struct.Struct("<HBBII16sI")
MAGIC = 0x50AA
MD5_MAGIC = b"\xeb\xeb" + b"\xff" * 14
TABLE_MAX = 0xC00  # ESP-IDF's bootloader reads at most 0xC00 bytes (3 KB) of table
TYPES = {"app": 0x00, "data": 0x01}
SUBTYPES = {
    "app": {"factory": 0x00, "ota_0": 0x10, "ota_1": 0x11, "test": 0x20},
    "data": {"ota": 0x00, "phy": 0x01, "nvs": 0x02, "coredump": 0x03, "nvs_keys": 0x04, "efuse": 0x05,
             "undefined": 0x06, "fat": 0x81, "spiffs": 0x82, "littlefs": 0x83},
}  # fmt: skip


@dataclass(frozen=True)
class Entry:
    name: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0


def entries_for(board: Board) -> list[Entry]:
    out = []
    for p in board.partitions():
        out.append(Entry(p.name, TYPES[p.type], SUBTYPES[p.type][p.subtype], p.offset, p.size))
    return out


def generate(board: Board) -> bytes:
    """The table binary for `board`, padded with 0xFF to TABLE_MAX bytes (what gets written at 0x8000)."""
    table_end = board.partition_table_offset + 0x1000
    body = bytearray()
    for e in entries_for(board):
        if e.offset < table_end:
            raise EdgefleetError(
                f"board {board.name}: partition {e.name} at {e.offset:#x} overlaps the partition table "
                f"({board.partition_table_offset:#x}..{table_end:#x})"
            )
        if e.type == TYPES["app"] and e.offset % 0x10000:
            raise EdgefleetError(f"board {board.name}: app partition {e.name} must be 64 KB aligned, is {e.offset:#x}")
        body += ENTRY.pack(MAGIC, e.type, e.subtype, e.offset, e.size, e.name.encode(), e.flags)
    body += MD5_MAGIC + hashlib.md5(body).digest()
    if len(body) > TABLE_MAX:
        raise EdgefleetError(f"board {board.name}: {len(board.partitions())} partitions do not fit in a table")
    return bytes(body) + b"\xff" * (TABLE_MAX - len(body))


def parse(data: bytes) -> list[Entry]:
    """Entries of a table binary; checks each magic and the MD5 entry, as the bootloader does."""
    entries: list[Entry] = []
    for pos in range(0, min(len(data), TABLE_MAX) - ENTRY.size + 1, ENTRY.size):
        raw = data[pos : pos + ENTRY.size]
        if raw[:16] == MD5_MAGIC:
            if hashlib.md5(data[:pos]).digest() != raw[16:]:
                raise EdgefleetError(f"partition table MD5 mismatch at {pos:#x}: the table is corrupt")
            return entries
        if raw == b"\xff" * ENTRY.size:
            break
        magic, ptype, subtype, offset, size, name, flags = ENTRY.unpack(raw)
        if magic != MAGIC:
            raise EdgefleetError(f"partition table entry at {pos:#x} has magic {magic:#06x}, not {MAGIC:#06x}")
        entries.append(Entry(name.rstrip(b"\x00").decode(), ptype, subtype, offset, size, flags))
    raise EdgefleetError("partition table has no MD5 entry")


def matches_board(data: bytes, board: Board) -> list[str]:
    """Differences between a table binary and the board definition (empty = same layout)."""
    want = {e.name: e for e in entries_for(board)}
    got = {e.name: e for e in parse(data)}
    diffs = [f"missing partition {n}" for n in want if n not in got]
    diffs += [f"extra partition {n}" for n in got if n not in want]
    diffs += [f"{n}: table has {got[n]}, board has {want[n]}" for n in want if n in got and got[n] != want[n]]
    return diffs


def describe(p: Partition) -> str:
    return f"{p.name:10} {p.type}/{p.subtype:9} {p.offset:#09x} {p.size // 1024:6d} KB"
