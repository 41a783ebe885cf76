"""`edgefleet broker` and `edgefleet broker pki`: the broker stage's commands (edgefleet.broker)."""

from __future__ import annotations

import argparse

from ..broker import mosquitto
from .common import add_command, options

BROKER_DEFAULTS = mosquitto.BrokerOptions()


def register(sub: argparse._SubParsersAction) -> None:
    d = BROKER_DEFAULTS
    p = add_command(
        sub,
        "broker",
        help="run mosquitto for a fleet (logins, ACL, TLS)",
        description="Run mosquitto with a config suited to fleets (persistence, deep queues), secure by default: "
        "logins required, a per-identity ACL (devices, collectors, operators), each client id pinned to its user "
        "name, a message size limit, and a TLS listener with --tls-dir.",
        examples=[
            "edgefleet broker pki --out tls --hosts mqtt.lan,192.168.1.10",
            "edgefleet broker --host 0.0.0.0 --password-file passwd --tls-dir tls",
            "edgefleet broker --allow-anonymous          # throwaway loopback broker for development",
        ],
    )
    p.add_argument("--host", default=d.host, help="listen address (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=d.port, help="plain MQTT port (default: 1883)")
    p.add_argument("--data-dir", help="persistence and config directory (default: a new temporary directory)")
    p.add_argument(
        "--password-file",
        help="mosquitto_passwd file: one user per device (user name = device id), collector, operator (required "
        "unless --allow-anonymous)",
    )
    p.add_argument(
        "--allow-anonymous", action="store_true",
        help="no logins and no ACL: development only, refused unless --host is a loopback address (default: off)",
    )  # fmt: skip
    p.add_argument("--acl", action="store_true", help=argparse.SUPPRESS)  # always on with logins (kept for old scripts)
    p.add_argument("--prefix", default=d.prefix, help="topic prefix for the ACL (default: edgefleet)")
    p.add_argument(
        "--collector-user", action="append", default=None,
        help="a collector's user name (repeat for several collectors; default: collector)",
    )  # fmt: skip
    p.add_argument(
        "--operator-user", action="append", default=None,
        help="a user allowed to send commands (repeat; default: operator)",
    )  # fmt: skip
    p.add_argument("--tls-dir", help="directory written by `edgefleet broker pki`: adds a TLS listener")
    p.add_argument("--tls-port", type=int, default=d.tls_port, help="TLS listener port with --tls-dir (default: 8883)")
    p.add_argument(
        "--rabbitmq-cluster",
        type=int,
        metavar="N",
        help="instead of mosquitto: N clustered RabbitMQ nodes on loopback, haproxy on --port for the nodes' MQTT, "
        "AMQP for the collectors (docs/scale.md; default: off)",
    )
    p.add_argument(
        "--rabbitmq-users",
        help="with --rabbitmq-cluster: file of `name password` lines (collector, operator, device ids; mode 600)",
    )
    p.set_defaults(func=_broker, collector_user=None, operator_user=None)
    bsub = p.add_subparsers(dest="broker_cmd")
    k = add_command(
        bsub,
        "pki",
        help="create a CA and the broker's server certificate",
        description="Create a CA and a server certificate whose SANs are --hosts (EC P-256; keys mode 600 from "
        "creation). Nodes get ca.pem as config broker.ca, collectors as --ca.",
        examples=["edgefleet broker pki --out tls --hosts mqtt.lan,192.168.1.10,localhost"],
    )
    k.add_argument("--out", required=True, help="directory for ca.pem, ca.key, server.pem, server.key")
    k.add_argument(
        "--hosts", required=True, help="comma-separated host names and IP addresses the broker is reached by"
    )
    k.add_argument("--days", type=int, default=825, help="validity in days (default: 825)")
    k.set_defaults(func=_broker)


def _broker(args: argparse.Namespace) -> int:
    # One handler for both parsers: `broker pki` is told apart by its subcommand name, whichever parser's
    # defaults argparse applied last.
    if getattr(args, "broker_cmd", None) == "pki":
        return mosquitto.make_pki(args.out, args.hosts, days=args.days)
    return mosquitto.run_broker(options(mosquitto.BrokerOptions, args))
