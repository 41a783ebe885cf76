"""`edgefleet forecast` end to end through the CLI: real series from installed wheels imported into a real
database (SQLite and PostgreSQL), resampling and gap rules, outputs, and every bad input as one clear message."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from edgefleet.cli import main
from edgefleet.collect.storage import open_storage
from edgefleet.errors import EdgefleetError
from edgefleet.forecast import backtest, series

H = 3_600_000


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["-q", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _store(url: str, device: str, sensor: str, channel: str, ts, y) -> None:
    store = open_storage(url)
    try:
        series.import_readings(store, device, sensor, channel, np.asarray(ts, dtype=np.int64), np.asarray(y))
    finally:
        store.close()


def test_wheel_series_are_local_files():
    """The real series come from files inside the installed wheels, not from a download."""
    import vega_datasets

    root = Path(vega_datasets.__file__).parent
    assert (root / "_data" / "seattle-temps.csv").is_file() or any(root.rglob("seattle-temps.csv"))
    assert any(root.rglob("sf-temps.csv"))
    ts, y, sensor, channel = series.real_series("seattle-temps")
    assert len(y) == 8759 and (sensor, channel) == ("env", "temperature")
    assert np.all(np.diff(ts) > 0)


def test_grid_rule_interpolates_short_gaps_and_reports_long_ones():
    # readings every 60 s with +-5 s jitter; a 2-step hole, then a 20-step outage, then 40 steps
    rng = np.random.default_rng(3)
    t = np.arange(200) * 60_000 + rng.integers(-5_000, 5_000, 200) + 1_700_000_000_000
    keep = np.ones(200, bool)
    keep[50:52] = False  # short
    keep[100:120] = False  # long
    ts, y = t[keep], np.sin(np.arange(200) / 10.0)[keep]
    s = series.regularize("d", "env", "temperature", ts, y)
    assert s.step_ms == 60_000 and s.step_rule.startswith("median interval")
    assert len(s.long_gaps) == 1 and s.long_gaps[0].steps >= 19
    assert s.t0_ms >= t[120] - 60_000  # only the stretch after the outage is used
    assert s.used_readings == 80 and len(s.y) >= 80 and not np.isnan(s.y).any()
    full = series.regularize("d", "env", "temperature", ts[:95], y[:95])
    assert len(full.short_gaps) == 1 and full.interpolated == 2 and not full.long_gaps
    assert series.regularize("d", "env", "temperature", ts, y, step_ms=120_000).step_rule == "--step"
    assert series.parse_duration("6h") == 6 * H
    with pytest.raises(EdgefleetError, match="bad duration"):
        series.parse_duration("6 hours")


def test_forecast_real_series_sqlite(tmp_path, capsys):
    db = tmp_path / "fleet.db"
    url = f"sqlite:///{db}"
    rc, out, _ = _cli(capsys, "forecast", "import-series", "--db", url, "--series", "seattle-temps", "--device", "sea")
    assert rc == 0 and "stored 8759 readings" in out
    before = (db.stat().st_size, db.stat().st_mtime_ns)
    out_dir = tmp_path / "fc"
    argv = ["forecast", "--db", url, "--device", "sea", "--sensor", "env", "--channel", "temperature"]
    rc, out, err = _cli(capsys, *argv, "--horizon", "6h", "--model", "theta", "--folds", "3", "--out", str(out_dir))
    assert rc == 0, err
    assert (db.stat().st_size, db.stat().st_mtime_ns) == before  # read-only
    assert "steps of 1h (median interval 1h)" in out and "1 short" in out  # the DST hour, interpolated
    rows = list(csv.DictReader((out_dir / "backtest.csv").open()))
    assert [r["model"] for r in rows] == ["naive", "seasonal-naive", "theta"]
    theta = rows[2]
    assert float(theta["vs_naive"]) < 0.9 and float(theta["MASE_snaive"]) > 0
    assert 0 < float(theta["A_forecast"]) <= 1
    fc = list(csv.DictReader((out_dir / "forecast.csv").open()))
    assert len(fc) == 6 and fc[0]["time"] == "2011-01-01T00:00:00Z"
    for r in fc:
        assert float(r["lo95"]) <= float(r["lo80"]) <= float(r["forecast"]) <= float(r["hi80"]) <= float(r["hi95"])
    assert (out_dir / "forecast.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["model"] == "theta" and summary["season"] == 24 and summary["horizon_steps"] == 6
    assert "| naive |" in out and "| seasonal-naive |" in out


def test_forecast_postgres_with_long_gap(pg_cluster, tmp_path, capsys):
    url = pg_cluster.new_database()
    ts, y, _, _ = series.real_series("sf-temps")
    keep = np.ones(len(y), bool)
    keep[-400:-380] = False  # a 20-hour outage: the series after it is used, the gap reported
    _store(url, "sf", "env", "temperature", ts[keep], y[keep])
    argv = ["forecast", "--db", url, "--device", "sf", "--sensor", "env", "--channel", "temperature"]
    rc, out, err = _cli(
        capsys, *argv, "--horizon", "3h", "--model", "naive", "--folds", "2", "--out", str(tmp_path / "o")
    )
    assert rc == 0, err
    assert "1 long" in out and "using the stretch after the last long gap: 380 of" in out
    empty = pg_cluster.new_database()  # read-only: an empty database gets an error, not the fleet schema
    rc, _, err = _cli(capsys, "forecast", "--db", empty, *argv[3:], "--horizon", "3h")
    assert rc == 2 and "no edgefleet readings table" in err
    import psycopg

    with psycopg.connect(empty) as c:
        assert c.execute("SELECT to_regclass('readings')").fetchone()[0] is None


@pytest.fixture
def small_db(tmp_path):
    url = f"sqlite:///{tmp_path}/fleet.db"
    t0 = 1_700_000_000_000
    _store(url, "short", "env", "temperature", t0 + np.arange(12) * H, 20 + np.arange(12) * 0.1)
    _store(url, "flat", "env", "temperature", t0 + np.arange(100) * H, np.full(100, 21.5))
    _store(url, "ok", "env", "temperature", t0 + np.arange(60) * H, 20 + np.sin(np.arange(60) / 4))
    return url


@pytest.mark.parametrize(
    ("device", "channel", "horizon", "message"),
    [
        ("short", "temperature", "2h", "too little data: short/env/temperature has 12 points"),
        ("flat", "temperature", "2h", "is constant (21.5 at every step)"),
        ("ok", "humdity", "2h", "has no channel 'humdity'"),
        ("ok", "temperature", "3d", "horizon of 72 steps is longer than the history (60 steps)"),
        ("ok", "temperature", "50h", "too little data to backtest a 50-step horizon"),
        ("nobody", "temperature", "2h", "no readings of sensor 'env' from device 'nobody'"),
    ],
)
def test_bad_input_is_one_clear_message(small_db, tmp_path, capsys, device, channel, horizon, message):
    argv = ["forecast", "--db", small_db, "--device", device, "--sensor", "env", "--channel", channel]
    rc, _out, err = _cli(capsys, *argv, "--horizon", horizon, "--model", "naive", "--out", str(tmp_path / "o"))
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_missing_database_is_not_created(tmp_path, capsys):
    rc, _, err = _cli(
        capsys, "forecast", "--db", f"sqlite:///{tmp_path}/nope.db", "--device", "a", "--sensor", "env",
        "--channel", "temperature", "--horizon", "1h",
    )  # fmt: skip
    assert rc == 2 and "no database at" in err
    assert not (tmp_path / "nope.db").exists()


def test_unknown_model_is_refused_before_loading(tmp_path, capsys):
    rc, _, err = _cli(capsys, "forecast", "--device", "a", "--sensor", "s", "--channel", "c", "--horizon", "1h",
                      "--model", "lstm", "--db", f"sqlite:///{tmp_path}/x.db")  # fmt: skip
    assert rc == 2 and "unknown model 'lstm'" in err and "Traceback" not in err


def test_prophet_fits_offline():
    """Prophet's wheel carries its compiled Stan model: a fit needs no network (backtest folds of 1 model)."""
    from edgefleet.forecast import models

    assert models.prophet_available()
    y = 20 + np.sin(np.arange(24 * 10) * 2 * np.pi / 24) + np.linspace(0, 1, 240)
    bt = backtest.run(y, 6, ["naive", "seasonal-naive", "prophet"], 24, H, folds=1)
    assert bt.score("prophet").vs_naive < 1


def test_a_forecast_leaves_out_zero_actuals_and_says_so():
    y = np.tile([0.0, 1.0, 2.0, 1.0], 10)  # a zero every 4 steps; season 4
    bt = backtest.run(y, 4, ["naive", "seasonal-naive"], 4, H, folds=2)
    sn = bt.score("seasonal-naive")
    assert sn.mae == 0 and sn.a_forecast == 1.0 and sn.zeros == 2
    assert bt.score("naive").a_forecast is not None and "leaves out 2 of 8" in bt.notes[-1]
    assert bt.best == "seasonal-naive" and bt.score("naive").vs_snaive == float("inf")
    assert np.isnan(sn.mase_snaive)  # the in-sample seasonal naive made no error: no scale, shown n/a
