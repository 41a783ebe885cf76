"""`edgefleet fleet status`: which nodes are online, when they were last heard, their counters, and the records
lost upstream (gaps in seq). Reads only the database the collector writes, so it works while collecting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from .storage import DeviceRow, open_storage

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


def device_summary(row: DeviceRow) -> dict:
    """One device as the operator sees it, from the stored state and the last *online* status (kept while the
    node is offline, so its counters, safe mode and versions stay visible). `fleet status` and the console both
    use this, so they never disagree."""
    st = row.status or {}
    return {
        "device": row.device,
        "state": row.state or "?",
        "state_ms": row.state_ms,
        "last_seen_ms": row.last_seen_ms,
        "status_ms": st.get("ts"),
        "safe_mode": bool(st.get("safe_mode")) if st else None,
        "error": st.get("error"),
        "fw": st.get("fw"),
        "model": st.get("model"),
        "heap_free": st.get("heap_free"),
        "boot": st.get("boot"),
        "uptime_s": st.get("uptime_s"),
        "e_buffer": st.get("e_buffer"),
        "r_noise": st.get("r_noise"),
        "records": row.records,
        "min_seq": row.min_seq,
        "max_seq": row.max_seq,
        "missing": row.missing,
        "gaps": [list(g) for g in row.gaps],
        "duplicates": row.duplicates,
        "counters": st.get("counters", {}),
    }


def _opt(x: object) -> str:
    return "-" if x is None else str(x)


def render_table(rows: list[DeviceRow]) -> str:
    header = [
        "device",
        "state",
        "last seen (UTC)",
        "records",
        "seq",
        "missing",
        "gaps",
        "dup",
        *COUNTERS,
        "safe",
        "fw",
        "model",
        "heap",
        "error",
    ]
    table = [header]
    for r in rows:
        d = device_summary(r)
        counters = d["counters"]
        safe = {None: "-", True: "SAFE", False: "no"}[d["safe_mode"]]
        table.append(
            [
                r.device,
                d["state"],
                _when(r.last_seen_ms),
                str(r.records),
                f"{r.min_seq}-{r.max_seq}" if r.min_seq is not None else "-",
                str(r.missing),
                _gaps_text(r),
                str(r.duplicates),
                *(str(counters.get(c, "-")) for c in COUNTERS),
                safe,
                _opt(d["fw"]),
                _opt(d["model"]),
                _opt(d["heap_free"]),
                _opt(d["error"])[:40],
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    online = sum(1 for r in rows if r.state == "online")
    safe_n = sum(1 for r in rows if (r.status or {}).get("safe_mode"))
    lines.append(
        f"{len(rows)} devices, {online} online, {sum(r.missing for r in rows)} records missing upstream, "
        f"{safe_n} in safe mode"
    )
    lines.append("counters of an offline device are from its last online status")
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    store = open_storage(args.db)
    try:
        rows = store.fleet()
        dead = store.counts()["dead_letter"]
    finally:
        store.close()
    if args.json:
        json.dump(
            {"devices": [{**r.as_dict(), **device_summary(r)} for r in rows], "dead_letters": dead},
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print(render_table(rows))
        if dead:
            print(f"{dead} dead letters (rejected messages) in the database")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="fleet status from the collector's database")
    fsub = p.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND", required=True)
    s = fsub.add_parser("status", help="online/offline, last seen, counters and seq gaps per device")
    s.add_argument("--db", default="sqlite:///fleet.db", help="the collector's database URL")
    s.add_argument("--json", action="store_true", help="print the same data as JSON")
    s.set_defaults(func=_cmd_status)
