"""The node's `forecast` model kind: trained on the change from the last value, scored on a real series against
naive and seasonal naive on the held-out split, its prediction band carried to the node in the model file."""

from __future__ import annotations

import json

import numpy as np

from edgefleet.cli import main
from edgefleet.collect.export import export_csv
from edgefleet.collect.storage import open_storage
from edgefleet.forecast import node as fnode
from edgefleet.forecast import series
from edgefleet.model import modelfile


def test_train_forecast_reports_baselines_on_a_real_series(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/fleet.db"
    store = open_storage(url)
    try:
        ts, y, sensor, channel = series.real_series("sf-temps")
        series.import_readings(store, "sf", sensor, channel, ts, y)
        export_csv(store, tmp_path / "sf.csv")
    finally:
        store.close()
    argv = ["-q", "train", "--data", str(tmp_path / "sf.csv"), "--model", "forecast", "--name", "fc"]
    rc = main([*argv, "--out", str(tmp_path), "--window", "24", "--hop", "4", "--sensor", "env"])
    out = capsys.readouterr().out
    assert rc == 0
    m = json.loads((tmp_path / "fc" / "manifest.json").read_text())
    met = m["metrics"]
    assert met["target"] == "change from the last value"
    # scored on temperatures (~50 degF), not on the changes: an A_forecast on changes would be far below 0
    assert met["A_forecast"] > 0.98 and met["naive_A_forecast"] > 0.95
    assert met["beats_naive"] and met["vs_naive"] < 0.9
    # a window of 24 hourly samples: seasonal naive is "same as 24 h ago", which this forest does not beat
    assert not met["beats_seasonal_naive"]
    assert "does NOT beat seasonal naive" in out and f"naive MAE {met['naive_mae']:.4g}" in out
    band = m["threshold"]
    assert band > 0 and abs(modelfile.decode((tmp_path / "fc" / "model.efm").read_bytes()).threshold - band) < 1e-4
    assert "residual outside" in out


def test_verdict_says_when_both_baselines_are_beaten():
    ts = {
        "y": np.array([0.5, -0.5, 1.0]),
        "last": np.array([10.0, 10.5, 10.0]),
        "season_ago": np.array([9.0, 12.0, 9.0]),
    }
    m = fnode.regress_metrics(ts, np.array([0.4, -0.4, 0.9]))
    assert m["beats_naive"] and m["beats_seasonal_naive"] and abs(m["mae"] - 0.1) < 1e-9
    assert "beats both" in fnode.verdict(m)
    m = fnode.regress_metrics(ts, np.array([-0.5, 0.5, -1.0]))
    assert "does NOT beat naive;" in fnode.verdict(m)  # it still beats the worse seasonal naive here
