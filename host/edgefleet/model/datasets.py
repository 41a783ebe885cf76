"""Training data: the collector's export CSV, or BasicMotions shipped inside the aeon package (offline).

Both end as labelled windows: an array (n_windows, channels, window) plus one label per window (majority of
the samples' labels), so training never knows where the data came from.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..board.firmware_shared import kind_channels
from ..errors import EdgefleetError

log = logging.getLogger(__name__)

IMU_CHANNELS = kind_channels()["mpu6050"]  # the node's IMU driver: accelerometer in g, gyro in deg/s
# BasicMotions records acceleration in m/s^2 and rotation in rad/s (standing shows ~1 g of gravity spread over
# the axes, badminton reaches 29 m/s^2 and 35 rad/s). The node's MPU6050 driver reports g and deg/s, so the
# dataset is converted to the node's units before anything else sees it: a model trained here then reads the
# same numbers a node computes, and a replay on the sim board drives the simulated chip within its range.
G = 9.80665
BASICMOTIONS_TO_NODE_UNITS = np.array([1 / G] * 3 + [180 / np.pi] * 3).reshape(1, 6, 1)
FIXED = ("device", "seq", "ts_ms", "sensor", "flags", "label")
# Optional columns after FIXED that are not channels (docs/data-format.md "Training columns"): the flash-log id,
# the dataset's own split (train/test) and the sample rate of the reading's series.
META = ("log", "split", "rate_hz")
SPLITS = ("train", "test")
BASICMOTIONS_HZ = 10.0  # 100 samples over 10 s per case
RATE_TOLERANCE = 0.05


@dataclass
class Windows:
    """Windows of one sensor: x is (n, channels, window) float64, y a label per window ('' = unlabelled)."""

    sensor: str
    channels: tuple[str, ...]
    window: int
    hop: int
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # source series of each window
    split: np.ndarray | None = None  # "train"/"test" per window when the dataset defines it
    nxt: np.ndarray | None = None  # (n, channels): the sample after each window (NaN at a series' end)
    rate_hz: float | None = None  # samples per second of the series (None: unknown)
    series: np.ndarray | None = None  # name of each window's source series (device id, or case)


def windows_of(
    series: np.ndarray, labels: list[str], window: int, hop: int, nxt: list | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Cut one series (channels x samples) into windows; each window's label is its samples' majority label.

    `nxt`, when given, receives the sample following each window (NaN after the last), the forecast target.
    """
    xs, ys = [], []
    n = series.shape[1]
    for start in range(0, n - window + 1, hop):
        xs.append(series[:, start : start + window])
        votes = Counter(labels[start : start + window]).most_common(1)
        ys.append(votes[0][0] if votes else "")
        if nxt is not None:
            end = start + window
            nxt.append(series[:, end] if end < n else np.full(series.shape[0], np.nan))
    return xs, ys


def _check_window(window: int, hop: int) -> None:
    if window < 4 or hop < 1:
        raise EdgefleetError(f"bad window/hop {window}/{hop}", hint="window >= 4 samples and hop >= 1")


# ---------------------------------------------------------------- BasicMotions (aeon)


def basicmotions_dir() -> Path:
    try:
        import aeon
    except ImportError as e:
        raise EdgefleetError(
            "the aeon package is not installed", hint="pip install aeon (it ships BasicMotions)"
        ) from e
    d = Path(aeon.__file__).parent / "datasets" / "data" / "BasicMotions"
    if not (d / "BasicMotions_TRAIN.ts").is_file():
        raise EdgefleetError(f"BasicMotions files not found in {d}", hint="reinstall aeon: pip install -U aeon")
    return d


def parse_ts(path: Path) -> tuple[np.ndarray, list[str]]:
    """A .ts file (sktime/aeon format, equal length, labelled) -> (cases, dims, length), labels."""
    cases, labels = [], []
    in_data = False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *dims, label = line.split(":")
        cases.append([[float(v) for v in d.split(",")] for d in dims])
        labels.append(label.strip().lower())
    if not cases:
        raise EdgefleetError(f"{path}: no @data cases")
    return np.asarray(cases, dtype=np.float64), labels


def basicmotions_cases(part: str) -> tuple[np.ndarray, list[str]]:
    """One split ("train" or "test") of BasicMotions as (cases, 6 channels, 100 samples) in node units."""
    cases, labels = parse_ts(basicmotions_dir() / f"BasicMotions_{part.upper()}.ts")
    return cases * BASICMOTIONS_TO_NODE_UNITS, labels


