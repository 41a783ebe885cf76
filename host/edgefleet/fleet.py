"""`edgefleet fleet status`: which nodes are online, when they were last heard, their counters, and the records
lost upstream (gaps in seq). Reads only the database the collector writes, so it works while collecting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from .redact import refuse_password_in_url
from .storage import DeviceRow, open_storage
from .storage.base import SEQ_JUMP

COUNTERS = ("sampled", "logged", "published", "dropped", "rejected", "reconnects", "corrupt")


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _gaps_text(row: DeviceRow) -> str:
    if not row.gaps:
        return "-"
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in row.gaps[:3]]
    more = " ..." if len(row.gaps) > 3 else ""
    return ",".join(parts) + more


def render_table(rows: list[DeviceRow]) -> str:
    header = [
        "device", "state", "last seen (UTC)", "records", "logs", "log since (UTC)", "seq", "missing", "gaps",
        "jumps", "dup", *COUNTERS,
    ]  # fmt: skip
    table = [header]
    for r in rows:
        counters = (r.status or {}).get("counters", {})
        table.append(
            [
                r.device,
                r.state or "?",
                _when(r.last_seen_ms),
                str(r.records),
                f"{r.logs} ({r.log or 'v1'})" if r.logs else "-",
                _when(r.log_since_ms),
                f"{r.min_seq}-{r.max_seq}" if r.min_seq is not None else "-",
                str(r.missing),
                _gaps_text(r),
                str(r.seq_jumps),
                str(r.duplicates),
                *(str(counters.get(c, "-")) for c in COUNTERS),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    online = sum(1 for r in rows if r.state == "online")
    summary = f"{len(rows)} devices, {online} online, {sum(r.missing for r in rows)} records missing upstream"
    jumps = sum(r.seq_jumps for r in rows)
    if jumps:
        summary += f", {jumps} seq jumps over {SEQ_JUMP:,} (anomalies, not counted as missing)"
    restarted = sum(1 for r in rows if r.logs > 1)
    if restarted:
        summary += f", {restarted} devices with a new flash log"
    lines.append(summary)
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    refuse_password_in_url(args.db, "--db", "use $PGPASSWORD or a ~/.pgpass file (libpq reads both)")
    store = open_storage(args.db, create=False)
    try:
        rows = store.fleet()
        dead = store.counts()["dead_letter"]
        pruned = store.counter("dead_letter_pruned")
    finally:
        store.close()
    if args.json:
        doc = {"devices": [r.as_dict() for r in rows], "dead_letters": dead, "dead_letters_pruned": pruned}
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print(render_table(rows))
        if dead or pruned:
            print(
                f"{dead} dead letters (rejected messages) in the database"
                + (f", {pruned} older ones pruned by the dead-letter cap" if pruned else "")
            )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="fleet status from the collector's database")
    fsub = p.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND", required=True)
    s = fsub.add_parser(
        "status",
        help="online/offline, last seen, counters, flash logs and seq gaps per device",
        description="online/offline, last seen, counters, flash logs and seq gaps per device",
        epilog="examples:\n  edgefleet fleet status --db sqlite:///fleet.db\n"
        "  PGPASSWORD=... edgefleet fleet status --db postgresql://fleet@db/fleet --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "--db", default="sqlite:///fleet.db", help="the collector's database URL, never created (default: %(default)s)"
    )
    s.add_argument("--json", action="store_true", help="print the same data as JSON")
    s.set_defaults(func=_cmd_status)
