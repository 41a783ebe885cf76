"""`edgefleet train` on data that is not BasicMotions (issue 16): generated datasets that reproduce each failure a
new user met (long z-normalised cases, a near-constant feature, a small normal set, data at the wrong rate, a
forest too big for the board) and real public datasets shipped inside the aeon wheel, end to end through the CLI.
Every model here is small: these tests share a ~120 s budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgefleet import cli
from edgefleet.errors import EdgefleetError
from edgefleet.model import anomaly, datasets, quantize
from edgefleet.model.train import TrainOptions, train
from edgefleet.paths import boards_dir


def _aeon_dir(name: str) -> Path:
    aeon = pytest.importorskip("aeon")
    d = Path(aeon.__file__).parent / "datasets" / "data" / name
    assert d.is_dir(), f"{name} is not in the installed aeon wheel"
    return d


def write_cases(path: Path, cases: np.ndarray, labels: list[str], split: list[str] | None = None,
                sensor: str = "sig", step_ms: int = 100, rate_column: float | None = None) -> Path:  # fmt: skip
    """Cases (n, samples) or (n, channels, samples) as an export CSV: one device series per case."""
    cases = cases if cases.ndim == 3 else cases[:, None, :]
    chans = [f"v{c}" for c in range(cases.shape[1])]
    extra = (["split"] if split else []) + (["rate_hz"] if rate_column else [])
    lines = [",".join(["device", "seq", "ts_ms", "sensor", "flags", "label", *extra, *chans])]
    for i, (case, label) in enumerate(zip(cases, labels, strict=True)):
        meta = ([split[i]] if split else []) + ([f"{rate_column:g}"] if rate_column else [])
        for s in range(case.shape[1]):
            vals = ",".join(repr(float(v)) for v in case[:, s])
            lines.append(",".join([f"case-{i:04d}", str(s + 1), str(1_700_000_000_000 + step_ms * s), sensor, "0",
                                   label, *meta, vals]))  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def znorm(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=-1, keepdims=True)) / x.std(axis=-1, keepdims=True)


def run(tmp_path: Path, *argv: str) -> tuple[int, dict | None]:
    out = tmp_path / "models"
    code = cli.main(["-q", "train", "--out", str(out), *argv])
    name = argv[argv.index("--name") + 1]
    m = out / name / "manifest.json"
    return code, json.loads(m.read_text()) if m.is_file() else None


def leftovers(tmp_path: Path) -> list[str]:
    d = tmp_path / "models"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# ---------------------------------------------------------------- generated: each failure of the issue


def noise_cases(tmp_path: Path) -> Path:
    """One window per z-normalised case of noise: the window mean is ~1e-9 (plus CSV rounding), and the labels
    carry no signal, so models lean on whatever features they find, the near-constant mean included."""
    rng = np.random.default_rng(5)
    n, length = 160, 48
    return write_cases(tmp_path / "z.csv", znorm(rng.normal(size=(n, length))), [f"c{i % 2}" for i in range(n)])


@pytest.mark.parametrize("model", ["rf", "mlp-sk"])
def test_near_constant_feature_is_quantized_robustly_and_host_and_node_agree(tmp_path, model):
    """Before: the mean was scaled to the full int16 range, so float32 rounding on the node flipped predictions
    (trained model = node runner on 82.5% of windows for rf, 60% for mlp-sk, silently). Now the range floor keeps
    them together, and the headline is the node's accuracy."""
    code, m = run(tmp_path, "--data", str(noise_cases(tmp_path)), "--model", model, "--name", "z", "--window", "48",
                  "--hop", "48", "--trees", "5", "--hidden", "16,8", "--epochs", "40")  # fmt: skip
    assert code == 0 and m is not None
    assert m["parity"]["a_vs_c"] >= 0.995, m["disagreements"][:5]
    assert "v0_mean" in m["quantization"]["floored"]
    assert m["metrics"]["accuracy_node"] == pytest.approx(m["metrics"]["accuracy"], abs=0.005)


