"""`edgefleet board ...`: virtual hardware on a serial line (a MicroPython board; later an ESP32 ROM)."""

from __future__ import annotations

from pathlib import Path

from ...errors import EdgefleetError
from ..boards import load_board


def run_virtual(board_name: str = "sim", flash_path: str | None = None, heap: int | None = None) -> int:
    """`edgefleet board virtual`: check the board and the flash image, then serve a MicroPython board on a pty
    until stopped."""
    from .board import run_virtual_board

    board = load_board(board_name)
    if not board.is_sim:
        raise EdgefleetError(
            f"board {board.name} is a real chip ({board.chip}); the virtual board runs the unix port",
            hint="use --board sim",
        )
    flash = Path(flash_path) if flash_path else Path.cwd() / f"{board.name}-flash.img"
    if not flash.parent.is_dir():
        raise EdgefleetError(f"cannot create the flash image {flash}: no directory {flash.parent}")
    if flash.exists() and not flash.is_file():
        raise EdgefleetError(f"the flash image {flash} is not a regular file", hint="pass a file path as --flash")
    if flash.exists() and flash.stat().st_size not in (0, board.flash_size):
        raise EdgefleetError(
            f"{flash} is {flash.stat().st_size} bytes, not a {board.flash_size // (1 << 20)} MB flash image of {board.name}",
            hint="pass another --flash path (a new image is created erased)",
        )
    run_virtual_board(board, flash, heap)
    return 0


def run_rom(board_name: str, flash_path: str) -> int:
    """`edgefleet board rom`: an ESP32 ROM bootloader on a pty writing `flash_path`, until Ctrl-C."""
    import time

    from .rom import VirtualRom

    board = load_board(board_name)
    chip = "esp32" if board.chip == "sim" else board.chip
    try:
        rom = VirtualRom(Path(flash_path), board.flash_size, chip)
    except ValueError as e:
        raise EdgefleetError(str(e), hint="use --board esp32-devkitc or --board sim") from None
    except OSError as e:
        raise EdgefleetError(f"cannot use the flash image {flash_path!r}: {e.strerror}") from None
    path = rom.start()
    print(f"virtual {chip} ROM bootloader on {path}  (flash image {flash_path}; Ctrl-C to stop)", flush=True)
    print(f"  try: edgefleet flash --board esp32-devkitc --port {path} --no-stub --before no-reset --firmware FILE")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        rom.stop()
    return 0
