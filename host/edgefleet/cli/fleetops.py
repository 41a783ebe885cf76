"""Argument parsing for `edgefleet device`, `edgefleet fleet cmd` and deploy's registry options: only the
command line lives here; each handler turns the parsed arguments into typed calls of devices.py / commands.py."""

from __future__ import annotations

import argparse
import json

from ..broker.mosquitto import COLLECTOR_USER, OPERATOR_USER
from ..errors import EdgefleetError
from ..fleetops.commands import ACTIONS, DEFAULT_TIMEOUT_S
from ..fleetops.devices import DEFAULT_BROKER_DIR, DEFAULT_SECRETS_DIR
from ..wire import protocol
from .common import add_command

DEFAULT_DB = "sqlite:///fleet.db"

DEVICE_EXAMPLES = [
    "edgefleet device add node-001 --board esp32-devkitc --group kitchen --group floor1",
    "edgefleet device list --group kitchen",
    "edgefleet device show node-001",
    "edgefleet device rotate node-001                 # new broker password (the broker reloads)",
    "edgefleet device rotate node-001 --model-key     # and a new model key (takes effect at the next deploy)",
    "edgefleet device revoke node-001                 # the device can no longer log in",
    "edgefleet broker --data-dir broker --password-file broker/passwd    # the broker these files are for",
    "edgefleet deploy --board esp32-devkitc --port /dev/ttyUSB0 --device-id node-001 --from-registry \\\n"
    "      --broker mqtts://mqtt.lan:8883 --ca tls/ca.pem --model models/NAME",
]

CMD_EXAMPLES = [
    "edgefleet fleet cmd all ping --password-file secrets/operator.secret",
    "edgefleet fleet cmd group:kitchen set-config status_interval_s=30 rates.env=0.5",
    "edgefleet fleet cmd node-001 reboot --timeout 20",
    "EDGEFLEET_BROKER_PASSWORD=... edgefleet fleet cmd all flush --broker mqtts://operator@mqtt.lan:8883 --ca ca.pem",
]
CMD_NOTE = """exit status: 0 when every device answered ok, 1 when any answered with an error or not in time, 2 on a usage or
connection error. see docs/fleet.md"""


def _common(parser: argparse.ArgumentParser) -> None:
    """The options every `device` subcommand shares: where the registry, its secrets and the broker's files are."""
    parser.add_argument(
        "--db", default=DEFAULT_DB, help="fleet database, sqlite:///PATH or postgresql://... (default: %(default)s)"
    )
    parser.add_argument(
        "--secrets-dir",
        default=DEFAULT_SECRETS_DIR,
        help="directory (mode 700) for the devices' passwords and model keys and the collector and operator "
        "passwords (default: %(default)s)",
    )
    parser.add_argument(
        "--broker-dir",
        default=DEFAULT_BROKER_DIR,
        help="the broker's --data-dir: the password file and ACL are written there and a broker running on it "
        "reloads them (default: %(default)s)",
    )
    parser.add_argument(
        "--prefix", default=protocol.DEFAULT_PREFIX, help="topic prefix for the ACL (default: %(default)s)"
    )
    parser.add_argument(
        "--collector-user",
        action="append",
        default=None,
        help=f"a collector login, as given to `edgefleet broker` (repeat; default: {COLLECTOR_USER})",
    )
    parser.add_argument(
        "--operator-user",
        action="append",
        default=None,
        help=f"an operator login, as given to `edgefleet broker` (repeat; default: {OPERATOR_USER})",
    )


def _registry(args: argparse.Namespace, create: bool):
    from ..fleetops.devices import Registry
    from ..redact import refuse_password_in_url

    refuse_password_in_url(args.db, "--db", "use $PGPASSWORD or a ~/.pgpass file (libpq reads both)")
    return Registry.open(
        args.db,
        secrets_dir=args.secrets_dir,
        broker_dir=args.broker_dir,
        prefix=args.prefix,
        collector_users=args.collector_user or [COLLECTOR_USER],
        operator_users=args.operator_user or [OPERATOR_USER],
        create=create,
    )


def _print_change(change, what: str) -> None:
    from ..fleetops.devices import broker_command

    if what:
        print(what)
    if change.secret_file is not None:
        print(f"  broker password  {change.secret_file}  (mode 600; the broker holds only its hash)")
    if change.key_file is not None:
        fp = change.device.key_sha256 if change.device else ""
        print(f"  model key        {change.key_file}  (mode 600; fingerprint {fp})")
    b = change.broker
    for path in b.new_logins:
        print(f"  new login        {path.stem}: password in {path} (mode 600)")
    print(f"broker files: {b.password_file}, {b.acl_file}")
    if b.reloaded_pid is not None:
        print(f"the running broker (pid {b.reloaded_pid}) reloads them now")
    else:
        print(
            f"no broker is running on {b.password_file.parent}; start it with: {broker_command(b.password_file.parent)}"
        )


