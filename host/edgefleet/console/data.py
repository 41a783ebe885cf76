"""What the console reads from the collector's database, on SQLite and PostgreSQL alike.

Every query here is bounded by an index or by a watermark, so a page costs the same on a day-old database as on a
fresh one: the fleet list reads the devices table plus one index lookup per device for min/max seq (no scan of
readings); a device chart is thinned on the server (stride sampling by seq, flagged samples kept); live updates
ask only for what is newer than the last row sent (seq per device, last_seen_ms for the fleet).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..fleet import device_summary
from ..storage import DeviceRow, Storage

MAX_POINTS = 4000


def _status(x: Any) -> dict | None:
    if x is None:
        return None
    return json.loads(x) if isinstance(x, str | bytes) else x


def fleet_rows(store: Storage, since_ms: int | None = None, device: str | None = None) -> list[dict]:
    """Device summaries (the same as `fleet status`) for every device, or only those changed after `since_ms`.

    Seq gaps are counted, not listed: missing = (max seq - min seq + 1) - records stored, from index lookups."""
    sql = (
        "SELECT d.device, d.state, d.state_ms, d.first_seen_ms, d.last_seen_ms, d.duplicates, d.status, d.records,"
        " (SELECT min(seq) FROM readings r WHERE r.device = d.device),"
        " (SELECT max(seq) FROM readings r WHERE r.device = d.device),"
        " (SELECT min(seq) FROM events e WHERE e.device = d.device),"
        " (SELECT max(seq) FROM events e WHERE e.device = d.device)"
        " FROM devices d"
    )
    params: tuple = ()
    if since_ms is not None:
        sql += " WHERE d.last_seen_ms > ? OR d.state_ms > ?"
        params = (since_ms, since_ms)
    elif device is not None:
        sql += " WHERE d.device = ?"
        params = (device,)
    out = []
    for r in store.execute(sql + " ORDER BY d.device", params).fetchall():
        lows = [x for x in (r[8], r[10]) if x is not None]
        highs = [x for x in (r[9], r[11]) if x is not None]
        lo, hi = (min(lows), max(highs)) if lows else (None, None)
        records = int(r[7])
        missing = max(0, hi - lo + 1 - records) if lo is not None else 0
        row = DeviceRow(
            device=r[0], state=r[1], state_ms=r[2], first_seen_ms=int(r[3]), last_seen_ms=int(r[4]),
            records=records, duplicates=int(r[5]), min_seq=lo, max_seq=hi, missing=missing, gaps=[],
            status=_status(r[6]),
        )  # fmt: skip
        out.append(device_summary(row))
    return out


def device_row(store: Storage, device: str) -> dict | None:
    """One device's summary (the `fleet status` row, gaps counted)."""
    rows = fleet_rows(store, device=device)
    return rows[0] if rows else None


