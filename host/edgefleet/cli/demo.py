"""`edgefleet demo`: the whole job on one machine (edgefleet.demo)."""

from __future__ import annotations

import argparse
import time

from ..demo import run
from ..errors import EdgefleetError
from ..paths import writable_dir
from .common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "demo",
        help="broker + collector + 20 simulated nodes for 60 s, then a fleet report",
        description=run.__doc__,
        examples=["edgefleet demo", "edgefleet demo --devices 6 --duration 30 --dir /tmp/demo"],
        note="The report is <dir>/report.html; the commands printed at the end look further into the run.",
    )
    p.add_argument("--devices", type=int, default=20, help="number of simulated nodes (default 20)")
    p.add_argument("--duration", type=float, default=60, help="seconds the fleet runs (default 60)")
    p.add_argument("--dir", default="demo", help="working directory: database, logs, report.html (default ./demo)")
    p.add_argument("--keep", action="store_true", help="keep a previous run's directory instead of clearing it")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    if args.devices < 1:
        raise EdgefleetError(f"--devices must be at least 1 (got {args.devices})")
    if args.duration <= 0:
        raise EdgefleetError(f"--duration must be a positive number of seconds (got {args.duration})")
    writable_dir(args.dir, "--dir")  # before a broker or a node starts
    t0 = time.monotonic()
    report = run.run_demo(workdir=args.dir, devices=args.devices, duration=args.duration, keep=args.keep)
    print(run.render_text(report))
    print(f"\n{report['summary']}  ({time.monotonic() - t0:.0f} s)")
    print("\nLook further:\n  " + report["commands"].replace("\n", "\n  "))
    return 0
