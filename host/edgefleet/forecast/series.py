"""One channel of one device's stored readings -> a regular series ready to forecast, and real series -> readings.

Why a grid: forecasting models assume equally spaced observations, while nodes sample with jitter, reboot and
go offline. The rule (docs/forecast.md):

- step: `--step` when given, else the median of the positive intervals between consecutive readings, rounded to
  whole seconds when it is at least one second (a node sampling every 60 s with jitter gets a 60 s grid);
- each grid cell [t, t + step) holds the mean of the readings that fall in it;
- a run of empty cells of at most `max_gap` steps is filled by linear interpolation between its neighbours;
- a longer run is a long gap: the series used is the stretch after the last long gap (a model cannot bridge
  hours of missing data honestly), and the dropped readings are reported.

Reading is read-only: SQLite is opened with `mode=ro` (a missing file is an error, never a new database),
PostgreSQL in a read-only session without running migrations.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..collect.storage import Batch, Storage
from ..errors import EdgefleetError
from ..wire import protocol

log = logging.getLogger(__name__)

DEFAULT_MAX_GAP = 3  # steps interpolated; more is a long gap
_UNITS = {"s": 1_000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def parse_duration(text: str) -> int:
    """'6h', '30m', '90s', '2d', '1w' -> milliseconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*", text or "")
    if not m:
        raise EdgefleetError(f"bad duration {text!r}", hint="a number and a unit: 90s, 30m, 6h, 2d, 1w")
    ms = round(float(m.group(1)) * _UNITS[m.group(2)])
    if ms <= 0:
        raise EdgefleetError(f"duration {text!r} must be positive")
    return ms