def test_float32_emulation_bounds_the_node_features(tmp_path):
    """features_f32 (the ESP32's float32 arithmetic) stays near the float64 definition; the floor is above it."""
    rng = np.random.default_rng(1)
    w = znorm(rng.normal(size=(20, 2, 300)))
    from edgefleet.model import features

    x64 = features.compute_batch(w)
    x32 = quantize.features_f32(w)
    assert np.allclose(x32, x64, rtol=1e-3, atol=1e-4)
    q = quantize.fit(x64, features.names(["a", "b"]), w)
    err = quantize.measured_errors(w, x64)
    assert np.all(1 / q.scaling.scale.astype(np.float64) >= quantize.STEP_MARGIN * err * 0.999)


def test_parity_gate_fails_with_the_features_responsible_and_leaves_nothing(tmp_path, monkeypatch):
    """Without the floor (the old scaling), host and node disagree: train stops with one message naming the
    feature, and leaves no model directory (nor a staging one)."""
    monkeypatch.setattr(quantize, "STEP_MARGIN", 0.0)
    with pytest.raises(
        EdgefleetError, match=r"would disagree with the trained model on \d+ of \d+ test windows.*v0_mean"
    ):
        train(_ns(tmp_path, noise_cases(tmp_path), "rf", window=48, hop=48, trees=5))
    assert leftovers(tmp_path) == []


def test_forest_is_fitted_to_the_board_and_reports_the_cost(tmp_path):
    """Long z-normalised cases in many windows grow a default forest far over 32 KB: train shrinks it to the board,
    says what it chose and what it cost, and reports per-case accuracy beside per-window."""
    rng = np.random.default_rng(7)
    n, length = 160, 512
    labels = [f"k{i % 10}" for i in range(n)]
    t = np.arange(length)
    cases = np.array([np.sin(2 * np.pi * t * (3 + (i % 10)) / 64) * rng.uniform(0.5, 1.5) + rng.normal(0, 2.0, length)
                      for i in range(n)])  # fmt: skip
    split = ["test" if i % 4 == 0 else "train" for i in range(n)]
    data = write_cases(tmp_path / "long.csv", znorm(cases), labels, split=split)
    code, m = run(tmp_path, "--data", str(data), "--model", "rf", "--name", "long", "--window", "64", "--hop", "32",
                  "--trees", "10", "--board", "sim")  # fmt: skip
    assert code == 0 and m is not None
    f = m["fit"]
    assert f["resized"] and f["requested"]["body_bytes"] > 32768 >= f["chosen"]["body_bytes"]
    assert f["chosen"]["max_leaf_nodes"] is not None and m["model_file"]["bytes"] > f["chosen"]["body_bytes"]
    assert f["accuracy_requested"] is not None and f["accuracy_chosen"] is not None
    assert m["metrics"]["n_cases"] == 40  # the CSV's own split: every 4th case is test
    assert 0 <= m["metrics"]["case_accuracy_node"] <= 1
    html = (tmp_path / "models" / "long" / "report.html").read_text()
    assert html.index("accuracy on the node") < html.index("Metrics") and "Fit to sim" in html


def test_impossible_budget_is_one_message_before_training(tmp_path, capsys):
    """ACSF1-like cases of 1,460 samples as one window: features alone blow the board's time per window."""
    rng = np.random.default_rng(2)
    data = write_cases(tmp_path / "acsf.csv", znorm(rng.normal(size=(8, 1460))), [f"k{i % 2}" for i in range(8)])
    code, m = run(tmp_path, "--data", str(data), "--model", "rf", "--name", "acsf", "--window", "1460", "--hop", "1460")
    err = capsys.readouterr().err
    assert code == 2 and m is None and leftovers(tmp_path) == []
    assert "over its budget of" in err and "ms per window" in err and "Traceback" not in err


