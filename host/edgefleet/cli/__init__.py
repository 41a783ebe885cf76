"""The one `edgefleet` command: argument parsing only. One module per stage (cli/model.py, cli/board.py, ...)
builds that stage's subcommands and turns their arguments into calls of the stage's typed functions; no module
outside this package reads an argparse.Namespace.

Only commands that work are registered, so `edgefleet --help` never shows a placeholder.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from .. import __version__, procs
from ..errors import EdgefleetError
from . import board, broker, collect, console, demo, fleetops, forecast, model, rollout, sim
from .common import HelpFormatter, epilog

# Functions that add one stage's subcommands, in the order --help lists them.
COMMANDS = [
    # the main job and its parts
    demo.register,
    sim.register,
    board.register_node,
    broker.register,
    collect.register_collect,
    collect.register_fleet,
    fleetops.register,
    rollout.register,
    console.register,
    collect.register_export,
    model.register_capture,
    # models
    model.register_train,
    model.register_convert,
    forecast.register,
    model.register_build_module,
    # boards
    board.register_boards,
    board.register_flash,
    board.register_deploy,
    board.register_virtual,
]

log = logging.getLogger("edgefleet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet",
        description="Toolchain for MicroPython ESP32 sensor fleets: train and convert models, build the C module,\n"
        "flash and deploy boards, run the fleet collector, simulate nodes, and run hardware-in-the-loop tests.",
        epilog=epilog(
            [
                "edgefleet demo",
                "edgefleet train --data basicmotions --model rf --name basicmotions-rf",
                "edgefleet collect --help",
            ]
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if verbose < 2:
        for noisy in ("matplotlib", "urllib3", "PIL", "numba", "tensorflow", "h5py", "absl"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    # SIGTERM and SIGINT both unwind through every cleanup path (procs.Interrupted), and whatever child process a
    # command left running is stopped on the way out, so no child outlives the command.
    rc = 0
    with procs.signal_handlers():
        try:
            rc = int(args.func(args) or 0)
            sys.stdout.flush()  # inside the try: a closed pipe shows here, not as a warning at exit
        except BrokenPipeError:
            # The reader of our output went away (`fleet status | head`): not an error. Point stdout at /dev/null
            # so the interpreter's final flush does not print a traceback; 141 = 128 + SIGPIPE, as coreutils exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            rc = 141
        except EdgefleetError as e:
            if procs.received_signal() is None:  # an error while stopping is not news: the signal is
                print(f"edgefleet {args.command}: error: {e}", file=sys.stderr)
                rc = 2
        except KeyboardInterrupt:
            procs.note_signal(signal.SIGINT)  # a KeyboardInterrupt we did not raise ourselves
    sig = procs.received_signal()
    if sig is not None:
        print(f"edgefleet {args.command}: stopped by {procs.signal_name(sig)}", file=sys.stderr, flush=True)
        if argv is None:
            # We are the program (not a call from Python): everything is stopped, now die by the signal itself, as
            # Python does for Ctrl-C. The shell reports 128 + signum (130, 143) and stops a script on Ctrl-C;
            # systemd and other supervisors count death by SIGTERM as a clean stop, where exit 143 is a failure.
            procs.die_by(sig)
        return procs.exit_status(sig)
    return rc
