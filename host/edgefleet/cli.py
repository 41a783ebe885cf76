"""The one `edgefleet` command. Each subcommand lives in the module of its stage and registers itself here.

Only modules whose commands work are listed, so `edgefleet --help` never shows a placeholder.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from . import __version__
from .errors import EdgefleetError

# Modules with a `register(subparsers)` function, in the order --help lists them.
COMMAND_MODULES = [
    # the main job and its parts
    "edgefleet.demo",
    "edgefleet.simulate",
    "edgefleet.node",
    "edgefleet.broker",
    "edgefleet.collector",
    "edgefleet.fleet",
    "edgefleet.export",
    # models
    "edgefleet.train",
    "edgefleet.convert",
    "edgefleet.build_module",
    # boards
    "edgefleet.boards",
    "edgefleet.flash",
    "edgefleet.deploy",
    "edgefleet.vboard",
]

log = logging.getLogger("edgefleet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet",
        description="Toolchain for MicroPython ESP32 sensor fleets: train and convert models, build the C module, "
        "flash and deploy boards, run the fleet collector, simulate nodes, and run hardware-in-the-loop tests.",
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not as a warning at exit
        return rc
    except BrokenPipeError:
        # The reader of our output went away (`fleet status | head`): not an error. Point stdout at /dev/null
        # so the interpreter's final flush does not print a traceback; 141 = 128 + SIGPIPE, as coreutils exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except EdgefleetError as e:
        print(f"edgefleet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