def test_anomaly_from_a_small_normal_set_warns_with_numbers(tmp_path, caplog):
    rng = np.random.default_rng(4)
    normal = rng.normal(size=(12, 2, 40))  # 12 windows: the failing case had 8 validation windows
    odd = rng.normal(size=(4, 2, 40)) * 4
    data = write_cases(tmp_path / "a.csv", np.concatenate([normal, odd]), ["ok"] * 12 + ["bad"] * 4,
                       split=["train"] * 8 + ["test"] * 8)  # fmt: skip
    code, m = run(tmp_path, "--data", str(data), "--model", "anomaly", "--normal", "ok", "--name", "a",
                  "--window", "40", "--hop", "40")  # fmt: skip
    assert code == 0
    mt = m["metrics"]
    assert "only 8 normal windows" in mt["warning"] and "at least 1000" in mt["warning"]
    assert mt["n_normal_test"] == 4 and mt["fpr_target"] == 0.01
    lo, hi = mt["fpr_ci95"]
    assert lo <= mt["fpr_measured"] <= hi and hi > 0.4  # 4 windows cannot measure 1%: the interval says so


def test_anomaly_threshold_holds_on_held_out_normal_data(tmp_path):
    """Enough normal windows: the cross-validated threshold's measured false-positive rate on unseen normal
    windows is near the 5% target (its Wilson interval covers it) and no warning."""
    rng = np.random.default_rng(6)
    n = 640
    cases = rng.normal(size=(n, 1, 16)) * rng.lognormal(0, 0.3, size=(n, 1, 1))
    split = ["train" if i < 400 else "test" for i in range(n)]
    data = write_cases(tmp_path / "n.csv", cases, ["ok"] * n, split=split)
    code, m = run(tmp_path, "--data", str(data), "--model", "anomaly", "--normal", "ok", "--name", "n",
                  "--window", "16", "--hop", "16", "--fpr", "0.05")  # fmt: skip
    assert code == 0
    mt = m["metrics"]
    assert "warning" not in mt and mt["n_normal_threshold"] == 400
    lo, hi = mt["fpr_ci95"]
    assert lo <= 0.05 <= hi, mt


def test_cv_threshold_uses_out_of_fold_scores():
    x = np.arange(100, dtype=float)[:, None]
    thr, info = anomaly.cv_threshold(lambda rows: rows.mean(), lambda c, rows: np.abs(rows[:, 0] - c), x, 0.05, 1)
    assert info["folds"] == 5 and not info["enough_normal_data"] and 35 < thr < 60
    assert anomaly.wilson(0, 100)[0] == 0 and anomaly.wilson(1, 100)[1] < 0.06


def test_wrong_sample_rate_is_refused_and_rate_is_recorded(tmp_path, capsys):
    """A node logs every 10th IMU reading: 1 Hz rows for a model on 10 Hz windows. train says so."""
    rng = np.random.default_rng(8)
    cases = rng.normal(size=(12, 6, 60))
    labels = [f"m{i % 2}" for i in range(12)]
    slow = write_cases(tmp_path / "slow.csv", cases, labels, sensor="imu", step_ms=1000)
    code, _ = run(tmp_path, "--data", str(slow), "--name", "slow", "--window", "20", "--hop", "20")
    err = capsys.readouterr().err
    assert code == 2 and "sampled at 1 Hz but the model runs at 10 Hz" in err and "edgefleet capture" in err
    declared = write_cases(tmp_path / "declared.csv", cases, labels, sensor="imu", step_ms=1000, rate_column=10)
    code, m = run(tmp_path, "--data", str(declared), "--name", "ok", "--window", "20", "--hop", "20", "--trees", "3")
    assert code == 0 and m["rate_hz"] == 10.0
    code, m = run(tmp_path, "--data", str(slow), "--name", "one", "--window", "20", "--hop", "10", "--trees", "3",
                  "--rate-hz", "1")  # fmt: skip
    assert code == 0 and m["rate_hz"] == 1.0