def fmt_duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass
class Gap:
    start_ms: int  # first missing grid time
    steps: int  # missing grid cells

    def describe(self, step_ms: int) -> str:
        t = dt.datetime.fromtimestamp(self.start_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        return f"{t} UTC, {self.steps} steps ({fmt_duration(self.steps * step_ms)})"


@dataclass
class Series:
    """A regular series: value i is at t0_ms + i * step_ms."""

    device: str
    sensor: str
    channel: str
    t0_ms: int
    step_ms: int
    y: np.ndarray
    step_rule: str  # how the step was chosen, for the report
    readings: int = 0  # stored readings of the channel
    used_readings: int = 0  # readings inside the stretch used
    interpolated: int = 0  # grid cells filled by interpolation
    short_gaps: list[Gap] = field(default_factory=list)
    long_gaps: list[Gap] = field(default_factory=list)

    @property
    def times_ms(self) -> np.ndarray:
        return self.t0_ms + np.arange(len(self.y), dtype=np.int64) * self.step_ms

    def summary(self) -> str:
        lines = [
            f"{self.device}/{self.sensor}/{self.channel}: {self.readings} readings -> {len(self.y)} steps of "
            f"{fmt_duration(self.step_ms)} ({self.step_rule})",
            f"gaps: {len(self.short_gaps)} short (<= {DEFAULT_MAX_GAP} steps) interpolated "
            f"({self.interpolated} cells), {len(self.long_gaps)} long",
        ]
        for g in self.long_gaps[-5:]:
            lines.append(f"  long gap at {g.describe(self.step_ms)}")
        if self.long_gaps:
            lines.append(
                f"  using the stretch after the last long gap: {self.used_readings} of {self.readings} readings"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------- reading the database


def open_readonly(url: str) -> Storage:
    """The fleet database, read-only: SQLite with mode=ro (no file: an error, not a new database), PostgreSQL in a
    read-only session without migrations (a database without the readings table: an error)."""
    if url.startswith("sqlite://"):
        from ..collect.storage.sqlite import SqliteStorage

        path = url[len("sqlite://") :]
        path = path[1:] if path.startswith("/") else path
        if not path or not Path(path).is_file():
            raise EdgefleetError(
                f"no database at {path or url!r}", hint="give the collector's database, e.g. --db sqlite:///fleet.db"
            )
        try:
            conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, check_same_thread=False)
            conn.execute("SELECT 1 FROM readings LIMIT 1")
        except sqlite3.DatabaseError as e:
            raise EdgefleetError(f"{path} is not an edgefleet database: {e}") from None
        return SqliteStorage(conn)
    if url.startswith(("postgresql://", "postgres://")):
        return _open_postgres_readonly(url)
    from ..collect.storage import open_storage

    return open_storage(url)  # an unsupported URL: its clear error


def _open_postgres_readonly(url: str) -> Storage:
    """PostgreSQL without the storage layer's migrations (they would create tables in an empty database)."""
    try:
        import psycopg
    except ImportError:
        raise EdgefleetError("PostgreSQL support needs psycopg 3", hint="pip install 'edgefleet[pg]'") from None
    from ..collect.storage.postgres import PostgresStorage

    try:
        conn = psycopg.connect(url, autocommit=False)
    except psycopg.Error as e:
        raise EdgefleetError(f"cannot connect to PostgreSQL: {str(e).strip()}") from None
    conn.read_only = True
    if conn.execute("SELECT to_regclass('readings')").fetchone()[0] is None:
        conn.close()
        raise EdgefleetError("this PostgreSQL database has no edgefleet readings table", hint="check --db")
    conn.rollback()
    return PostgresStorage(conn)


def load_channel(store: Storage, device: str, sensor: str, channel: str) -> tuple[np.ndarray, np.ndarray]:
    """(ts_ms, value) of one channel, sorted by time. Clear errors for a device, sensor or channel with no data."""
    ts, vals = [], []
    seen: set[str] = set()
    n = 0
    for _dev, _seq, t, _sensor, _flags, v in store.iter_readings([device], sensors=[sensor]):
        n += 1
        x = v.get(channel)
        if x is None:
            seen.update(v)
            continue
        ts.append(t)
        vals.append(float(x))
    if n == 0:
        known = sorted({(d, s) for d, _q, _t, s, _f, _v in store.iter_readings([device])})
        hint = (
            f"device {device} has sensors: {', '.join(sorted({s for _d, s in known}))}"
            if known
            else "see `edgefleet fleet status --db ...` for the devices"
        )
        raise EdgefleetError(f"no readings of sensor {sensor!r} from device {device!r}", hint=hint)
    if not ts:
        raise EdgefleetError(
            f"sensor {sensor!r} of {device!r} has no channel {channel!r}", hint="channels: " + ", ".join(sorted(seen))
        )
    t = np.asarray(ts, dtype=np.int64)
    y = np.asarray(vals, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    return t[order], y[order]


def choose_step(ts: np.ndarray, step_ms: int | None) -> tuple[int, str]:
    if step_ms:
        return step_ms, "--step"
    d = np.diff(ts)
    d = d[d > 0]
    if len(d) == 0:
        raise EdgefleetError("all readings share one timestamp: no interval to forecast on")
    med = float(np.median(d))
    step = round(med / 1000.0) * 1000 if med >= 1000 else max(1, round(med))
    return step, f"median interval {fmt_duration(step)}"


def regularize(
    device: str,
    sensor: str,
    channel: str,
    ts: np.ndarray,
    y: np.ndarray,
    step_ms: int | None = None,
    max_gap: int = DEFAULT_MAX_GAP,
) -> Series:
    """Readings -> regular grid: bucket means, short gaps interpolated, the stretch after the last long gap."""
    step, rule = choose_step(ts, step_ms)
    t0 = int(ts[0]) - int(ts[0]) % step
    idx = (ts - t0) // step
    n = int(idx[-1]) + 1
    sums = np.bincount(idx, weights=y, minlength=n)
    counts = np.bincount(idx, minlength=n)
    grid = np.full(n, np.nan)
    have = counts > 0
    grid[have] = sums[have] / counts[have]
    short, long_ = [], []
    start = 0  # first cell of the stretch in use
    i = 0
    while i < n:
        if have[i]:
            i += 1
            continue
        j = i
        while j < n and not have[j]:
            j += 1
        g = Gap(t0 + i * step, j - i)
        if j - i <= max_gap:
            short.append(g)
        else:
            long_.append(g)
            start = j
        i = j
    used = grid[start:]
    miss = np.isnan(used)
    interpolated = int(miss.sum())
    if interpolated:
        k = np.arange(len(used))
        used = used.copy()
        used[miss] = np.interp(k[miss], k[~miss], used[~miss])
    short = [g for g in short if g.start_ms >= t0 + start * step]
    return Series(
        device, sensor, channel, t0 + start * step, step, used, rule,
        readings=len(y), used_readings=int(counts[start:].sum()), interpolated=interpolated,
        short_gaps=short, long_gaps=long_,
    )  # fmt: skip


def load_series(
    url: str, device: str, sensor: str, channel: str, step_ms: int | None = None, max_gap: int = DEFAULT_MAX_GAP
) -> Series:
    store = open_readonly(url)
    try:
        ts, y = load_channel(store, device, sensor, channel)
    finally:
        store.close()
    return regularize(device, sensor, channel, ts, y, step_ms, max_gap)


# ---------------------------------------------------------------- real series shipped in PyPI wheels


def _vega(name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from vega_datasets import local_data
    except ImportError:
        raise EdgefleetError(
            "vega_datasets is not installed", hint="pip install 'edgefleet[forecast]' (vega_datasets)"
        ) from None
    df = getattr(local_data, name.replace("-", "_"))()  # local_data reads the CSV inside the wheel, no network
    t = df["date"].dt.tz_localize("UTC").astype("int64").to_numpy() // 1_000_000
    return t.astype(np.int64), df["temp"].to_numpy(dtype=np.float64)


# name -> (loader, sensor, channel, description)
REAL_SERIES = {
    "seattle-temps": (lambda: _vega("seattle-temps"), "env", "temperature",
                      "hourly air temperature in Seattle, 2010, degF (vega_datasets, inside the wheel)"),
    "sf-temps": (lambda: _vega("sf-temps"), "env", "temperature",
                 "hourly air temperature in San Francisco, 2010, degF (vega_datasets, inside the wheel)"),
}  # fmt: skip


def real_series(name: str) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(ts_ms, values, sensor, channel) of a bundled real series."""
    if name not in REAL_SERIES:
        raise EdgefleetError(f"unknown series {name!r}", hint="one of " + ", ".join(REAL_SERIES))
    loader, sensor, channel, _ = REAL_SERIES[name]
    t, y = loader()
    return t, y, sensor, channel


def import_readings(store: Storage, device: str, sensor: str, channel: str, ts: np.ndarray, y: np.ndarray) -> int:
    """Store (ts, value) pairs as the device's readings, through the same parser and write path the collector
    uses (one transaction per message of at most protocol.MAX_RECORDS records). seq continues after the
    device's highest stored seq, so importing twice appends rather than overwrites. Returns readings stored."""
    row = store.execute("SELECT max(seq) FROM readings WHERE device = ?", (device,)).fetchone()
    seq0 = int(row[0] or 0) if row else 0
    stored = 0
    topic = protocol.topic(protocol.DEFAULT_PREFIX, device, "telemetry")
    for i in range(0, len(y), protocol.MAX_RECORDS):
        recs = [
            {"seq": seq0 + k + 1, "ts": int(ts[k]), "flags": 0, "sensor": sensor, "vals": {channel: float(y[k])}}
            for k in range(i, min(i + protocol.MAX_RECORDS, len(y)))
        ]
        received = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        try:
            msg = protocol.parse(
                protocol.DEFAULT_PREFIX, topic, protocol.encode(protocol.telemetry(device, recs)), received
            )
        except protocol.ProtocolError as e:
            raise EdgefleetError(f"cannot store these readings as {device}/{sensor}/{channel}: {e.reason}") from None
        batch = Batch()
        batch.readings[device] = list(msg.records)
        batch.seen[device] = received
        stored += store.write(batch).stored
    return stored
