"""The console's commands: `edgefleet serve` (with `serve user ...`), `edgefleet alerts`, `edgefleet homeassistant`.
Argument parsing only; the work is in app/server/users/alerts/homeassistant."""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
import threading
from pathlib import Path

from ..errors import EdgefleetError
from ..wire import protocol

log = logging.getLogger(__name__)

DEFAULT_USERS = "console-users.json"
SERVE_EXAMPLES = """examples:
  edgefleet serve user add alice --role operator      # asks for the password (or reads it from stdin)
  edgefleet serve --db sqlite:///demo/fleet.db          # http://127.0.0.1:8080/
  edgefleet serve --db postgresql://fleet@db/fleet --broker mqtt://operator:PW@127.0.0.1:1883 --alerts alerts.toml
  edgefleet serve --host 0.0.0.0 --cert console.crt --key console.key   # other hosts: TLS required
"""


def _read_password(name: str) -> str:
    """From the terminal (asked twice) or, when stdin is not a terminal, its first line: never from argv."""
    if sys.stdin.isatty():
        pw = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != pw:
            raise EdgefleetError("the passwords differ")
        return pw
    return sys.stdin.readline().rstrip("\n")


def _cmd_user(args: argparse.Namespace) -> int:
    from .users import UserStore

    path = Path(getattr(args, "user_file", None) or args.users)
    store = UserStore(path)
    if args.user_command == "add":
        store.add(args.name, args.role, _read_password(args.name), replace=args.replace)
        print(f"user {args.name} ({args.role}) saved in {path}")
    elif args.user_command == "remove":
        store.remove(args.name)
        print(f"user {args.name} removed")
    else:
        for name, role in sorted(store.names().items()):
            print(f"{name}\t{role}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    if getattr(args, "user_command", None):
        return _cmd_user(args)
    from .server import ConsoleServer

    srv = ConsoleServer(
        args.db, Path(args.users), host=args.host, port=args.port, broker=args.broker, prefix=args.prefix,
        cert=args.cert, key=args.key, alerts=Path(args.alerts) if args.alerts else None,
    )  # fmt: skip
    return srv.run()


def _cmd_alerts(args: argparse.Namespace) -> int:
    from .alerts import AlertEngine, load_rules

    engine = AlertEngine(args.db, load_rules(args.rules))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    engine.start()
    log.info("evaluating %d alert rules every %.1f s", len(engine.rules.rules), engine.rules.interval_s)
    while not stop.wait(0.5):
        pass
    engine.stop()
    return 0


def _cmd_homeassistant(args: argparse.Namespace) -> int:
    from .homeassistant import HomeAssistantBridge

    bridge = HomeAssistantBridge(args.broker, args.prefix, args.discovery_prefix, args.state_prefix).start()
    try:
        if args.remove:
            for dev in args.remove:
                topics = bridge.remove(dev)
                print(f"{dev}: removed {len(topics)} Home Assistant entities")
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        log.info("announcing the fleet under %s/ (Ctrl-C stops)", args.discovery_prefix)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        bridge.stop()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="the fleet console: a live web view of the collector's database, with logins",
        description="The fleet console: fleet, device (live charts, events, commands), dead letters and collector "
        "health pages, updated live. Binds to 127.0.0.1 by default; users are managed with `serve user`.",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--db", default="sqlite:///fleet.db", help="the collector's database URL (default sqlite:///fleet.db)"
    )
    p.add_argument("--broker", help="mqtt://operator:PASSWORD@host:port: lets operators send commands (default: none)")
    p.add_argument("--prefix", default=protocol.DEFAULT_PREFIX, help="topic prefix (default edgefleet)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others need TLS)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--cert", help="TLS certificate (PEM) for https")
    p.add_argument("--key", help="TLS private key (PEM) for https")
    p.add_argument("--users", default=DEFAULT_USERS, help=f"users file (default {DEFAULT_USERS})")
    p.add_argument("--alerts", help="alert rules (TOML) to evaluate while serving (see `edgefleet alerts`)")
    p.set_defaults(func=_cmd_serve)
    us = p.add_subparsers(dest="user_command_group", metavar="user")
    u = us.add_parser("user", help="manage console users", description="Add, remove or list console users.")
    usub = u.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    a = usub.add_parser("add", help="add a user (password from the terminal or the first line of stdin)",
                        description="Add a console user. The password is asked for (or read from stdin), never "
                        "taken from the command line.", epilog="example: edgefleet serve user add alice --role viewer")  # fmt: skip
    a.add_argument("name", help="user name")
    a.add_argument("--role", choices=("viewer", "operator"), default="viewer", help="role (default viewer)")
    a.add_argument("--replace", action="store_true", help="change the password/role of an existing user")
    r = usub.add_parser("remove", help="remove a user", description="Remove a console user.")
    r.add_argument("name", help="user name")
    usub.add_parser("list", help="list users and roles", description="List console users and their roles.")
    for q in (a, r):
        q.add_argument("--users", dest="user_file", help=f"users file (default: serve's --users, {DEFAULT_USERS})")

    al = sub.add_parser(
        "alerts",
        help="evaluate alert rules on the collector's database; send to a webhook, MQTT or the log",
        description="Alert rules from a TOML file (offline, seq_gap, safe_mode, event, no_data), each sent once "
        "when it fires and once when it recovers. See docs/console.md.",
        epilog="example: edgefleet alerts --db sqlite:///fleet.db --rules alerts.toml",
    )
    al.add_argument(
        "--db", default="sqlite:///fleet.db", help="the collector's database URL (default sqlite:///fleet.db)"
    )
    al.add_argument("--rules", required=True, help="alert rules file (TOML)")
    al.set_defaults(func=_cmd_alerts)

    ha = sub.add_parser(
        "homeassistant",
        help="publish the fleet to Home Assistant (MQTT discovery), or remove devices from it",
        description="One Home Assistant device per node, a sensor per channel, the model's class and anomaly "
        "events, availability from the node's status; retained under the discovery prefix.",
        epilog="examples:\n  edgefleet homeassistant --broker mqtt://127.0.0.1:1883\n"
        "  edgefleet homeassistant --remove node-007      # a revoked node disappears from Home Assistant",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ha.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL (default mqtt://127.0.0.1:1883)")
    ha.add_argument("--prefix", default=protocol.DEFAULT_PREFIX, help="fleet topic prefix (default edgefleet)")
    ha.add_argument("--discovery-prefix", default="homeassistant", help="HA discovery prefix (default homeassistant)")
    ha.add_argument("--state-prefix", default="edgefleet-ha", help="where entity states go (default edgefleet-ha)")
    ha.add_argument("--remove", nargs="+", metavar="DEVICE", help="remove these devices from Home Assistant and exit")
    ha.set_defaults(func=_cmd_homeassistant)
