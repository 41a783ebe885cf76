"""`edgefleet flash`: the checks before esptool writes anything, the write plan, and the whole flash end to end:
the real esptool (--no-stub) against the virtual ESP32 ROM on a pty."""

from __future__ import annotations

import struct

import pytest

from edgefleet.board import parttable
from edgefleet.board.boards import load_board
from edgefleet.board.flash import IMAGE_CHIP_ID, check_image, plan_flash
from edgefleet.board.vboard.rom import FLASH_BEGIN, FLASH_DATA, SPI_FLASH_MD5, VirtualRom
from edgefleet.cli import main


def esp_image(chip: str, size: int = 0x9000) -> bytes:
    """Bytes laid out like an ESP image: magic, segment count, flash mode/size, entry, extended header."""
    head = struct.pack("<BBBBI", 0xE9, 3, 2, 0x20, 0x40080000)
    ext = struct.pack("<B3sHBHH4sB", 0xEE, b"\x00" * 3, IMAGE_CHIP_ID[chip], 0, 0, 0xFFFF, b"\x00" * 4, 1)
    return (head + ext).ljust(size, b"\xff")


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_missing_firmware(capsys, tmp_path):
    code, err = run_cli(capsys, "flash", "--board", "esp32-devkitc", "--port", "/dev/ttyUSB9",
                        "--firmware", str(tmp_path / "nope.bin"))  # fmt: skip
    assert code == 2 and "firmware file not found" in err
    assert "micropython.org/download/ESP32_GENERIC/" in err and "Traceback" not in err


def test_not_an_esp_image(capsys, tmp_path):
    f = tmp_path / "fw.elf"
    f.write_bytes(b"\x7fELF" + b"\x00" * 100)
    code, err = run_cli(capsys, "flash", "--board", "esp32-devkitc", "--port", "/dev/ttyUSB9", "--firmware", str(f))
    assert code == 2 and "not an ESP32 firmware image (first byte 7f, expected e9)" in err


def test_image_for_another_chip(capsys, tmp_path):
    f = tmp_path / "s3.bin"
    f.write_bytes(esp_image("esp32s3"))
    code, err = run_cli(capsys, "flash", "--board", "esp32-devkitc", "--port", "/dev/ttyUSB9", "--firmware", str(f))
    assert code == 2 and "built for esp32s3, but board esp32-devkitc is an esp32" in err
    assert "ESP32_GENERIC" in err


def test_no_such_port(capsys, tmp_path):
    f = tmp_path / "fw.bin"
    f.write_bytes(esp_image("esp32"))
    code, err = run_cli(capsys, "flash", "--board", "esp32-devkitc", "--port", "/dev/ttyUSB9", "--firmware", str(f))
    assert code == 2 and "no such serial port: /dev/ttyUSB9" in err


def test_sim_board_is_not_flashed(capsys):
    code, err = run_cli(capsys, "flash", "--board", "sim", "--port", "/dev/ttyUSB9")
    assert code == 2 and "no chip to flash" in err and "board virtual" in err


def test_image_too_big_for_the_flash(tmp_path):
    f = tmp_path / "big.bin"
    f.write_bytes(esp_image("esp32c3", 0x400001))
    from edgefleet.errors import EdgefleetError

    with pytest.raises(EdgefleetError, match="does not fit"):
        check_image(f, load_board("esp32-c3"))


def test_merged_image_gets_the_table_patched_in():
    board = load_board("esp32-devkitc")
    image = esp_image("esp32", 0x20000)
    plan = plan_flash(board, image)
    assert len(plan.regions) == 1
    off, data = plan.regions[0]
    rel = board.partition_table_offset - board.firmware_offset
    assert off == 0x1000 and len(data) == len(image)
    assert data[rel : rel + parttable.TABLE_MAX] == plan.table
    assert parttable.matches_board(data[rel : rel + 0x1000], board) == []
    assert data[:rel] == image[:rel] and data[rel + parttable.TABLE_MAX :] == image[rel + parttable.TABLE_MAX :]


def test_short_image_gets_a_separate_table_write():
    board = load_board("esp32-s3")
    plan = plan_flash(board, esp_image("esp32s3", 0x4000))
    assert [off for off, _ in plan.regions] == [0x0, 0x8000]
    assert parttable.parse(plan.regions[1][1])[-1].name == "log"


# --- end to end with the virtual ROM ---
@pytest.fixture
def rom(tmp_path):
    r = VirtualRom(tmp_path / "flash.img", 0x400000, "esp32")
    r.start()
    yield r
    r.stop()


def flash_cli(capsys, rom, board: str, firmware, *extra: str) -> tuple[int, str, str]:
    code = main(["-q", "flash", "--board", board, "--port", rom.path, "--firmware", str(firmware), "--no-stub",
                 "--before", "no-reset", "--baud", "115200", *extra])  # fmt: skip
    out = capsys.readouterr()
    return code, out.out, out.err


