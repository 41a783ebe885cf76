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

from ..collect.fleet import device_summary
from ..collect.storage import DeviceRow, Storage
from ..fleetops import rollout

MAX_POINTS = 4000
SCAN_FACTOR = 8  # ranges up to this many times the points asked are scanned (exact, every flagged sample)
MAX_LOOKUPS = 6_000  # seq lookups per log of one long-range chart (a rare sensor then gets fewer points)
MIN_SHARE = 0.02  # a sensor rarer than this in the range gets fewer than `points`


def _status(x: Any) -> dict | None:
    if x is None:
        return None
    return json.loads(x) if isinstance(x, str | bytes) else x


def logs_of(store: Storage, device: str, table: str = "readings") -> list[str]:
    """The flash-log ids `device` has records from (protocol v2; '' for v1), by index skips, not a scan."""
    out: list[str] = []
    row = store.execute(f"SELECT min(log) FROM {table} WHERE device = ?", (device,)).fetchone()
    while row is not None and row[0] is not None:
        out.append(row[0])
        row = store.execute(f"SELECT min(log) FROM {table} WHERE device = ? AND log > ?", (device, row[0])).fetchone()
    return out


def current_log(store: Storage, device: str) -> str | None:
    """The log of the device's most recently received reading (a board's current flash log)."""
    best: tuple[int, str] | None = None
    for lg in logs_of(store, device):
        r = store.execute(
            "SELECT received_ms FROM readings WHERE device = ? AND log = ? ORDER BY seq DESC LIMIT 1", (device, lg)
        ).fetchone()
        if r is not None and (best is None or int(r[0]) >= best[0]):
            best = (int(r[0]), lg)
    return best[1] if best else None


def _log_stats(store: Storage, device: str) -> tuple[int | None, int | None, int, dict[str, tuple[int, int, int]]]:
    """(min seq, max seq) of the current log, records missing over all logs and (count, min, max) per log, for a
    device with several logs (rare: a board replaced or its log erased). Scans that device's records only."""
    per: dict[str, list[int]] = {}
    for table in ("readings", "events"):
        for lg, n, lo, hi in store.execute(
            f"SELECT log, count(*), min(seq), max(seq) FROM {table} WHERE device = ? GROUP BY log", (device,)
        ).fetchall():
            a = per.setdefault(lg, [0, int(lo), int(hi)])
            a[0] += int(n)
            a[1], a[2] = min(a[1], int(lo)), max(a[2], int(hi))
    missing = sum(hi - lo + 1 - n for n, lo, hi in per.values())
    cur = current_log(store, device)
    lo, hi = (per[cur][1], per[cur][2]) if cur in per else (None, None)
    return lo, hi, missing, {lg: (a[0], a[1], a[2]) for lg, a in per.items()}


def fleet_rows(store: Storage, since_ms: int | None = None, device: str | None = None) -> list[dict]:
    """Device summaries (the same as `fleet status`) for every device, or only those changed after `since_ms`.

    Seq gaps are counted, not listed: for a device with one flash log, missing = (max seq - min seq + 1) -
    records stored, all from index lookups; a device with several logs is counted log by log."""
    sql = (
        "SELECT d.device, d.state, d.state_ms, d.first_seen_ms, d.last_seen_ms, d.duplicates, d.status, d.records,"
        " (SELECT min(log) FROM readings r WHERE r.device = d.device),"
        " (SELECT max(log) FROM readings r WHERE r.device = d.device),"
        " (SELECT min(log) FROM events e WHERE e.device = d.device),"
        " (SELECT max(log) FROM events e WHERE e.device = d.device),"
        + ",".join(
            f" (SELECT {agg}(seq) FROM {t} x WHERE x.device = d.device"
            f" AND x.log = (SELECT max(log) FROM {t} y WHERE y.device = d.device))"
            for t in ("readings", "events")
            for agg in ("min", "max")
        )
        + " FROM devices d"
    )
    params: tuple = ()
    if since_ms is not None:
        sql += " WHERE d.last_seen_ms > ? OR d.state_ms > ?"
        params = (since_ms, since_ms)
    elif device is not None:
        sql += " WHERE d.device = ?"
        params = (device,)
    out = []
    found = store.execute(sql + " ORDER BY d.device", params).fetchall()
    # lifetime counters (fleet.lifetime): the per-boot rows of these devices, one small-table query
    per_log = store.log_counters(None if since_ms is None and device is None else [r[0] for r in found])
    stages = rollout.device_stages(store)
    for r in found:
        dev, records = r[0], int(r[7])
        logs = {x for x in r[8:12] if x is not None}
        lo = hi = None
        missing = 0
        per: dict[str, tuple[int, int, int]] = {}
        if len(logs) == 1:  # one aggregate per subquery above: each answered from the primary-key index
            lows = [x for x in (r[12], r[14]) if x is not None]
            highs = [x for x in (r[13], r[15]) if x is not None]
            lo, hi = min(lows), max(highs)
            missing = max(0, hi - lo + 1 - records)
            per = {next(iter(logs)): (records, lo, hi)}
        elif logs:
            lo, hi, missing, per = _log_stats(store, dev)
        row = DeviceRow(
            device=dev, state=r[1], state_ms=r[2], first_seen_ms=int(r[3]), last_seen_ms=int(r[4]),
            records=records, duplicates=int(r[5]), min_seq=lo, max_seq=hi, missing=missing, gaps=[],
            status=_status(r[6]), logs=len(logs), log_counters=per_log.get(dev, []), log_stats=per,
        )  # fmt: skip
        out.append({**device_summary(row), "rollout": stages.get(dev)})
    return out


