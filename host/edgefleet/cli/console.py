"""`edgefleet serve` (with `serve user add|remove|list`), `alerts` and `homeassistant`: the console stage's
commands (edgefleet.console)."""

from __future__ import annotations

import argparse

from ..console import commands
from ..console.commands import DEFAULT_USERS
from ..wire import protocol
from .common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "serve",
        help="the fleet console: a live web view of the collector's database, with logins",
        description="The fleet console: fleet, device (live charts, events, commands), dead letters and collector "
        "health pages, updated live. Binds to 127.0.0.1 by default; users are managed with `serve user`.",
        examples=[
            "edgefleet serve user add alice --role operator      # asks for the password (or reads it from stdin)",
            "edgefleet serve --db sqlite:///demo/fleet.db          # http://127.0.0.1:8080/",
            "edgefleet serve --db postgresql://fleet@db/fleet --broker mqtt://operator:PW@127.0.0.1:1883 "
            "--alerts alerts.toml",
            "edgefleet serve --host 0.0.0.0 --cert console.crt --key console.key   # other hosts: TLS required",
        ],
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
    p.set_defaults(func=_serve)
    us = p.add_subparsers(dest="user_command_group", metavar="user")
    u = add_command(
        us,
        "user",
        help="manage console users",
        description="Add, remove or list console users.",
        examples=["edgefleet serve user add alice --role operator", "edgefleet serve user list"],
    )
    usub = u.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    a = add_command(
        usub,
        "add",
        help="add a user (password from the terminal or the first line of stdin)",
        description="Add a console user. The password is asked for (or read from stdin), never taken from the "
        "command line.",
        examples=[
            "edgefleet serve user add alice --role viewer",
            "edgefleet serve user add bob --role operator --replace --users /etc/edgefleet/console-users.json",
        ],
    )
    a.add_argument("name", help="user name")
    a.add_argument("--role", choices=("viewer", "operator"), default="viewer", help="role (default viewer)")
    a.add_argument("--replace", action="store_true", help="change the password/role of an existing user")
    r = add_command(
        usub,
        "remove",
        help="remove a user",
        description="Remove a console user.",
        examples=["edgefleet serve user remove alice"],
    )
    r.add_argument("name", help="user name")
    add_command(
        usub,
        "list",
        help="list users and roles",
        description="List console users and their roles.",
        examples=["edgefleet serve user list", "edgefleet serve --users demo/console-users.json user list"],
    )
    for q in (a, r):
        q.add_argument("--users", dest="user_file", help=f"users file (default: serve's --users, {DEFAULT_USERS})")

    al = add_command(
        sub,
        "alerts",
        help="evaluate alert rules on the collector's database; send to a webhook, MQTT or the log",
        description="Alert rules from a TOML file (offline, seq_gap, safe_mode, event, no_data), each sent once "
        "when it fires and once when it recovers. See docs/console.md.",
        examples=["edgefleet alerts --db sqlite:///fleet.db --rules alerts.toml"],
    )
    al.add_argument(
        "--db", default="sqlite:///fleet.db", help="the collector's database URL (default sqlite:///fleet.db)"
    )
    al.add_argument("--rules", required=True, help="alert rules file (TOML)")
    al.set_defaults(func=_alerts)

    ha = add_command(
        sub,
        "homeassistant",
        help="publish the fleet to Home Assistant (MQTT discovery), or remove devices from it",
        description="One Home Assistant device per node, a sensor per channel, the model's class and anomaly "
        "events, availability from the node's status; retained under the discovery prefix.",
        examples=[
            "edgefleet homeassistant --broker mqtt://127.0.0.1:1883",
            "edgefleet homeassistant --remove node-007      # a revoked node disappears from Home Assistant",
        ],
    )
    ha.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL (default mqtt://127.0.0.1:1883)")
    ha.add_argument("--prefix", default=protocol.DEFAULT_PREFIX, help="fleet topic prefix (default edgefleet)")
    ha.add_argument("--discovery-prefix", default="homeassistant", help="HA discovery prefix (default homeassistant)")
    ha.add_argument("--state-prefix", default="edgefleet-ha", help="where entity states go (default edgefleet-ha)")
    ha.add_argument("--remove", nargs="+", metavar="DEVICE", help="remove these devices from Home Assistant and exit")
    ha.set_defaults(func=_homeassistant)


def _serve(args: argparse.Namespace) -> int:
    if getattr(args, "user_command", None):
        return commands.manage_users(
            args.user_command, getattr(args, "user_file", None) or args.users, getattr(args, "name", None),
            getattr(args, "role", "viewer"), getattr(args, "replace", False),
        )  # fmt: skip
    return commands.serve(db=args.db, users=args.users, host=args.host, port=args.port, broker=args.broker,
                          prefix=args.prefix, cert=args.cert, key=args.key, alerts=args.alerts)  # fmt: skip


def _alerts(args: argparse.Namespace) -> int:
    return commands.run_alerts(args.db, args.rules)


def _homeassistant(args: argparse.Namespace) -> int:
    return commands.homeassistant(broker=args.broker, prefix=args.prefix, discovery_prefix=args.discovery_prefix,
                                  state_prefix=args.state_prefix, remove=args.remove)  # fmt: skip
