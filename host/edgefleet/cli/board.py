"""`edgefleet node`, `boards`, `flash`, `parttable`, `deploy`, `repl` and `board virtual|rom`: the board stage's
commands (edgefleet.board)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..board import boards, deploy, flash, node, parttable, vboard
from ..errors import EdgefleetError
from . import fleetops
from .common import add_command

# ---------------------------------------------------------------- node


def register_node(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "node",
        help="run one simulated node (sim board) on the MicroPython unix port, in the foreground",
        examples=[
            "edgefleet node --device-id node-001 --broker mqtt://127.0.0.1:1883 --flash node-001.img",
            "edgefleet node --device-id n2 --broker mqtt://127.0.0.1:1883 --flash n2.img --scenario faults.json",
        ],
        note="Ctrl-C or SIGTERM stops the node cleanly (its log is flushed); a `reboot` command restarts it.",
    )
    p.add_argument(
        "--board",
        default="sim",
        help="board name (boards/NAME.json) or a path to a board .json file (default sim, the only one that runs here)",
    )
    p.add_argument("--device-id", required=True, help="the node's device id (topic <prefix>/<id>/...)")
    p.add_argument("--broker", required=True, help="MQTT broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--flash", required=True, help="flash image file (created erased if missing, kept between runs)")
    p.add_argument("--scenario", help="scenario JSON for the simulated sensors (default: built-in signals)")
    p.set_defaults(func=_node)


def _node(args: argparse.Namespace) -> int:
    return node.run_node(board_name=args.board, device_id=args.device_id, broker_url=args.broker,
                         flash_path=args.flash, scenario_path=args.scenario)  # fmt: skip


# ---------------------------------------------------------------- boards


def register_boards(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "boards",
        help="list and validate board definitions (boards/*.json)",
        examples=["edgefleet boards list", "edgefleet boards validate sim ./my-board.json"],
        note="A board argument (here and in --board) is a name in boards/ unless it contains / or ends in .json.",
    )
    s = p.add_subparsers(dest="boards_cmd", required=True)
    ls = add_command(s, "list", help="list known boards", examples=["edgefleet boards list"])
    ls.set_defaults(func=_boards_list)
    v = add_command(
        s,
        "validate",
        help="validate board files (all by default); names the bad field",
        examples=["edgefleet boards validate", "edgefleet boards validate sim ./my-board.json"],
    )
    v.add_argument("boards", nargs="*", help="board names or paths to JSON files (default: every board in boards/)")
    v.set_defaults(func=_boards_validate)


def _boards_list(args: argparse.Namespace) -> int:
    for name in boards.available_boards():
        b = boards.load_board(name)
        print(
            f"{name:16} {b.chip:8} {b.arch:10} flash {b.flash_size // (1024 * 1024)} MB  "
            f"heap {b.heap_bytes // 1024} KB  {len(b.data['sensors'])} sensors"
        )
    return 0


def _boards_validate(args: argparse.Namespace) -> int:
    targets = args.boards or boards.available_boards()
    for t in targets:
        b = boards.load_board(t)
        print(f"{b.path}: ok ({b.chip}, {b.arch})")
    return 0


# ---------------------------------------------------------------- flash, parttable


def register_flash(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "flash",
        help="flash MicroPython (and the board's partition table) to an ESP32 (esptool)",
        description=flash.__doc__,
        examples=[
            "edgefleet flash --board esp32-devkitc --port /dev/ttyUSB0",
            "edgefleet flash --board esp32-c3 --port /dev/ttyACM0 --firmware ESP32_GENERIC_C3.bin --erase",
            "edgefleet flash --board esp32-devkitc --port /dev/pts/5 --no-stub --before no-reset --firmware fw.bin",
        ],
    )
    p.add_argument("--board", required=True, help="board definition name or path")
    p.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--firmware", help="MicroPython .bin for the board (default build/firmware/<firmware_board>.bin)")
    p.add_argument("--erase", action="store_true", help="erase the whole flash first (loses the node's data)")
    p.add_argument("--baud", type=int, default=460800, help="baud rate for writing (default 460800)")
    p.add_argument("--no-stub", action="store_true", help="talk to the ROM bootloader only (slower, no compression)")
    p.add_argument("--before", default="default-reset", choices=("default-reset", "usb-reset", "no-reset"),
                   help="how to get the chip into its bootloader (no-reset: you hold BOOT and tap EN yourself)")  # fmt: skip
    p.set_defaults(func=_flash)
    t = add_command(
        sub,
        "parttable",
        help="write the board's partition table binary (ESP-IDF format) to a file",
        examples=["edgefleet parttable --board esp32-devkitc -o partitions.bin"],
    )
    t.add_argument("--board", required=True, help="board definition name or path")
    t.add_argument("--output", "-o", required=True, help="file to write the partition table to")
    t.set_defaults(func=_parttable)


def _flash(args: argparse.Namespace) -> int:
    board = boards.load_board(args.board)
    chip = flash.flash(board, args.port, Path(args.firmware) if args.firmware else None, args.erase, args.baud,
                       args.no_stub, progress=not args.quiet, connect_mode=args.before)  # fmt: skip
    layout = "stock layout" if board.data.get("micropython", {}).get("stock_partitions", True) else "edgefleet table"
    print(f"flashed MicroPython to the {chip} on {args.port} ({board.name}, {layout}); verified")
    return 0


def _parttable(args: argparse.Namespace) -> int:
    board = boards.load_board(args.board)
    data = parttable.generate(board)
    try:
        Path(args.output).write_bytes(data)
    except OSError as e:
        raise EdgefleetError(f"cannot write the partition table to {args.output!r}: {e.strerror}") from None
    for p in board.partitions():
        print(parttable.describe(p))
    print(f"wrote {args.output} ({len(data)} bytes, for {board.partition_table_offset:#x})")
    return 0


# ---------------------------------------------------------------- deploy, repl


def register_deploy(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "deploy",
        help="copy the node firmware (.mpy), config, board definition and model to a board",
        description=deploy.__doc__,
        examples=[
            "edgefleet deploy --board esp32-devkitc --port /dev/ttyUSB0 --device-id node-001 --config node.json",
            "edgefleet deploy --board esp32-devkitc --port /dev/ttyUSB0 --device-id node-001 "
            "--model models/basicmotions-rf --broker mqtts://192.168.1.10:8883 --ca tls/ca.pem",
        ],
    )
    p.add_argument("--board", required=True, help="board definition name (boards/NAME.json) or path")
    p.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0 (or a virtual board's /dev/pts/N)")
    p.add_argument("--device-id", required=True, help="the node's device id (topic and record id)")
    p.add_argument("--model", help="model directory (models/NAME, its model.efm is deployed) or a .efm file")
    p.add_argument(
        "--model-key-file",
        default=os.environ.get("EDGEFLEET_MODEL_KEY_FILE"),
        help="model signing key (file of raw bytes, mode 600): the model must verify with it, and the node gets "
        "it in its config so it loads only models signed with it (default: $EDGEFLEET_MODEL_KEY_FILE, else none)",
    )
    p.add_argument("--config", help="node config JSON (Wi-Fi, broker, credentials, rates); see docs/deploy.md")
    p.add_argument("--broker", help="broker URL for the node, e.g. mqtt://192.168.1.10:1883 (overrides --config)")
    p.add_argument(
        "--ca", help="the broker's CA certificate (ca.pem from `edgefleet broker pki`): copied to the board as "
        "ca.pem and set as broker.ca; required with an mqtts:// broker unless --config names one (default: none)",
    )  # fmt: skip
    p.add_argument("--cmodule", action="append", help="extra C module .mpy for the board's arch (repeatable)")
    p.add_argument(
        "--transport", choices=("mpremote", "ampy"), default="mpremote", help="how to reach the board's REPL"
    )
    p.add_argument("--baud", type=int, default=115200, help="serial baud rate")
    p.add_argument("--force", action="store_true", help="deploy even if the board on the port is of another type")
    p.add_argument("--no-reset", action="store_true", help="do not soft-reset the board afterwards")
    fleetops.add_deploy_options(p)
    p.set_defaults(func=_deploy)
    r = add_command(
        sub,
        "repl",
        help="open the board's MicroPython REPL (mpremote; Ctrl-] to leave)",
        examples=["edgefleet repl --port /dev/ttyUSB0"],
    )
    r.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0 (or a virtual board's /dev/pts/N)")
    r.set_defaults(func=_repl)


def _deploy(args: argparse.Namespace) -> int:
    r = deploy.run_deploy(
        board=args.board, port=args.port, device_id=args.device_id, model=args.model,
        model_key_file=args.model_key_file, config=args.config, broker=args.broker, ca=args.ca,
        cmodule=args.cmodule, transport=args.transport, baud=args.baud, force=args.force,
        reset=not args.no_reset, progress=not args.quiet, from_registry=args.from_registry, db=args.db,
        secrets_dir=args.secrets_dir,
    )  # fmt: skip
    print(
        f"deployed {args.device_id} to {args.port} ({args.board}): {len(r.copied)} copied, {len(r.unchanged)} "
        f"unchanged, {len(r.removed)} stale removed; all {len(r.copied) + len(r.unchanged)} files verified (sha256)"
    )
    return 0


def _repl(args: argparse.Namespace) -> int:
    return deploy.open_repl(args.port)


# ---------------------------------------------------------------- board virtual, board rom


def register_virtual(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "board",
        help="virtual boards on a pseudo-terminal (for mpremote, deploy and HIL tests)",
        examples=["edgefleet board virtual --flash sim-flash.img", "edgefleet board rom --flash esp32-flash.img"],
    )
    s = p.add_subparsers(dest="board_cmd", required=True)
    v = add_command(
        s,
        "virtual",
        help="a MicroPython board on a pty: raw REPL and raw paste as mpremote expects, littlefs on the sim "
        "flash image, soft reset runs boot.py and main.py",
        examples=[
            "edgefleet board virtual --flash sim-flash.img",
            "edgefleet board virtual --board sim --heap 120000",
        ],
    )
    v.add_argument("--board", default="sim", help="board definition (default: sim)")
    v.add_argument("--flash", help="flash image file (created erased if missing; default ./<board>-flash.img)")
    v.add_argument("--heap", type=int, help="heap bytes (default: the board's heap_bytes)")
    v.set_defaults(func=_virtual)
    r = add_command(
        s,
        "rom",
        help="an ESP32 ROM bootloader on a pty (the protocol esptool speaks with --no-stub), writing a flash image",
        examples=["edgefleet board rom --flash esp32-flash.img", "edgefleet board rom --board sim --flash sim.img"],
    )
    r.add_argument("--board", default="esp32-devkitc", help="board whose flash size to use (default esp32-devkitc)")
    r.add_argument("--flash", required=True, help="flash image file (created erased if missing)")
    r.set_defaults(func=_rom)


def _virtual(args: argparse.Namespace) -> int:
    return vboard.run_virtual(args.board, args.flash, args.heap)


def _rom(args: argparse.Namespace) -> int:
    return vboard.run_rom(args.board, args.flash)
