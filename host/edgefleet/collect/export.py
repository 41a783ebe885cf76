"""`edgefleet export`: readings from the collector's database to the training CSV (docs/data-format.md).

Format (docs/data-format.md): UTF-8, header `device,seq,ts_ms,sensor,flags,label,rate_hz,<channel>...`, one row per
reading record sorted by device then seq, channel columns = union over the exported sensors (empty where a record
has no such channel), label empty (the user fills it). Two passes over the database: the first finds the channel
columns, the second streams rows, so memory stays flat for any export size.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import os
from pathlib import Path

from tqdm import tqdm

from ..errors import EdgefleetError
from ..redact import refuse_password_in_url
from .storage import Storage, open_storage

log = logging.getLogger(__name__)

FIXED_COLUMNS = ["device", "seq", "ts_ms", "sensor", "flags", "label"]


def parse_time(text: str) -> int:
    """Epoch milliseconds, or an ISO 8601 date/time (UTC unless it has an offset) -> epoch ms."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise EdgefleetError(
            f"bad time {text!r}", hint="use epoch milliseconds or ISO 8601, e.g. 2026-11-26T08:00:00"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def export_csv(
    store: Storage,
    out: Path,
    devices: list[str] | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    sensors: list[str] | None = None,
    progress: bool = False,
) -> int:
    """Write the CSV; return the number of rows. Writes to a temporary file and renames, so a failed export
    never leaves a truncated file that looks complete."""
    channels: dict[str, None] = {}
    total = 0
    for *_, vals in store.iter_readings(devices, since_ms, until_ms, sensors):
        total += 1
        for k in vals:
            if k not in channels:
                channels[k] = None
    columns = list(channels)
    last_ts: dict[tuple[str, str], int] = {}
    tmp = out.with_name(out.name + ".part")
    n = 0
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow([*FIXED_COLUMNS, "rate_hz", *columns])
            rows = store.iter_readings(devices, since_ms, until_ms, sensors)
            for device, seq, ts, sensor, flags, vals in tqdm(rows, total=total, disable=not progress, unit="rows"):
                get = vals.get
                w.writerow([device, seq, ts, sensor, flags, "", row_rate(last_ts, device, sensor, ts),
                            *(_cell(get(c)) for c in columns)])  # fmt: skip
                n += 1
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise EdgefleetError(f"cannot write {out}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def check_out_path(text: str) -> Path:
    """The --out path must name a file in an existing, writable directory: say so before reading the database."""
    if not text.strip():
        raise EdgefleetError("--out is empty", hint="give the CSV file to write, e.g. --out fleet.csv")
    out = Path(text)
    if out.is_dir() or text.endswith(("/", "\\")):
        raise EdgefleetError(f"--out {text} is a directory", hint=f"name a file in it, e.g. --out {out / 'fleet.csv'}")
    parent = out.parent
    if not parent.is_dir():
        raise EdgefleetError(f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgefleetError(f"cannot write to directory {parent} (permission denied)")
    if out.exists() and not os.access(out, os.W_OK):
        raise EdgefleetError(f"cannot write {out} (permission denied)")
    return out


def row_rate(last_ts: dict[tuple[str, str], int], device: str, sensor: str, ts: int) -> str:
    """rate_hz of a reading: 1000 / its ts step from the previous reading of the same device and sensor (the rate
    the node logged at, e.g. 1 Hz for IMU logged every 10th reading, 10 Hz while capturing); empty for the first."""
    prev = last_ts.get((device, sensor))
    last_ts[(device, sensor)] = ts
    return f"{1000.0 / (ts - prev):.4g}" if prev is not None and ts > prev else ""


def _cell(x: object) -> object:
    return "" if x is None else x


def export_db(db: str, out_text: str, *, devices: list[str] | None = None, since: str | None = None,
              until: str | None = None, sensors: list[str] | None = None, progress: bool = True) -> tuple[Path, int]:  # fmt: skip
    """`edgefleet export`: the readings of the database at `db` (never created) that match, to the CSV
    `out_text`; times are epoch ms or ISO 8601. Returns (the CSV's path, readings written)."""
    out = check_out_path(out_text)
    refuse_password_in_url(db, "--db", "use $PGPASSWORD or a ~/.pgpass file (libpq reads both)")
    store = open_storage(db, create=False)
    try:
        n = export_csv(
            store,
            out,
            devices=devices or None,
            since_ms=parse_time(since) if since else None,
            until_ms=parse_time(until) if until else None,
            sensors=sensors or None,
            progress=progress,
        )
    finally:
        store.close()
    if n == 0:
        log.warning("no readings matched; %s has only the header", out)
    return out, n
