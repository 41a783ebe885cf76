"""`edgefleet simulate`: the simulation stage's command (edgefleet.sim)."""

from __future__ import annotations

import argparse

from ..sim import simulate
from .common import add_command, options

SIM_DEFAULTS = simulate.SimulateOptions()


def register(sub: argparse._SubParsersAction) -> None:
    d = SIM_DEFAULTS
    p = add_command(
        sub,
        "simulate",
        help="run N simulated nodes (real firmware on the MicroPython unix port)",
        examples=[
            "edgefleet simulate --devices 5 --duration 60",
            "edgefleet simulate --devices 10 --model models/basicmotions-rf --workdir var/sim10",
            "edgefleet simulate --broker mqtt://127.0.0.1:1883 --scenario faults.json --duration 0",
        ],
        note="With --broker auto the collector command to run beside it is printed when the broker is up.",
    )
    p.add_argument("--devices", type=int, default=d.devices, help=f"number of nodes (default {d.devices})")
    p.add_argument(
        "--broker",
        default=d.broker,
        help="mqtt://HOST:PORT of a broker that accepts anonymous nodes, or 'auto' (default): start a mosquitto "
        "with a password per device and per-device ACLs in the workdir",
    )
    p.add_argument("--model", help="model directory or .efm file put on every node (e.g. models/basicmotions-rf)")
    p.add_argument("--scenario", help="scenario JSON for every node (default: half replay activities, half faults)")
    p.add_argument("--duration", type=float, default=d.duration, help="seconds to run (default: until Ctrl-C)")
    p.add_argument(
        "--workdir", default=d.workdir, help="flash images, scenarios, logs, broker data (default ./var/sim)"
    )
    p.add_argument(
        "--status-interval",
        type=int,
        default=d.status_interval,
        help=f"node status interval in s (default {d.status_interval})",
    )
    p.add_argument(
        "--ca", help="with an mqtts:// --broker: the CA certificate the nodes verify it against (ca.pem from "
        "`edgefleet broker pki`; required for mqtts://, default: none)",
    )  # fmt: skip
    p.add_argument(
        "--online-timeout",
        type=float,
        default=d.online_timeout,
        help="stop with an error when no node has been online for this long, in s (default 60; 0: never)",
    )
    p.add_argument(
        "--heap-extra",
        type=int,
        default=d.heap_extra,
        help="bytes of heap on top of the board's (scaled for the 64-bit unix port), e.g. for the sim hardware",
    )
    p.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    return simulate.run_simulation(options(simulate.SimulateOptions, args))