def test_flash_writes_firmware_and_partition_table(rom, tmp_path, capsys):
    board = load_board("esp32-devkitc")
    fw = tmp_path / "ESP32_GENERIC.bin"
    image = esp_image("esp32", 0x30000)
    fw.write_bytes(image)
    code, out, err = flash_cli(capsys, rom, "esp32-devkitc", fw)
    assert code == 0, err
    assert "flashed MicroPython to the esp32" in out and "verified" in out
    flash = rom.image.read_bytes()
    ((off, expected),) = plan_flash(board, image).regions
    assert flash[off : off + len(expected)] == expected
    table = flash[board.partition_table_offset : board.partition_table_offset + 0x1000]
    assert parttable.matches_board(table, board) == []
    assert flash[:off] == b"\xff" * off and flash[off + len(expected) : off + len(expected) + 4096] == b"\xff" * 4096
    assert {FLASH_BEGIN, FLASH_DATA, SPI_FLASH_MD5} <= set(rom.commands)


def test_erase_clears_the_whole_flash(rom, tmp_path, capsys):
    with open(rom.image, "r+b") as f:
        f.seek(0x380000)
        f.write(b"\x00" * 4096)  # old flash-log data in the log partition
    fw = tmp_path / "fw.bin"
    fw.write_bytes(esp_image("esp32", 0x10000))
    code, _, err = flash_cli(capsys, rom, "esp32-devkitc", fw, "--erase")
    assert code == 0, err
    assert rom.image.read_bytes()[0x380000:0x381000] == b"\xff" * 4096


def test_wrong_chip_is_refused_before_writing(rom, tmp_path, capsys):
    fw = tmp_path / "s3.bin"
    fw.write_bytes(esp_image("esp32s3", 0x10000))
    code, _, err = flash_cli(capsys, rom, "esp32-s3", fw)
    assert code == 2
    assert "the chip on" in err and "is an esp32, but board esp32-s3 is an esp32s3" in err
    assert FLASH_BEGIN not in rom.commands
    assert rom.image.read_bytes() == b"\xff" * 0x400000


def test_silent_port_is_a_clear_error(tmp_path, capsys):
    import os
    import tty

    master, slave = os.openpty()  # a serial line with nothing on the other end
    tty.setraw(slave)
    fw = tmp_path / "fw.bin"
    fw.write_bytes(esp_image("esp32", 0x10000))
    try:
        code = main(["-q", "flash", "--board", "esp32-devkitc", "--port", os.ttyname(slave), "--firmware", str(fw),
                     "--no-stub", "--before", "no-reset"])  # fmt: skip
    finally:
        os.close(slave)
        os.close(master)
    err = capsys.readouterr().err
    assert code == 2 and "no ESP chip answered" in err and "BOOT" in err


def test_flash_keeps_the_filesystem_unless_erase(tmp_path, capsys):
    """One flash image, two fakes: files put on the virtual board survive a flash, and --erase clears them."""
    import subprocess
    import sys

    from edgefleet.board.vboard.board import VirtualBoard

    image = tmp_path / "flash.img"
    sim = load_board("sim")

    def board_ls() -> str:
        vb = VirtualBoard(sim, image)
        vb.start()
        try:
            proc = subprocess.run([sys.executable, "-m", "mpremote", "connect", vb.path, "fs", "ls", ":"],
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            return proc.stdout
        finally:
            vb.stop()

    vb = VirtualBoard(sim, image)
    vb.start()
    try:
        (tmp_path / "data.txt").write_text("node data")
        subprocess.run([sys.executable, "-m", "mpremote", "connect", vb.path, "fs", "cp", str(tmp_path / "data.txt"),
                        ":data.txt"], check=True, capture_output=True, timeout=60)  # fmt: skip
    finally:
        vb.stop()
    fw = tmp_path / "fw.bin"
    fw.write_bytes(esp_image("esp32", 0x20000))
    for erase, survives in ((False, True), (True, False)):
        rom = VirtualRom(image, 0x400000, "esp32")
        rom.start()
        try:
            code, _, err = flash_cli(capsys, rom, "esp32-devkitc", fw, *(["--erase"] if erase else []))
        finally:
            rom.stop()
        assert code == 0, err
        assert ("data.txt" in board_ls()) == survives


@pytest.mark.parametrize("where", ["dir", "missing-parent"])
def test_parttable_unwritable_output_is_one_line(tmp_path, capsys, where) -> None:
    out = tmp_path if where == "dir" else tmp_path / "no" / "table.bin"
    assert main(["parttable", "--board", "sim", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot write the partition table" in err and "Traceback" not in err, err


def test_virtual_rom_flash_that_is_a_directory_is_one_line(tmp_path, capsys) -> None:
    assert main(["board", "rom", "--board", "esp32-devkitc", "--flash", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot use the flash image" in err and "Is a directory" in err, err
