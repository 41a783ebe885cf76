"""`edgefleet fleet status`: which nodes are online, when they were last heard, their counters, and the records
lost upstream (gaps in seq). Reads only the database the collector writes, so it works while collecting.
"""

from __future__ import annotations

import datetime as dt

from .storage import DeviceRow
from .storage.base import BOOT_COUNTERS, SEQ_JUMP, LogCounters

COUNTERS = ("sampled", "logged", "published", "dropped", "rejected", "reconnects", "corrupt", "stored")

LIFETIME_NOTE = (
    "counters are lifetime: summed over boots, each boot counted up to its last status (what a node counts after "
    "its last status before a power cut is not seen); logged is numbered by the flash log's seq, so it includes "
    "records logged after a boot's last status"
)


def lifetime(logs: list[LogCounters], log_stats: dict[str, tuple[int, int, int]]) -> dict:
    """A device's lifetime counters, and `logged` reconciled with the records stored. The one place that computes
    them: `fleet status` and the console both call it (through device_summary).

    Counters restart at every boot; the storage keeps the last counters of each (log, boot), so a lifetime counter
    is their sum: exact up to the last status of every boot, blind to what a boot counted after it (a power cut).
    `logged` is taken from the flash log instead: seq starts at 1 in a log and grows by one per record logged, so
    the highest seq known of a log (from a status or a stored record) is the number of records it logged, power
    cuts included. That makes the balance exact: logged = stored + not yet stored + missing (the gaps: dropped
    on the node or lost) + before the database's first record of a log."""
    counted = {c: sum(x.counters.get(c, 0) for x in logs) for c in BOOT_COUNTERS}
    high: dict[str, int] = {}
    for x in logs:
        high[x.log] = max(high.get(x.log, 0), x.seq)
    for lg, (_n, _lo, hi) in log_stats.items():
        high[lg] = max(high.get(lg, 0), hi)
    stored = pending = missing = before = 0
    for lg, h in high.items():
        n, lo, hi = log_stats.get(lg, (0, 1, 0))
        stored += n
        missing += (hi - lo + 1 - n) if n else 0
        before += (lo - 1) if n else 0
        pending += h - hi if n else h
    numbered = sum(high.values())
    # A node's counter never exceeds its log's seq; if a status says otherwise, the larger number is shown and
    # the excess is named in the balance instead of hidden.
    logged = max(numbered, counted["logged"])
    dropped = min(missing, counted["dropped"])
    out = {
        "boots": sum(x.boots for x in logs),
        "counters": {**counted, "logged": logged},
        "logged_counted": counted["logged"],
        "logged_after_last_status": max(0, numbered - counted["logged"]),
        "unnumbered": logged - numbered,
        "records": stored,
        "not_yet_stored": pending,
        "missing": missing,
        "dropped": dropped,
        "lost": missing - dropped,
        "before_first": before,
    }
    out["balance"] = balance_text(out)
    return out


def balance_text(lt: dict) -> str:
    """`logged` against the records stored, every difference named (never a number that quietly disagrees)."""
    logged, records = lt["counters"]["logged"], lt["records"]
    if logged == records:
        return "logged = records"
    parts = [f"logged {logged} = records {records}"]
    for key, what in (
        ("not_yet_stored", "not yet stored"),
        ("dropped", "dropped on the node (log full)"),
        ("lost", "lost (power cut, corrupt sector, or still in flight)"),
        ("before_first", "before the database's first record of a log"),
        ("unnumbered", "counted by the node beyond its log's seq (inconsistent statuses)"),
    ):
        if lt[key]:
            parts.append(f"{lt[key]} {what}")
    return " + ".join(parts)


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


def ota_text(report: dict | None) -> str | None:
    """A node's over-the-air report in a few words ("model v7 confirmed", "config v2 rolled_back: not
    confirmed..."), for a table cell: what the device last did with an update, from its own status."""
    if not report:
        return None
    text = f"{report.get('kind')} v{report.get('ver')} {report.get('state')}"
    if report.get("state") == "downloading" and report.get("size"):
        text += f" {100 * (report.get('got') or 0) // report['size']}%"
    if report.get("reason"):
        text += f": {report['reason']}"
    return text


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
        "model_ver": (st.get("ota_ver") or {}).get("model"),
        "ota": ota_text(st.get("ota")),
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
        "lifetime": (lt := lifetime(row.log_counters, row.log_stats)),
        "logged": lt["counters"]["logged"],  # flat copies for the console's sortable table
        "balance": lt["balance"],
        "lifetime_note": LIFETIME_NOTE,
    }


def _opt(x: object) -> str:
    return "-" if x is None else str(x)


def render_table(rows: list[DeviceRow]) -> str:
    header = [
        "device", "state", "last seen (UTC)", "records", "logs", "log since (UTC)", "seq", "missing", "gaps",
        "jumps", "dup", "boots", *COUNTERS, "logged vs records", "safe", "fw", "model", "heap", "error", "update",
    ]  # fmt: skip
    table = [header]
    for r in rows:
        d = device_summary(r)
        lt = d["lifetime"]
        counters = lt["counters"]
        safe = {None: "-", True: "SAFE", False: "no"}[d["safe_mode"]]
        table.append(
            [
                r.device,
                d["state"],
                _when(r.last_seen_ms),
                str(r.records),
                f"{r.logs} ({r.log or 'v1'})" if r.logs else "-",
                _when(r.log_since_ms),
                f"{r.min_seq}-{r.max_seq}" if r.min_seq is not None else "-",
                str(r.missing),
                _gaps_text(r),
                str(r.seq_jumps),
                str(r.duplicates),
                str(lt["boots"]),
                *(str(counters.get(c, "-")) for c in COUNTERS),
                lt["balance"],
                safe,
                _opt(d["fw"]),
                _opt(d["model"]) + (f" v{d['model_ver']}" if d["model_ver"] is not None else ""),
                _opt(d["heap_free"]),
                _opt(d["error"])[:40],
                _opt(d["ota"])[:60],
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
    safe_n = sum(1 for r in rows if (r.status or {}).get("safe_mode"))
    summary += f", {safe_n} in safe mode"
    lines.append(summary)
    lines.append("state, safe, fw, model and heap of an offline device are from its last online status")
    lines.append(LIFETIME_NOTE)
    return "\n".join(lines)