def device_row(store: Storage, device: str) -> dict | None:
    """One device's summary (the `fleet status` row, gaps counted)."""
    rows = fleet_rows(store, device=device)
    return rows[0] if rows else None


@dataclass
class Series:
    """Chart data of one device: per sensor, timestamps, flags and one list of values per channel; `raw_rows` is
    the number of records (seqs) in the range."""

    sensors: dict[str, dict]
    stride: dict[str, int]
    raw_rows: int
    since_ms: int
    until_ms: int
    last_seq: int
    log: str | None = None

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _seq_at(store: Storage, device: str, log: str, ts_ms: int, lo: int, hi: int) -> int:
    """The first seq in [lo, hi] of `log` whose reading has ts >= ts_ms (hi + 1 if none), by binary search over
    primary-key lookups: O(log n) whatever the size of the history. Relies on the node's timestamps rising
    with seq, as its clock does within a log."""
    probe = "SELECT seq, ts_ms FROM readings WHERE device = ? AND log = ? AND seq >= ? ORDER BY seq LIMIT 1"
    end = hi + 1
    while lo < end:
        mid = (lo + end) // 2
        row = store.execute(probe, (device, log, mid)).fetchone()
        if row is None or int(row[0]) > hi:
            end = mid
        elif int(row[1]) >= ts_ms:
            end = min(mid, int(row[0]))
        else:
            lo = int(row[0]) + 1
    return lo


def series(store: Storage, device: str, since_ms: int, until_ms: int, points: int = 1500) -> Series:
    """Readings of `device` in [since_ms, until_ms), about `points` per sensor, from every flash log of the
    device that has readings in the range.

    Per log, the range's seqs are found by binary search (so a 5-minute view of a device with a year of history
    touches 5 minutes of rows). A short range is scanned: every k-th record of each sensor (k from the sensors'
    shares in the newest records of the range) and every sample the node flagged (cleaning: range, Hampel,
    stuck). A long range is probed: evenly spaced seqs looked up by primary key, so a day costs what 5 minutes
    cost (there, flagged samples are shown when they are among those drawn; fault events are always drawn).
    Why stride sampling rather than min/max buckets: no JSON decoding in the database (which differs between
    SQLite and PostgreSQL and costs more than the scan itself)."""
    points = max(10, min(points, MAX_POINTS))
    rows: list = []
    stride: dict[str, int] = {}
    span = 0
    for lg in logs_of(store, device):
        got, st, n = _series_log(store, device, lg, since_ms, until_ms, points)
        rows += got
        span += n
        stride.update(st)
    rows.sort(key=lambda r: r[2])  # several logs: in time order
    sensors: dict[str, dict] = {}
    for sensor, _seq, ts, flags, vals in rows:
        _append(sensors, sensor, ts, flags, _status(vals) or {})
    cur = current_log(store, device)
    last = store.execute("SELECT max(seq) FROM readings WHERE device = ? AND log = ?", (device, cur)).fetchone()
    last_seq = int(last[0]) if last and last[0] is not None else 0
    return Series(sensors, stride, span, since_ms, until_ms, last_seq, cur)