def load_basicmotions(window: int, hop: int) -> Windows:
    """Both splits of BasicMotions, windowed; `split` keeps the dataset's own train/test division."""
    _check_window(window, hop)
    xs, ys, groups, split, nxt = [], [], [], [], []
    for part in ("train", "test"):
        cases, labels = basicmotions_cases(part)
        if window > cases.shape[2]:
            raise EdgefleetError(f"window {window} longer than BasicMotions' {cases.shape[2]} samples per case")
        for i, (case, label) in enumerate(zip(cases, labels, strict=True)):
            wx, wy = windows_of(case, [label] * case.shape[1], window, hop, nxt)
            xs += wx
            ys += wy
            groups += [(1000 if part == "test" else 0) + i] * len(wx)
            split += [part] * len(wx)
    return Windows("imu", IMU_CHANNELS, window, hop, np.asarray(xs), np.asarray(ys), np.asarray(groups), np.asarray(split),
                   np.asarray(nxt), BASICMOTIONS_HZ, np.asarray([str(g) for g in groups]))  # fmt: skip


# ---------------------------------------------------------------- export CSV


def _columns(path: Path, header: list[str] | None) -> tuple[dict[str, int], list[str]]:
    """Positions of the optional META columns and the channel names, from the header."""
    if header is None or tuple(header[:6]) != FIXED or len(header) < 7:
        raise EdgefleetError(
            f"{path}: not an edgefleet export CSV (header {header[:7] if header else 'missing'})",
            hint="the header must start with " + ",".join(FIXED) + ",<channel>... (see docs/data-format.md)",
        )
    meta = {c: i for i, c in enumerate(header) if i >= 6 and c in META}
    chans = [c for i, c in enumerate(header) if i >= 6 and c not in META]
    if not chans:
        raise EdgefleetError(f"{path}: no channel columns after {','.join(FIXED)}")
    return meta, chans


def series_rate(path: Path, key: str, ts: list[int], declared: list[str]) -> float | None:
    """A series' sample rate: the median of its rate_hz cells when the column is there (the export writes each
    row's logging rate), else from the median ts_ms step."""
    cells = [c for c in declared if c]
    if cells:
        try:
            return float(np.median([float(c) for c in cells]))
        except ValueError as e:
            raise EdgefleetError(f"{path}: series {key}: rate_hz is not a number ({e})") from e
    steps = np.diff(np.asarray(ts, dtype=np.float64))
    steps = steps[steps > 0]
    return 1000.0 / float(np.median(steps)) if len(steps) >= 2 else None


def common_rate(path: Path, rates: dict[str, float | None]) -> float | None:
    known = {k: r for k, r in rates.items() if r}
    if not known:
        return None
    vals = np.array(list(known.values()))
    mid = float(np.median(vals))
    off = {k: r for k, r in known.items() if abs(r - mid) > RATE_TOLERANCE * mid}
    if off:
        shown = ", ".join(f"{k} {r:g} Hz" for k, r in list(off.items())[:5])
        raise EdgefleetError(f"{path}: series sampled at different rates: most at {mid:g} Hz, but {shown}",
                             hint="export one rate at a time (--devices/--sensors), or capture at one rate")  # fmt: skip
    return mid


