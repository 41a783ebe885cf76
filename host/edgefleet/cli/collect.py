"""`edgefleet collect`, `fleet status` and `export`: the collection stage's commands (edgefleet.collect)."""

from __future__ import annotations

import argparse
import json
import sys

from ..collect import collector, export, fleet
from ..collect.storage import open_storage
from ..redact import refuse_password_in_url
from . import fleetops
from .common import add_command, options

COLLECT_DEFAULTS = collector.CollectOptions()


def register_collect(sub: argparse._SubParsersAction) -> None:
    d = COLLECT_DEFAULTS
    p = add_command(
        sub,
        "collect",
        help="store fleet telemetry from MQTT in SQLite or PostgreSQL, each record once",
        examples=[
            "edgefleet collect --broker mqtt://127.0.0.1:1883 --db sqlite:///fleet.db --client-id collector-1",
            "EDGEFLEET_BROKER_PASSWORD=... edgefleet collect --broker mqtts://collector@broker:8883 --ca ca.pem \\\n"
            "      --db postgresql://fleet@db/fleet --group g --client-id collector-2",
            "edgefleet collect --password-file /etc/edgefleet/collector.pw --dead-max-rows 10000",
            "edgefleet collect --broker amqp://collector@rmq1:5672,rmq2:5672,rmq3:5672/ --db postgresql://fleet@db/fleet",
        ],
        note="see docs/collect.md (outages, dead letters, credentials)",
    )
    p.add_argument(
        "--broker",
        default=d.broker,
        help="mqtt://[user@]host:port or mqtts://... (MQTT 5), or amqp://[user@]host:port[,host:port...]/vhost "
        "(RabbitMQ, docs/scale.md); no password here: see --password-file (default: %(default)s)",
    )
    p.add_argument(
        "--password-file",
        help=f"file whose first line is the broker password (mode 600); default: ${collector.PASSWORD_ENV} if set",
    )
    p.add_argument(
        "--db",
        default=d.db,
        help="sqlite:///fleet.db (default; created if missing) or postgresql://user@host/db (password: $PGPASSWORD)",
    )
    p.add_argument("--prefix", default=d.prefix, help="topic prefix (default: edgefleet)")
    p.add_argument("--group", help="MQTT 5 shared subscription group: collectors in one group split the traffic")
    p.add_argument("--client-id", help="stable MQTT client id: the broker keeps this id's session while it is down")
    p.add_argument("--ca", help="CA certificate file for TLS (mqtts://)")
    p.add_argument("--cert", help="client certificate file for TLS")
    p.add_argument("--key", help="client private key file for TLS")
    p.add_argument(
        "--batch", type=int, default=d.batch, help="max messages per database transaction (default: %(default)s)"
    )
    p.add_argument(
        "--batch-ms", type=float, default=d.batch_ms, help="max wait to fill a batch, in ms (default: %(default)s)"
    )
    p.add_argument(
        "--inflight",
        type=int,
        default=d.inflight,
        help="max unacknowledged messages from the broker (default: %(default)s)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=d.connect_timeout,
        help="give up if the first connection fails for this long (s, default: %(default)s)",
    )
    p.add_argument(
        "--db-timeout",
        type=float,
        default=d.db_timeout,
        help="SQLite: wait this long (s) for another writer's lock before reporting an outage and retrying "
        "(default 10)",
    )
    p.add_argument(
        "--dead-max-rows",
        type=int,
        default=d.dead_max_rows,
        help=f"keep at most this many dead letters, oldest pruned (default {d.dead_max_rows})",
    )
    p.add_argument(
        "--dead-max-mb",
        type=float,
        default=d.dead_max_mb,
        help=f"keep at most this many MB of dead-letter payloads, oldest pruned (default {d.dead_max_mb:g})",
    )
    p.add_argument(
        "--durability",
        choices=("normal", "full"),
        default=d.durability,
        help="SQLite: normal survives a collector crash, full also a power loss (fsync per batch; default: %(default)s)",
    )
    p.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics on this address (loopback unless a host is given), e.g. 9108",
    )
    p.set_defaults(func=_collect)


def _collect(args: argparse.Namespace) -> int:
    return collector.run_collector(options(collector.CollectOptions, args))


# ---------------------------------------------------------------- fleet status


def register_fleet(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "fleet",
        help="fleet status from the collector's database; commands to devices",
        examples=["edgefleet fleet status --db sqlite:///fleet.db", "edgefleet fleet cmd all ping"],
    )
    fsub = p.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND", required=True)
    s = add_command(
        fsub,
        "status",
        help="online/offline, last seen, counters, flash logs and seq gaps per device",
        examples=[
            "edgefleet fleet status --db sqlite:///fleet.db",
            "PGPASSWORD=... edgefleet fleet status --db postgresql://fleet@db/fleet --json",
        ],
    )
    s.add_argument(
        "--db", default="sqlite:///fleet.db", help="the collector's database URL, never created (default: %(default)s)"
    )
    s.add_argument("--json", action="store_true", help="print the same data as JSON")
    s.set_defaults(func=_fleet_status)
    fleetops.register_fleet_cmd(fsub)


def _fleet_status(args: argparse.Namespace) -> int:
    refuse_password_in_url(args.db, "--db", "use $PGPASSWORD or a ~/.pgpass file (libpq reads both)")
    store = open_storage(args.db, create=False)
    try:
        rows = store.fleet()
        dead = store.counts()["dead_letter"]
        pruned = store.counter("dead_letter_pruned")
    finally:
        store.close()
    if args.json:
        devices = [{**r.as_dict(), **fleet.device_summary(r)} for r in rows]
        doc = {"devices": devices, "dead_letters": dead, "dead_letters_pruned": pruned}
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print(fleet.render_table(rows))
        if dead or pruned:
            print(
                f"{dead} dead letters (rejected messages) in the database"
                + (f", {pruned} older ones pruned by the dead-letter cap" if pruned else "")
            )
    return 0


# ---------------------------------------------------------------- export


def register_export(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "export",
        help="export readings to the CSV the training pipeline reads",
        examples=[
            "edgefleet export --db sqlite:///fleet.db --out data.csv",
            "edgefleet export --device node-001 --sensor imu --since 2026-11-26T08:00 --out imu.csv",
        ],
        note="see docs/data-format.md",
    )
    p.add_argument(
        "--db", default="sqlite:///fleet.db", help="the collector's database URL, never created (default: %(default)s)"
    )
    p.add_argument("--device", action="append", help="only this device (repeatable)")
    p.add_argument("--since", help="from this time on (epoch ms or ISO 8601, UTC), by the node's ts")
    p.add_argument("--until", help="before this time (epoch ms or ISO 8601, UTC)")
    p.add_argument("--sensor", action="append", help="only this sensor (repeatable)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    out, n = export.export_db(args.db, args.out, devices=args.device, since=args.since, until=args.until,
                              sensors=args.sensor, progress=not args.quiet)  # fmt: skip
    print(f"exported {n} readings to {out}")
    return 0