def _series_log(store: Storage, device: str, log: str, since_ms: int, until_ms: int, points: int) -> tuple:
    # two queries: SQLite answers min() or max() alone from the index, both at once by a scan
    key = (device, log)
    first = store.execute("SELECT min(seq) FROM readings WHERE device = ? AND log = ?", key).fetchone()[0]
    last = store.execute("SELECT max(seq) FROM readings WHERE device = ? AND log = ?", key).fetchone()[0]
    if first is None:
        return [], {}, 0
    lo = _seq_at(store, device, log, since_ms, int(first), int(last))
    hi = _seq_at(store, device, log, until_ms, lo, int(last)) - 1
    span = max(0, hi - lo + 1)
    if span == 0:
        return [], {}, 0
    sample = store.execute(
        "SELECT sensor, count(*) FROM (SELECT sensor FROM readings WHERE device = ? AND log = ? AND seq BETWEEN ?"
        " AND ? ORDER BY seq DESC LIMIT 5000) s GROUP BY sensor",
        (device, log, lo, hi),
    ).fetchall()
    taken = sum(int(n) for _s, n in sample) or 1
    stride = {s: max(1, int(span * int(n) / taken) // points) for s, n in sample}
    if span <= SCAN_FACTOR * points * max(1, len(stride)):
        rows = _scan(store, device, log, lo, hi, since_ms, until_ms, stride, max(1, span // points))
    else:
        rows = _probe(store, device, log, lo, hi, since_ms, until_ms, points, sample, taken)
    return rows, stride, span


def _scan(store: Storage, device: str, log: str, lo: int, hi: int, since_ms: int, until_ms: int,
          stride: dict[str, int], other: int) -> list:  # fmt: skip
    """Short ranges: one pass over the range's rows, every k-th of each sensor and every flagged sample."""
    mod = "%%" if store.placeholder == "%s" else "%"  # psycopg reads a lone % as a placeholder
    conds, params = [], [device, log, lo, hi, since_ms, until_ms]
    for s, k in stride.items():
        conds.append(f"(sensor = ? AND seq {mod} ? = 0)")
        params += [s, k]
    conds.append(f"(sensor NOT IN ({','.join('?' * len(stride))}) AND seq {mod} ? = 0)")
    params += [*stride, other]
    sql = (
        "SELECT sensor, seq, ts_ms, flags, vals FROM readings WHERE device = ? AND log = ? AND seq BETWEEN ? AND ?"
        f" AND ts_ms >= ? AND ts_ms < ? AND ({' OR '.join(conds)} OR flags <> 0) ORDER BY seq"
    )
    return store.execute(sql, params).fetchall()


def _probe(store: Storage, device: str, log: str, lo: int, hi: int, since_ms: int, until_ms: int, points: int,
           sample: list, taken: int) -> list:  # fmt: skip
    """Long ranges: primary-key lookups of evenly spaced seqs, enough of them that the rarest sensor of the
    sample gets ~`points`, then each sensor thinned to `points` here. Cost grows with the points drawn, not
    with the rows in the range."""
    min_share = max(MIN_SHARE, min(int(n) / taken for _s, n in sample)) if sample else 1.0
    lookups = min(MAX_LOOKUPS, int(points / min_share))
    k = max(1, (hi - lo + 1) // lookups)
    if store.placeholder == "%s":  # PostgreSQL: one primary-key lookup per seq (LATERAL); not `seq = ANY(array)`
        # as a filter, which a planner without statistics applied to every row (quadratic), nor a join it
        # hashed over the whole table (LIMIT 1 keeps the subquery from being flattened into one); vals as text,
        # decoded only for the rows kept below
        rows = store.execute(
            "SELECT r.sensor, r.seq, r.ts_ms, r.flags, r.vals FROM unnest(?::bigint[]) AS s(x) CROSS JOIN LATERAL"
            " (SELECT sensor, seq, ts_ms, flags, vals::text AS vals FROM readings WHERE device = ? AND log = ?"
            " AND seq = s.x AND ts_ms >= ? AND ts_ms < ? LIMIT 1) r ORDER BY r.seq",
            (list(range(lo, hi + 1, k)), device, log, since_ms, until_ms),
        ).fetchall()
    else:  # SQLite: a generated series joined by primary key
        rows = store.execute(
            "WITH RECURSIVE s(x) AS (SELECT ? UNION ALL SELECT x + ? FROM s WHERE x + ? <= ?)"
            " SELECT r.sensor, r.seq, r.ts_ms, r.flags, r.vals FROM s JOIN readings r"
            " ON r.device = ? AND r.log = ? AND r.seq = s.x WHERE r.ts_ms >= ? AND r.ts_ms < ? ORDER BY r.seq",
            (lo, k, k, hi, device, log, since_ms, until_ms),
        ).fetchall()
    per: dict[str, int] = {}
    for r in rows:
        per[r[0]] = per.get(r[0], 0) + 1
    every = {sensor: max(1, -(-n // points)) for sensor, n in per.items()}
    seen: dict[str, int] = {}
    out = []
    for r in rows:
        i = seen.get(r[0], 0)
        seen[r[0]] = i + 1
        if i % every[r[0]] == 0 or r[3]:
            out.append(r)
    return out


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


def new_readings(store: Storage, device: str, log: str | None, after_seq: int, limit: int = 2000) -> tuple[dict, int]:
    """Readings of `log` stored after seq `after_seq` (a primary-key range): the live tail of a device chart."""
    sensors: dict[str, dict] = {}
    last = after_seq
    rows = store.execute(
        "SELECT sensor, seq, ts_ms, flags, vals FROM readings WHERE device = ? AND log = ? AND seq > ?"
        " ORDER BY seq LIMIT ?",
        (device, log or "", after_seq, limit),
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
    rows = store.execute(sql + " ORDER BY ts_ms DESC LIMIT ?", (*params, limit)).fetchall()
    keys = ("seq", "ts_ms", "kind", "label", "score", "model", "action", "sensor")
    return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]


def events_after(store: Storage, device: str, log: str | None, after_seq: int, limit: int = 500) -> list:
    """Events of `log` after seq `after_seq` (a primary-key range)."""
    rows = store.execute(
        "SELECT seq, ts_ms, kind, label, score, model, action, sensor FROM events WHERE device = ? AND log = ?"
        " AND seq > ? ORDER BY seq LIMIT ?",
        (device, log or "", after_seq, limit),
    ).fetchall()
    keys = ("seq", "ts_ms", "kind", "label", "score", "model", "action", "sensor")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def event_log(store: Storage, device: str) -> tuple[str | None, int]:
    """(log, last seq) of the device's events: the live events watermark."""
    best: tuple[int, str, int] | None = None
    for lg in logs_of(store, device, "events"):
        r = store.execute(
            "SELECT received_ms, seq FROM events WHERE device = ? AND log = ? ORDER BY seq DESC LIMIT 1", (device, lg)
        ).fetchone()
        if r is not None and (best is None or int(r[0]) >= best[0]):
            best = (int(r[0]), lg, int(r[1]))
    return (best[1], best[2]) if best else (None, 0)


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


def rollouts(store: Storage) -> list[dict]:
    """Every rollout, newest first, with its stages' counts and gates (the rollout tables; [] before the first
    rollout, and the console never creates them)."""
    if not store.has_table("rollouts"):
        return []
    rs = rollout.RolloutStore(store)
    out = []
    for row in sorted(rs.all_rollouts(), key=lambda r: r.created_ms, reverse=True):
        out.append({
            "id": row.id, "kind": row.kind, "version": row.version, "target": row.target, "state": row.state,
            "reason": row.reason, "stage": min(row.stage, len(row.stages) - 1) + 1, "n_stages": len(row.stages),
            "phase": row.phase, "created_ms": row.created_ms, "updated_ms": row.updated_ms,
            "sha256": row.sha256[:16], "stages": rollout.stage_counts(row, rs.devices(row.id)),
            "gates": [row.gates[k] for k in sorted(row.gates, key=int)],
        })  # fmt: skip
    return out