def load_csv(path: Path, window: int, hop: int, sensor: str | None = None, captures: list | None = None) -> Windows:
    """The collector's export CSV (docs/data-format.md): rows grouped by (device, sensor) and windowed.

    captures (edgefleet capture's intervals): keep only rows inside one, labelled with its label, each interval
    a series of its own (full-rate rows, not windowed together with the slow rows around them)."""
    _check_window(window, hop)
    if not path.is_file():
        raise EdgefleetError(f"no such data file: {path}", hint="give an export CSV or --data basicmotions")
    series: dict[tuple[str, str], list[tuple[int, list[float], str, str, int]]] = {}
    rate_cells: dict[tuple[str, str], list[str]] = {}
    channels_of: dict[str, list[str]] = {}
    last_seq: dict[tuple[str, str], int] = {}
    runs: dict[tuple[str, str], int] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        meta, chans = _columns(path, header)
        chan_idx = [i for i, c in enumerate(header) if i >= 6 and c not in META]
        si, ri = meta.get("split"), meta.get("rate_hz")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise EdgefleetError(f"{path}:{lineno}: {len(row)} fields, header has {len(header)}")
            dev, seq, ts, sens, _flags, label = row[:6]
            if sensor and sens != sensor:
                continue
            part = row[si].strip().lower() if si is not None else ""
            if part not in ("", *SPLITS):
                raise EdgefleetError(f"{path}:{lineno}: split {row[si]!r} is not one of {', '.join(SPLITS)} (or empty)")
            try:
                present = [(c, float(row[i])) for c, i in zip(chans, chan_idx, strict=True) if row[i] != ""]
                seqn, tsn = int(seq), int(ts)
            except ValueError as e:
                raise EdgefleetError(f"{path}:{lineno}: not a number ({e})") from e
            names = [c for c, _ in present]
            known = channels_of.setdefault(sens, names)
            if names != known:
                raise EdgefleetError(f"{path}:{lineno}: sensor {sens} has channels {names}, earlier rows {known}")
            # a device's flash log that started over (seq back to 1) is a new run in the export: its own series
            last = last_seq.get((dev, sens))
            run = runs[(dev, sens)] = runs.get((dev, sens), 0) + (last is not None and seqn <= last)
            last_seq[(dev, sens)] = seqn
            key = dev if run == 0 else f"{dev}#{run}"
            if captures is not None:
                cap = next(
                    (c for c in captures if c.device == dev and c.sensor == sens and c.start_ms <= tsn <= c.end_ms),
                    None,
                )
                if cap is None:
                    continue
                key, label = f"{dev}@{cap.start_ms}", cap.label
            series.setdefault((key, sens), []).append((seqn, [v for _, v in present], label, part, tsn))
            if ri is not None:
                rate_cells.setdefault((key, sens), []).append(row[ri].strip())
    if not series:
        raise EdgefleetError(f"{path}: no readings" + (f" of sensor {sensor}" if sensor else "")
                             + (" inside the captured intervals" if captures is not None else ""),
                             hint="export the time of the captures (edgefleet export --since/--until)" if captures else None)  # fmt: skip
    sensors = sorted({s for _, s in series})
    if len(sensors) > 1:
        raise EdgefleetError(f"{path} holds several sensors {sensors}", hint="pick one with --sensor NAME")
    sens = sensors[0]
    xs, ys, groups, nxt, splits, names_ = [], [], [], [], [], []
    rates = {}
    for gi, ((dev, _), rows) in enumerate(sorted(series.items())):
        rows.sort(key=lambda r: r[0])
        rates[dev] = series_rate(path, dev, [r[4] for r in rows], rate_cells.get((dev, sens), []))
        arr = np.asarray([r[1] for r in rows], dtype=np.float64).T
        wx, wy = windows_of(arr, [r[2] for r in rows], window, hop, nxt)
        _, wsplit = windows_of(arr, [r[3] for r in rows], window, hop)
        log.info("%s/%s: %d readings -> %d windows", dev, sens, len(rows), len(wx))
        xs += wx
        ys += wy
        splits += wsplit
        groups += [gi] * len(wx)
        names_ += [dev] * len(wx)
    if not xs:
        raise EdgefleetError(f"{path}: fewer readings than one window ({window})", hint="use a smaller --window")
    split = np.asarray(splits) if any(splits) else None
    if split is not None and not all(splits):
        raise EdgefleetError(f"{path}: the split column is filled for some windows and empty for others",
                             hint="fill split (train/test) on every row of the sensor, or leave it empty everywhere")  # fmt: skip
    return Windows(sens, tuple(channels_of[sens]), window, hop, np.asarray(xs), np.asarray(ys), np.asarray(groups), split,
                   np.asarray(nxt), common_rate(path, rates), np.asarray(names_))  # fmt: skip


def apply_split_rule(w: Windows, rule: str) -> None:
    """--split-by device=REGEX: windows of series whose device id matches REGEX are the test split, the rest
    train (the dataset's own division, kept; overrides a split column)."""
    import re

    key, sep, pattern = rule.partition("=")
    if key != "device" or not sep or not pattern:
        raise EdgefleetError(
            f"bad --split-by {rule!r}", hint="device=REGEX, e.g. device=^test- (matching devices are test)"
        )
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise EdgefleetError(f"bad --split-by regular expression {pattern!r}: {e}") from e
    if w.series is None:
        raise EdgefleetError("--split-by needs an export CSV (series named by device)")
    test = np.array([bool(rx.search(str(d))) for d in w.series])
    if test.all() or not test.any():
        raise EdgefleetError(f"--split-by {rule!r} puts {int(test.sum())} of {len(test)} windows in the test split",
                             hint="the rule must match some devices but not all")  # fmt: skip
    w.split = np.where(test, "test", "train")


def load(data: str, window: int, hop: int, sensor: str | None = None, labels: str | None = None) -> Windows:
    """labels: a captures file (edgefleet capture) whose intervals select and label the CSV's rows."""
    if data == "basicmotions":
        if labels:
            raise EdgefleetError("--labels applies to an export CSV, not to basicmotions")
        return load_basicmotions(window, hop)
    if data.endswith(".csv") or Path(data).exists():
        captures = None
        if labels:
            from .capture import read_captures

            captures = read_captures(Path(labels))
        return load_csv(Path(data), window, hop, sensor, captures)
    raise EdgefleetError(f"unknown dataset {data!r}", hint="give a path to an export CSV, or 'basicmotions'")