def _cmd_device(args: argparse.Namespace) -> int:
    from ..fleetops.devices import render_device, render_table

    sub = args.device_command
    with _registry(args, create=sub == "add") as reg:
        if sub == "add":
            ch = reg.add(args.device_id, args.board, args.group or [])
            _print_change(
                ch, f"added {ch.device.id} (board {ch.device.board}, groups {', '.join(ch.device.groups) or '-'})"
            )
        elif sub == "list":
            devices = reg.devices(args.group)
            if args.json:
                print(json.dumps([d.as_dict() for d in devices], indent=1))
            else:
                print(render_table(devices))
        elif sub == "show":
            dev = reg.get(args.device_id)
            print(json.dumps(dev.as_dict(), indent=1) if args.json else render_device(dev, reg))
        elif sub == "rotate":
            ch = reg.rotate(args.device_id, model_key=args.model_key)
            _print_change(
                ch, f"new credentials for {args.device_id}" + (" and a new model key" if args.model_key else "")
            )
            if args.model_key:
                print(
                    f"redeploy it (edgefleet deploy --device-id {args.device_id} --from-registry ...) to give it the key"
                )
        elif sub == "revoke":
            ch = reg.revoke(args.device_id)
            _print_change(ch, f"revoked {args.device_id}: its login is gone and its secrets files deleted")
        else:  # pragma: no cover - argparse requires a subcommand
            raise EdgefleetError(f"unknown device command {sub!r}")
    return 0


