"""`edgefleet board ...`: virtual hardware on a serial line (a MicroPython board; later an ESP32 ROM)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import EdgefleetError
from ..boards import load_board


def _cmd_virtual(args: argparse.Namespace) -> int:
    from .board import run_virtual_board

    board = load_board(args.board)
    if not board.is_sim:
        raise EdgefleetError(
            f"board {board.name} is a real chip ({board.chip}); the virtual board runs the unix port",
            hint="use --board sim",
        )
    flash = Path(args.flash) if args.flash else Path.cwd() / f"{board.name}-flash.img"
    if not flash.parent.is_dir():
        raise EdgefleetError(f"cannot create the flash image {flash}: no directory {flash.parent}")
    if flash.exists() and not flash.is_file():
        raise EdgefleetError(f"the flash image {flash} is not a regular file", hint="pass a file path as --flash")
    if flash.exists() and flash.stat().st_size not in (0, board.flash_size):
        raise EdgefleetError(
            f"{flash} is {flash.stat().st_size} bytes, not a {board.flash_size // (1 << 20)} MB flash image of {board.name}",
            hint="pass another --flash path (a new image is created erased)",
        )
    run_virtual_board(board, flash, args.heap)
    return 0


def _cmd_rom(args: argparse.Namespace) -> int:
    import time

    from .rom import VirtualRom

    board = load_board(args.board)
    chip = "esp32" if board.chip == "sim" else board.chip
    try:
        rom = VirtualRom(Path(args.flash), board.flash_size, chip)
    except ValueError as e:
        raise EdgefleetError(str(e), hint="use --board esp32-devkitc or --board sim") from None
    except OSError as e:
        raise EdgefleetError(f"cannot use the flash image {args.flash!r}: {e.strerror}") from None
    path = rom.start()
    print(f"virtual {chip} ROM bootloader on {path}  (flash image {args.flash}; Ctrl-C to stop)", flush=True)
    print(f"  try: edgefleet flash --board esp32-devkitc --port {path} --no-stub --before no-reset --firmware FILE")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        rom.stop()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("board", help="virtual boards on a pseudo-terminal (for mpremote, deploy and HIL tests)")
    s = p.add_subparsers(dest="board_cmd", required=True)
    v = s.add_parser(
        "virtual",
        help="a MicroPython board on a pty: raw REPL and raw paste as mpremote expects, littlefs on the sim "
        "flash image, soft reset runs boot.py and main.py",
    )
    v.add_argument("--board", default="sim", help="board definition (default: sim)")
    v.add_argument("--flash", help="flash image file (created erased if missing; default ./<board>-flash.img)")
    v.add_argument("--heap", type=int, help="heap bytes (default: the board's heap_bytes)")
    v.set_defaults(func=_cmd_virtual)
    r = s.add_parser(
        "rom",
        help="an ESP32 ROM bootloader on a pty (the protocol esptool speaks with --no-stub), writing a flash image",
    )
    r.add_argument("--board", default="esp32-devkitc", help="board whose flash size to use (default esp32-devkitc)")
    r.add_argument("--flash", required=True, help="flash image file (created erased if missing)")
    r.set_defaults(func=_cmd_rom)