def test_split_by_rule_keeps_the_datasets_split(tmp_path):
    rng = np.random.default_rng(9)
    cases = rng.normal(size=(20, 1, 40)) + np.repeat(np.arange(2), 10)[:, None, None]
    labels = ["lo"] * 10 + ["hi"] * 10
    data = write_cases(tmp_path / "s.csv", cases, labels)
    w = datasets.load(str(data), 20, 20)
    datasets.apply_split_rule(w, "device=-000[0-4]$")
    assert (w.split == "test").sum() == 10
    with pytest.raises(EdgefleetError, match="bad --split-by"):
        datasets.apply_split_rule(w, "label=x")
    code, m = run(tmp_path, "--data", str(data), "--name", "s", "--window", "20", "--hop", "20", "--trees", "3",
                  "--split-by", "device=-00(0[0-4]|1[5-9])$")  # fmt: skip
    assert code == 0 and m["metrics"]["n_test"] == 20 and m["metrics"]["n_cases"] == 10


def _ns(tmp_path, data, model, **kw):
    ns = TrainOptions(data=str(data), model=model, name="g", out=str(tmp_path / "models"), sensor=None,
                      window=50, hop=25, test_size=0.25, trees=10, max_leaf_nodes=None, max_depth=None,
                      epochs=50, normal=None, fpr=0.01, target=None, seed=1, key_file=None, board="sim",
                      min_agreement=0.995, hidden=(32, 16), rate_hz=None, split_by=None)  # fmt: skip
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


# ---------------------------------------------------------------- real public datasets (aeon wheel)


def test_acsf1_long_cases_end_to_end(tmp_path):
    """ACSF1 (UCR: 10 appliance classes, 1,460 samples a case, z-normalised), its own train/test split kept,
    windows of 73 samples (a board-sized window: 146 take ~0.5 s of Python features on an ESP32), per-case vote reported beside per-window accuracy."""
    d = _aeon_dir("ACSF1")
    xs, ys, split = [], [], []
    for part in ("train", "test"):
        cases, labels = datasets.parse_ts(d / f"ACSF1_{part.upper()}.ts")
        keep = np.arange(len(cases)) % 2 == 0  # half the cases keep the test inside its time budget
        xs.append(cases[keep])
        ys += [lab for lab, k in zip(labels, keep, strict=True) if k]
        split += [part] * int(keep.sum())
    data = write_cases(tmp_path / "acsf1.csv", np.concatenate(xs), ys, split=split)
    code, m = run(tmp_path, "--data", str(data), "--model", "rf", "--name", "acsf1", "--window", "73", "--hop", "73",
                  "--trees", "8")  # fmt: skip
    assert code == 0, "ACSF1 did not train"
    mt = m["metrics"]
    assert mt["n_cases"] == 50 and m["parity"]["a_vs_c"] >= 0.995
    assert mt["accuracy_node"] > 0.2 and mt["case_accuracy_node"] > 0.3  # 10 classes: chance is 0.1


def test_gunpoint_mlp_end_to_end(tmp_path):
    """GunPoint (UCR: 2 classes, 150 samples a case) with a small net, its own split."""
    d = _aeon_dir("GunPoint")
    xs, ys, split = [], [], []
    for part in ("train", "test"):
        cases, labels = datasets.parse_ts(d / f"GunPoint_{part.upper()}.ts")
        xs.append(cases)
        ys += labels
        split += [part] * len(cases)
    data = write_cases(tmp_path / "gp.csv", np.concatenate(xs), ys, split=split)
    code, m = run(tmp_path, "--data", str(data), "--model", "mlp-sk", "--name", "gp", "--window", "150", "--hop", "150",
                  "--hidden", "16,8", "--epochs", "60")  # fmt: skip
    assert code == 0
    assert m["metrics"]["n_test"] == 150 and m["parity"]["a_vs_c"] >= 0.995 and m["metrics"]["accuracy_node"] > 0.6