def register_device(sub: argparse._SubParsersAction) -> None:
    """`edgefleet device add|list|show|rotate|revoke`."""
    desc = (
        "The device registry in the fleet database: id, board, groups, broker credentials (the database and the "
        "broker get only a hash; the password goes to a 0600 file once), a per-device model key (a 0600 file), "
        "and what was last deployed. Every change renders the broker's password file and ACL into --broker-dir "
        "and makes a running `edgefleet broker` on it reload them (SIGHUP)."
    )
    p = add_command(
        sub, "device", help="register devices: credentials, model keys, groups (renders the broker's logins)",
        description=desc, examples=DEVICE_EXAMPLES, note="see docs/fleet.md",
    )  # fmt: skip
    dsub = p.add_subparsers(dest="device_command", metavar="SUBCOMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    _common(common)

    a = add_command(
        dsub, "add", parents=[common], help="register a device: new broker password and model key",
        description="Register a device (or readmit a revoked one): a new broker password and model key, each written "
        "once to a 0600 file in --secrets-dir; the broker's password file gets the hash.",
        examples=["edgefleet device add node-001 --board esp32-devkitc --group kitchen"],
    )  # fmt: skip
    a.add_argument("device_id", metavar="ID", help="device id: 1-32 characters of A-Z a-z 0-9 _ - (its topic level)")
    a.add_argument("--board", required=True, help="board definition name (boards/NAME.json) or path (required)")
    a.add_argument(
        "--group", action="append", default=None, metavar="NAME",
        help="a group (tag) for commands to group:NAME (repeat; default: none)",
    )  # fmt: skip

    ls = add_command(
        dsub, "list", parents=[common], help="one line per device",
        description="One line per registered device: board, state, groups, model key fingerprint, last deploy.",
        examples=["edgefleet device list --group kitchen"],
    )  # fmt: skip
    ls.add_argument("--group", metavar="NAME", help="only devices in this group (default: all)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table (default: off)")

    sh = add_command(
        dsub, "show", parents=[common], help="everything about one device (where its secrets are, not what)",
        description="One device: board, state, groups, dates, where its password and key files are, what was deployed.",
        examples=["edgefleet device show node-001"],
    )  # fmt: skip
    sh.add_argument("device_id", metavar="ID", help="device id")
    sh.add_argument("--json", action="store_true", help="print JSON (default: off)")

    ro = add_command(
        dsub, "rotate", parents=[common], help="new broker password (and with --model-key a new model key)",
        description="New credentials for a device, or for a collector/operator login: the old password stops "
        "working as soon as the broker has reloaded (done here when it runs on --broker-dir); the device needs "
        "the new one in its config (edgefleet deploy --from-registry).",
        examples=["edgefleet device rotate node-001", "edgefleet device rotate node-001 --model-key",
                  "edgefleet device rotate operator"],
    )  # fmt: skip
    ro.add_argument("device_id", metavar="ID", help="device id, or a collector/operator login name")
    ro.add_argument(
        "--model-key", action="store_true",
        help="also a new model key (the node gets it at its next deploy; default: keep the key)",
    )  # fmt: skip

    rv = add_command(
        dsub, "revoke", parents=[common], help="remove a device's login (it can no longer connect)",
        description="Remove a device's broker login: the broker reloads and refuses it (and drops it if it is "
        "connected); its password and key files are deleted. The registry keeps the device, marked revoked; "
        "`device add` readmits it with new secrets.",
        examples=["edgefleet device revoke node-001"],
    )  # fmt: skip
    rv.add_argument("device_id", metavar="ID", help="device id")
    p.set_defaults(func=_cmd_device)


def _cmd_fleet_cmd(args: argparse.Namespace) -> int:
    from ..collect.collector import PASSWORD_ENV, broker_password
    from ..fleetops.commands import all_ok, parse_settings, render_results, send_commands
    from ..fleetops.devices import Registry
    from ..redact import refuse_password_in_url

    refuse_password_in_url(
        args.broker, "--broker", f"put it in a file given with --password-file (mode 600) or in ${PASSWORD_ENV}"
    )
    refuse_password_in_url(args.db, "--db", "use $PGPASSWORD or a ~/.pgpass file (libpq reads both)")
    if args.action == "set-config":
        settings = parse_settings(args.settings)
    elif args.settings:
        raise EdgefleetError(f"{args.action} takes no KEY=VALUE arguments (got {args.settings[0]!r})")
    else:
        settings = None
    with Registry.open(args.db, create=False) as reg:
        devices = reg.targets(args.target)
    results = send_commands(
        args.broker,
        devices,
        args.action,
        settings,
        password=broker_password(args.password_file),
        prefix=args.prefix,
        timeout_s=args.timeout,
        ca=args.ca,
    )
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        print(render_results(results))
    return 0 if all_ok(results) else 1


def register_fleet_cmd(fleet_subparsers: argparse._SubParsersAction) -> None:
    """`edgefleet fleet cmd TARGET ACTION [KEY=VALUE...]`."""
    from ..collect.collector import PASSWORD_ENV

    c = add_command(
        fleet_subparsers,
        "cmd",
        help="send ping, reboot, flush or set-config to a device, a group or all, and wait for the acks",
        description="Send one command to the devices TARGET names in the registry, over the operator's broker "
        "login (QoS 1, never retained), wait for each device's ack and print one line per device: ok, error (the "
        "node's message) or timeout, with the round trip in ms.",
        examples=CMD_EXAMPLES,
        note=CMD_NOTE,
    )
    c.add_argument("target", metavar="TARGET", help="a device id, group:NAME, or all (active registered devices)")
    c.add_argument("action", metavar="ACTION", choices=list(ACTIONS), help="one of: " + ", ".join(ACTIONS))
    c.add_argument(
        "settings", metavar="KEY=VALUE", nargs="*",
        help="set-config only: a config key and its value (JSON, else text; rates.env=0.5 sets inside a section)",
    )  # fmt: skip
    c.add_argument(
        "--broker",
        default=f"mqtt://{OPERATOR_USER}@127.0.0.1:1883",
        help="mqtt://[user@]host:port or mqtts://...; the user is an operator login (default: %(default)s); "
        "no password here: see --password-file",
    )
    c.add_argument(
        "--password-file",
        help=f"file whose first line is the operator's password, e.g. {DEFAULT_SECRETS_DIR}/operator.secret "
        f"(default: ${PASSWORD_ENV} if set)",
    )
    c.add_argument("--ca", help="CA certificate for mqtts:// (default: the system's CAs)")
    c.add_argument("--db", default=DEFAULT_DB, help="fleet database with the registry (default: %(default)s)")
    c.add_argument("--prefix", default=protocol.DEFAULT_PREFIX, help="topic prefix (default: %(default)s)")
    c.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for the acks after the last send (default: %(default)s)",
    )  # fmt: skip
    c.add_argument("--json", action="store_true", help="print JSON instead of a table (default: off)")
    c.set_defaults(func=_cmd_fleet_cmd)


def add_deploy_options(p: argparse.ArgumentParser) -> None:
    """deploy's registry options: take the device's broker login and model key from the registry."""
    p.add_argument(
        "--from-registry", action="store_true",
        help="take the node's broker login (user = device id, its password) and its model key from the device "
        "registry (edgefleet device add), sign the model with that key, and record what was deployed; "
        "--model-key-file then names the key the model file is signed with, checked first (default: off)",
    )  # fmt: skip
    p.add_argument("--db", default=DEFAULT_DB, help="with --from-registry: the fleet database (default: %(default)s)")
    p.add_argument(
        "--secrets-dir", default=DEFAULT_SECRETS_DIR,
        help="with --from-registry: the registry's secrets directory (default: %(default)s)",
    )  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    """The hook edgefleet.cli's COMMAND_MODULES calls: the `device` command (`fleet cmd` hangs under `fleet`)."""
    register_device(sub)
