"""Argument parsing for `edgefleet rollout start|status|pause|resume|abort`: only the command line lives here; the
handlers turn the parsed arguments into the typed calls of fleetops/rollout.py."""

from __future__ import annotations

import argparse

from ..broker.mosquitto import COLLECTOR_USER, OPERATOR_USER
from ..errors import EdgefleetError
from ..fleetops.devices import DEFAULT_BROKER_DIR, DEFAULT_SECRETS_DIR
from ..wire import ota, protocol
from .common import add_command
from .fleetops import DEFAULT_DB

START_EXAMPLES = [
    "edgefleet rollout start models/basicmotions-rf/model.efm --to all --password-file secrets/operator.secret",
    "edgefleet rollout start node-config.json --to group:kitchen --version 3 --stages 10%,100% --soak 30m",
    "edgefleet rollout start code.efcb --to all --kind code --soak 1h --gate-drift 0.3",
]
NOTE = """exit status: 0 when the rollout is done (or paused), 1 when a gate halted it (the updated devices were rolled back)
or it was aborted, 2 on a usage or connection error. see docs/fleet.md "Rollouts\""""


def _where(p: argparse.ArgumentParser, broker: bool) -> None:
    """Where the fleet is: the options every rollout subcommand shares."""
    from ..collect.collector import PASSWORD_ENV

    p.add_argument(
        "--db", default=DEFAULT_DB,
        help="fleet database with the registry and the collector's tables (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--secrets-dir", default=DEFAULT_SECRETS_DIR,
        help="the registry's secrets directory: the devices' model keys sign the offers (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--broker-dir", default=DEFAULT_BROKER_DIR, help="the registry's broker directory (default: %(default)s)"
    )
    p.add_argument("--prefix", default=protocol.DEFAULT_PREFIX, help="topic prefix (default: %(default)s)")
    if broker:
        p.add_argument(
            "--broker", default=f"mqtt://{OPERATOR_USER}@127.0.0.1:1883",
            help="mqtt://[user@]host:port or mqtts://...; the user is an operator login, used by nothing else while "
            "the rollout runs (default: %(default)s); no password here: see --password-file",
        )  # fmt: skip
        p.add_argument(
            "--password-file",
            help=f"file whose first line is the operator's password, e.g. {DEFAULT_SECRETS_DIR}/operator.secret "
            f"(default: ${PASSWORD_ENV} if set)",
        )
        p.add_argument("--ca", help="CA certificate for mqtts:// (default: the system's CAs)")


def _conn(args: argparse.Namespace):
    from ..collect.collector import PASSWORD_ENV, broker_password
    from ..fleetops.rollout import Connection
    from ..redact import refuse_password_in_url

    refuse_password_in_url(args.db, "--db", "use $PGPASSWORD or a ~/.pgpass file (libpq reads both)")
    broker = getattr(args, "broker", None)
    if broker is not None:
        refuse_password_in_url(
            broker, "--broker", f"put it in a file given with --password-file (mode 600) or in ${PASSWORD_ENV}"
        )
    return Connection(
        db=args.db,
        broker=broker or Connection.broker,
        password=broker_password(args.password_file) if broker is not None else None,
        ca=getattr(args, "ca", None),
        prefix=args.prefix,
        secrets_dir=args.secrets_dir,
        broker_dir=args.broker_dir,
        operator_users=(OPERATOR_USER,),
        collector_users=(COLLECTOR_USER,),
    )


def _exit(result) -> int:
    from ..fleetops.rollout import DONE, PAUSED

    if result.state == DONE:
        return 0
    if result.state == PAUSED:
        return 0
    print(f"rollout {result.id}: {result.state}" + (f": {result.reason}" if result.reason else ""))
    return 1


def _cmd_rollout(args: argparse.Namespace) -> int:
    from ..fleetops import rollout as ro

    sub = args.rollout_command
    conn = _conn(args)
    if sub == "start":
        gate = ro.GateSettings(
            drift=args.gate_drift, heap_drop=args.gate_heap_drop, reconnects=args.gate_reconnects,
            extra_boots=args.gate_extra_boots, baseline_s=ro.parse_duration(args.gate_baseline),
        )  # fmt: skip
        opts = ro.RolloutOptions(
            artifact=args.artifact, target=args.to, stages=args.stages, soak_s=ro.parse_duration(args.soak),
            gate=gate, kind=args.kind, version=args.version, confirm_s=args.confirm_s, chunk=args.chunk,
            wait_s=None if args.wait is None else ro.parse_duration(args.wait), seed=args.seed,
        )  # fmt: skip
        return _exit(ro.start_rollout(opts, conn, ro.Hooks(say=lambda s: print(s, flush=True))))
    if sub == "resume":
        return _exit(ro.resume_rollout(args.rollout_id, conn, ro.Hooks(say=lambda s: print(s, flush=True))))
    if sub == "status":
        print(ro.status_of(args.rollout_id, conn))
        return 0
    if sub in ("pause", "abort"):
        state = ro.mark(args.rollout_id, conn, ro.PAUSED if sub == "pause" else ro.ABORTED)
        print(f"rollout {args.rollout_id}: {state} (a running `rollout start` stops at its next check)")
        return 0
    raise EdgefleetError(f"unknown rollout command {sub!r}")  # pragma: no cover - argparse requires one