def test_internal_bleeding_anomaly_end_to_end(tmp_path):
    """KDD-TSAD 135 (UCR anomaly archive, InternalBleeding16: a real medical series with one labelled anomaly):
    threshold from the normal training part, false-positive rate measured on the normal test windows."""
    import csv

    d = _aeon_dir("KDD-TSAD_135")
    rows = list(csv.DictReader((d / "135_UCR_Anomaly_InternalBleeding16_TEST.csv").open()))
    v = np.array([float(r["value"]) for r in rows])
    bad = np.array([r["is_anomaly"] == "1" for r in rows])
    win = 50
    n = len(v) // win
    cases = v[: n * win].reshape(n, win)
    labels = ["anomaly" if bad[i * win : (i + 1) * win].any() else "normal" for i in range(n)]
    split = ["train" if i < n // 2 else "test" for i in range(n)]  # the archive's own rule: the anomaly is late
    data = write_cases(tmp_path / "ib.csv", cases, labels, split=split)
    code, m = run(tmp_path, "--data", str(data), "--model", "anomaly", "--normal", "normal", "--name", "ib",
                  "--window", str(win), "--hop", str(win), "--fpr", "0.02")  # fmt: skip
    assert code == 0
    mt = m["metrics"]
    assert mt["n_normal_test"] > 50 and mt["fpr_ci95"][0] <= mt["fpr_measured"] <= mt["fpr_ci95"][1]
    assert m["parity"]["a_vs_c"] >= 0.995


def test_a_small_board_gets_a_smaller_net_and_refuses_what_cannot_fit(tmp_path, capsys):
    """A board allowing a 4 KB model body: the net's hidden layers are halved until it fits (reported), and an
    anomaly model of 72 features (a 21 KB precision matrix) is refused before training, in one message."""
    board = json.loads((boards_dir() / "sim.json").read_text())
    board["name"] = "tiny"
    board["inference"]["max_model_bytes"] = 4096
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(board))
    code, m = run(tmp_path, "--data", "basicmotions", "--model", "mlp-sk", "--name", "net", "--board", str(path),
                  "--epochs", "40")  # fmt: skip
    assert code == 0
    f = m["fit"]
    assert f["resized"] and f["requested"]["hidden"] == [32, 16] and f["chosen"]["body_bytes"] <= 4096
    assert f["chosen"]["hidden"][0] < 32 and m["board"] == "tiny"
    code, m = run(tmp_path, "--data", "basicmotions", "--model", "anomaly", "--name", "anom", "--board", str(path))
    err = capsys.readouterr().err
    assert code == 2 and m is None and "no anomaly model fits tiny: the smallest needs a 21,024-byte body" in err
    assert leftovers(tmp_path) == ["net"]


def test_heavy_tailed_feature_is_clipped_and_keeps_its_resolution():
    """One outlier window 1000x the rest: min-max scaling would leave the bulk a few int16 steps; the quantile
    range keeps thousands of steps for it and reports the clipped fraction."""
    from edgefleet.model import features

    rng = np.random.default_rng(12)
    w = rng.normal(size=(400, 1, 32))
    w[7] *= 1000.0
    x = features.compute_batch(w)
    names = features.names(["v"])
    q = quantize.fit(x, names, w)
    xq = q.scaling.apply(x).astype(int)
    i = names.index("v_std")
    assert "v_std" in q.clipped and 0 < q.clipped["v_std"] <= 0.01
    bulk = np.delete(xq[:, i], 7)
    assert bulk.max() - bulk.min() > 10000 and abs(xq[7, i]) == 32767


def test_a_restarted_flash_log_is_a_series_of_its_own(tmp_path):
    """The export lists a device's readings per flash log (seq restarts at 1 in a new log): the loader must not
    interleave two logs by seq."""
    lines = ["device,seq,ts_ms,sensor,flags,label,rate_hz,v0"]
    for run, base in ((0, 0.0), (1, 100.0)):
        for s in range(1, 21):
            lines.append(f"n1,{s},{1_700_000_000_000 + run * 10_000_000 + 100 * s},sig,0,x,10,{base + s}")
    (tmp_path / "two.csv").write_text("\n".join(lines) + "\n")
    w = datasets.load(str(tmp_path / "two.csv"), 10, 10)
    assert len(w.x) == 4 and sorted(set(w.series.tolist())) == ["n1", "n1#1"]
    assert all(np.all(np.diff(x[0]) == 1.0) for x in w.x)  # each window from one log, in order