@dataclass
class Series:
    """Chart data of one device: per sensor, timestamps, flags and one list of values per channel."""

    sensors: dict[str, dict]
    stride: dict[str, int]
    raw_rows: int
    since_ms: int
    until_ms: int
    last_seq: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def series(store: Storage, device: str, since_ms: int, until_ms: int, points: int = 1500) -> Series:
    """Readings of `device` in [since_ms, until_ms), at most ~`points` per sensor plus the flagged ones.

    Why stride sampling by seq rather than min/max buckets: it is one pass over the device's key range with no
    JSON decoding on the database side (which differs between SQLite and PostgreSQL and costs more than the
    scan). Samples the node flagged (cleaning: range, Hampel, stuck) are always kept so faults stay visible."""
    points = max(10, min(points, MAX_POINTS))
    counts = {
        s: int(n)
        for s, n in store.execute(
            "SELECT sensor, count(*) FROM readings WHERE device = ? AND ts_ms >= ? AND ts_ms < ? GROUP BY sensor",
            (device, since_ms, until_ms),
        ).fetchall()
    }
    stride = {s: max(1, n // points) for s, n in counts.items()}
    sensors: dict[str, dict] = {}
    last_seq = 0
    if counts:
        conds, params = [], [device, since_ms, until_ms]
        for s, k in stride.items():
            conds.append("(sensor = ? AND seq % ? = 0)")
            params += [s, k]
        sql = (
            "SELECT sensor, seq, ts_ms, flags, vals FROM readings WHERE device = ? AND ts_ms >= ? AND ts_ms < ?"
            f" AND ({' OR '.join(conds)} OR flags <> 0) ORDER BY seq"
        )
        for sensor, seq, ts, flags, vals in store.execute(sql, params).fetchall():
            _append(sensors, sensor, ts, flags, _status(vals) or {})
            last_seq = max(last_seq, int(seq))
    return Series(sensors, stride, sum(counts.values()), since_ms, until_ms, last_seq)


def _append(sensors: dict, sensor: str, ts: int, flags: int, vals: dict) -> None:
    s = sensors.get(sensor)
    if s is None:
        s = sensors[sensor] = {"ts": [], "flags": [], "channels": {}}
    n = len(s["ts"])
    s["ts"].append(ts)
    s["flags"].append(flags)
    for ch, v in vals.items():
        col = s["channels"].get(ch)
        if col is None:
            col = s["channels"][ch] = [None] * n
        col.append(v)
    for col in s["channels"].values():
        if len(col) < n + 1:
            col.append(None)


def raw_readings(store: Storage, device: str, since_ms: int, until_ms: int) -> int:
    """The baseline the benchmark compares against: every reading of the range, decoded. Returns the row count."""
    n = 0
    for _ in store.iter_readings(devices=[device], since_ms=since_ms, until_ms=until_ms):
        n += 1
    return n


def new_readings(store: Storage, device: str, after_seq: int, limit: int = 2000) -> tuple[dict, int]:
    """Readings stored after seq `after_seq` (a primary-key range): the live tail of a device chart."""
    sensors: dict[str, dict] = {}
    last = after_seq
    rows = store.execute(
        "SELECT sensor, seq, ts_ms, flags, vals FROM readings WHERE device = ? AND seq > ? ORDER BY seq LIMIT ?",
        (device, after_seq, limit),
    ).fetchall()
    for sensor, seq, ts, flags, vals in rows:
        _append(sensors, sensor, ts, flags, _status(vals) or {})
        last = max(last, int(seq))
    return sensors, last


def events(store: Storage, device: str, since_ms: int = 0, until_ms: int | None = None, limit: int = 500) -> list:
    sql = "SELECT seq, ts_ms, kind, label, score, model, action, sensor FROM events WHERE device = ? AND ts_ms >= ?"
    params: list = [device, since_ms]
    if until_ms is not None:
        sql += " AND ts_ms < ?"
        params.append(until_ms)
    rows = store.execute(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit)).fetchall()
    keys = ("seq", "ts_ms", "kind", "label", "score", "model", "action", "sensor")
    return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]


def events_after(store: Storage, device: str, after_seq: int, limit: int = 500) -> list:
    rows = store.execute(
        "SELECT seq, ts_ms, kind, label, score, model, action, sensor FROM events WHERE device = ? AND seq > ?"
        " ORDER BY seq LIMIT ?",
        (device, after_seq, limit),
    ).fetchall()
    keys = ("seq", "ts_ms", "kind", "label", "score", "model", "action", "sensor")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def acks(store: Storage, device: str, limit: int = 100) -> list[dict]:
    rows = store.execute(
        "SELECT cmd_id, ok, body, received_ms FROM acks WHERE device = ? ORDER BY id DESC LIMIT ?", (device, limit)
    ).fetchall()
    return [{"id": r[0], "ok": bool(r[1]), "body": _status(r[2]), "received_ms": r[3]} for r in rows]


def status_history(store: Storage, device: str, limit: int = 50) -> list[dict]:
    rows = store.execute(
        "SELECT received_ms, state FROM status_history WHERE device = ? ORDER BY id DESC LIMIT ?", (device, limit)
    ).fetchall()
    return [{"received_ms": r[0], "state": r[1]} for r in rows]


def dead_letters(store: Storage, limit: int = 200) -> list[dict]:
    rows = store.execute(
        "SELECT id, received_ms, topic, reason, size, payload FROM dead_letter ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    return [
        {"id": r[0], "received_ms": r[1], "topic": r[2], "reason": r[3], "size": r[4],
         "payload": bytes(r[5])[:300].decode("utf-8", "replace")}
        for r in rows
    ]  # fmt: skip


def health(store: Storage) -> dict:
    """Collector health as the database shows it: table sizes, last write, newest dead letter."""
    counts = store.counts()
    last = store.execute("SELECT max(last_seen_ms) FROM devices").fetchone()[0]
    return {"backend": store.name, "schema": store.schema_version(), "counts": counts, "last_write_ms": last}