def register(sub: argparse._SubParsersAction) -> None:
    """`edgefleet rollout start|status|pause|resume|abort`."""
    from ..fleetops.rollout import DEFAULT_SOAK_S, DEFAULT_STAGES, GateSettings

    g = GateSettings()
    p = add_command(
        sub, "rollout", help="staged over-the-air rollouts of a model, node config or node code, gated on health",
        description="Offer an artifact (a model file, a node config or a code bundle) over the air to the devices "
        "a TARGET names, stage by stage (each a random subset), soak each stage, and let a gate compare the stage's "
        "devices with themselves before and with the rest (safe mode, failed or rolled-back updates, boots, "
        "reconnects, free heap, and for models the drift of the decisions). A failing gate halts the rollout and "
        "rolls the updated devices back. The state is in the fleet database: `rollout resume ID` continues after a "
        "crash.",
        examples=[*START_EXAMPLES, "edgefleet rollout status r-3f2a1c", "edgefleet rollout resume r-3f2a1c"],
        note=NOTE,
    )  # fmt: skip
    rsub = p.add_subparsers(dest="rollout_command", metavar="SUBCOMMAND", required=True)

    s = add_command(
        rsub, "start", help="start a rollout and run it to its end",
        description="Check the artifact (kind, version, no secrets in a config), split the TARGET's devices into "
        "stages and run them: per stage publish the chunks (retained, removed afterwards), offer each device its "
        "copy (a model re-signed with its key, the offer signed with it), wait for confirmed / rolled_back / failed, "
        "soak, gate. Progress is printed during long waits. Needs a collector writing the fleet's messages into "
        "--db (the gate reads them).",
        examples=START_EXAMPLES, note=NOTE,
    )  # fmt: skip
    s.add_argument(
        "artifact",
        metavar="ARTIFACT",
        help="model file (EFML) or model directory, node config (JSON) or code bundle (EFCB)",
    )
    s.add_argument("--to", required=True, metavar="TARGET", help="all, group:NAME or a device id (required)")
    s.add_argument(
        "--stages", default=DEFAULT_STAGES,
        help="cumulative shares of the target per stage, each a random subset of at least one device "
        "(default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--soak", default=f"{DEFAULT_SOAK_S / 60:g}m",
        help="how long each stage runs before its gate: 30s, 10m, 2h (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--gate-drift", type=float, default=g.drift,
        help="models: largest total variation distance between the decisions' shares of time before and after "
        "(0 = same, 1 = disjoint; default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--gate-heap-drop", type=float, default=g.heap_drop,
        help="largest fall of a device's free heap during the soak, as a fraction (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--gate-reconnects", type=int, default=g.reconnects,
        help="reconnects a stage device may have during the soak beyond the median of the devices not updated "
        "(default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--gate-extra-boots", type=int, default=g.extra_boots,
        help="boots allowed beyond the update's own reboot (default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--gate-baseline", default=f"{g.baseline_s / 60:g}m",
        help="how far before the offer the gate's 'before' window reaches (default: %(default)s)",
    )  # fmt: skip
    s.add_argument("--kind", choices=ota.KINDS, help="artifact kind (default: from the file's first bytes)")
    s.add_argument(
        "--version", type=int,
        help="the version to install (default: a model's own when above every version the registry records, "
        "else one above the highest the registry records)",
    )  # fmt: skip
    s.add_argument(
        "--confirm-s", type=int, default=ota.DEFAULT_CONFIRM_S,
        help=f"seconds the new version must run healthy before the node keeps it ({ota.MIN_CONFIRM_S}-"
        f"{ota.MAX_CONFIRM_S}; default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--chunk", type=int, default=ota.DEFAULT_CHUNK,
        help=f"chunk size in bytes ({ota.MIN_CHUNK}-{ota.MAX_CHUNK}; default: %(default)s)",
    )  # fmt: skip
    s.add_argument(
        "--wait",
        help="how long a stage waits for its devices' final reports, e.g. 5m (default: 2 x --confirm-s + 120 s "
        "+ 1 s per chunk)",
    )
    s.add_argument("--seed", type=int, help="seed of the stages' random split (default: random)")
    _where(s, broker=True)

    for name, text, desc in (
        ("status", "per-stage counts and the gates' results (every rollout without ID)",
         "Print one rollout: state, per-stage counts (offered, downloading, confirmed, failed, rolled back) and each "
         "gate's checks; without ID, one line per rollout."),
        ("pause", "pause a running rollout (the running start stops at its next check)",
         "Mark a running rollout paused in the database; the `rollout start` running it stops at its next check "
         "(between steps, and every few seconds while waiting or soaking). `rollout resume ID` continues it."),
        ("resume", "continue a paused rollout, or one whose host stopped, where it stopped",
         "Continue a paused rollout, or a running one whose host crashed or was stopped (make sure its `rollout "
         "start` is gone), at the step the database records: chunks are published again, the devices' retained "
         "status read again, a soak continues for what was left of it."),
        ("abort", "stop a rollout for good (devices keep what they installed)",
         "Mark a rollout aborted: the running start stops at its next check and removes the chunks; no further "
         "device is offered the artifact. Devices already updated keep it (a failing gate is what rolls back)."),
    ):  # fmt: skip
        c = add_command(rsub, name, help=text, description=desc, examples=[f"edgefleet rollout {name} r-3f2a1c"])
        c.add_argument(
            "rollout_id", metavar="ID", nargs="?" if name == "status" else None,
            help="rollout id, as `rollout start` printed it" + (" (default: list every rollout)" if name == "status" else ""),
        )  # fmt: skip
        _where(c, broker=name == "resume")
    p.set_defaults(func=_cmd_rollout)
