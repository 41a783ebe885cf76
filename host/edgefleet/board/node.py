"""`edgefleet node`: run one simulated node on the MicroPython unix port, in the foreground.

The node is the same firmware a board runs (compiled to .mpy, heap limited with -X heapsize to the board's
plus the measured cost of the simulated hardware, scaled for a 64-bit interpreter: runtime.unix_heap_bytes),
started through simboard/launch.py, which mounts the simulated flash image as the node's filesystem. A
`reboot` command makes the firmware exit with REBOOT_EXIT; like a board's reset, we start it again on the
same flash. Ctrl-C stops it: the node flushes its log and the broker publishes its last will (offline).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .. import procs
from ..errors import EdgefleetError
from ..runtime import find_micropython, micropython_env, unix_heap_bytes
from ..wire.protocol import DEVICE_RE
from ..wire.url import parse_broker_url
from .boards import Board, load_board

log = logging.getLogger(__name__)

# Must equal REBOOT_EXIT in firmware/node/app.py: the firmware's "reset me" on the sim board.
REBOOT_EXIT = 75
# How long a stopping node may take to flush its log and disconnect before it is killed.
STOP_GRACE_S = 10.0


def check_broker_url(url: str) -> str:
    """The node's MQTT client takes mqtt://host[:port] or mqtts://host[:port]; refuse anything else early."""
    parse_broker_url(url, node=True)
    return url


def check_flash_path(path: Path, board: Board) -> Path:
    """The flash image is created erased when missing; an existing one must be a readable, writable file."""
    if path.exists():
        if not path.is_file():
            raise EdgefleetError(f"flash image {path} is not a regular file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise EdgefleetError(
                f"flash image {path} is not readable and writable", hint=f"check permissions of {path}"
            )
        size = path.stat().st_size
        if size and size != board.flash_size:
            raise EdgefleetError(
                f"flash image {path} is {size} bytes, board {board.name} has {board.flash_size}",
                hint="use another --flash path for this board (a node's flash is kept between runs)",
            )
    else:
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise EdgefleetError(f"cannot create flash image {path}: {parent} is not a writable directory")
    return path


def node_heap_bytes(board: Board, broker: str) -> int:
    """The board's heap, plus the sim hardware (and TLS buffers the unix port keeps in the heap): one policy,
    runtime.unix_heap_bytes, for every process that runs a sim node."""
    return unix_heap_bytes(board.heap_bytes, sim_machinery=True, tls=broker.startswith("mqtts://"))


def node_argv(board: Board, flash: Path, device_id: str, broker: str, scenario: Path | None) -> list[str]:
    args = [str(board.path), str(flash.resolve()), device_id, broker]
    if scenario is not None:
        args.append(str(scenario.resolve()))
    heap = node_heap_bytes(board, broker)
    return [find_micropython(), "-X", f"heapsize={heap}", "-m", "simboard.launch", *args]


def supervise(argv: Sequence[str], env: dict[str, str], max_reboots: int | None = None, cwd: str | None = None) -> int:
    """Runs the node process until it exits for good; restarts it on REBOOT_EXIT, as a board resets.

    The node runs in its own process group (procs.spawn). On Ctrl-C or SIGTERM (procs.Interrupted, a
    KeyboardInterrupt) we send it SIGINT, so it flushes its log and the broker sees it leave, wait up to
    STOP_GRACE_S, kill it if it does not stop, and let the interruption go on to the CLI (exit 130/143).
    """
    reboots = 0
    while True:
        proc = procs.spawn(argv, name="node", stop_signal=signal.SIGINT, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            procs.terminate(proc, signal.SIGINT, grace=STOP_GRACE_S)
            log.info("node stopped")
            raise
        procs.terminate(proc)  # exited: forget it
        if rc == REBOOT_EXIT and (max_reboots is None or reboots < max_reboots):
            reboots += 1
            log.info("node rebooted (%d), starting it again", reboots)
            continue
        return rc


def run_node(*, board_name: str = "sim", device_id: str, broker_url: str, flash_path: str,
             scenario_path: str | None = None) -> int:  # fmt: skip
    """`edgefleet node`: check everything the node needs, then run it in the foreground (restarted on reboot)
    until it stops or is stopped."""
    board = load_board(board_name)
    if not board.is_sim:
        raise EdgefleetError(
            f"board {board.name} is real hardware ({board.chip}); `edgefleet node` runs the sim board only",
            hint="use --board sim here; flash and deploy a real board with `edgefleet flash` / `edgefleet deploy`",
        )
    if not DEVICE_RE.fullmatch(device_id):
        raise EdgefleetError(f"bad device id {device_id!r}", hint="1 to 32 of A-Z a-z 0-9 _ -")
    broker = check_broker_url(broker_url)
    flash = check_flash_path(Path(flash_path), board)
    scenario = None
    if scenario_path:
        scenario = Path(scenario_path)
        if not scenario.is_file() or not os.access(scenario, os.R_OK):
            raise EdgefleetError(f"scenario file {scenario} does not exist or is not readable")
    argv = node_argv(board, flash, device_id, broker, scenario)
    log.info(
        "node %s on %s, broker %s, flash %s (heap: board %d bytes -> -X heapsize=%d with the sim hardware)",
        device_id,
        board.name,
        broker,
        flash,
        board.heap_bytes,
        node_heap_bytes(board, broker),
    )
    # MicroPython looks in the current directory first: run from an empty one, so a node.py or node/ in the
    # user's directory cannot shadow the firmware (the firmware's tree must stay on the absolute MICROPYPATH:
    # the node changes directory to its flash).
    with tempfile.TemporaryDirectory(prefix="edgefleet-node-") as cwd:
        rc = supervise(argv, micropython_env(), cwd=cwd)
    if rc not in (0, REBOOT_EXIT):
        raise EdgefleetError(f"node exited with code {rc}", hint="see the node's output above")
    return 0
