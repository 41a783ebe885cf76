"""Model pipeline on the host: data, features (contract 1), model file (contract 3), training with parity
between (a) the trained model, (b) emlearn's C code built with gcc -Wall -Werror and (c) the node runner on
MicroPython, the C core, and the errors a user gets for bad input."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet import cli
from edgefleet.errors import EdgefleetError
from edgefleet.model import datasets, modelfile, parity
from edgefleet.model import features as F
from edgefleet.model.convert import load_trained
from edgefleet.model.estimators import predict
from edgefleet.model.train import MODELS, TrainOptions

ROOT = Path(__file__).resolve().parents[2]


def test_numpy_twin_equals_shared_file():
    w = datasets.load_basicmotions(50, 25)
    rng = np.random.default_rng(3)
    cases = [*w.x[::10], *rng.normal(size=(4, 3, 37)).cumsum(axis=2), np.ones((2, 8))]
    for x in cases:
        twin = F.compute_batch(x[None])[0]
        shared = F.compute_shared(x)
        np.testing.assert_allclose(twin, shared, rtol=1e-9, atol=1e-12)


def test_float32_arithmetic_stays_within_the_node_tolerance():
    """The ESP32 computes in single precision: run the shared file on numpy float32 scalars (NEP 50 keeps the
    arithmetic in float32) and check the tolerance the firmware test uses holds with margin."""
    from feature_tolerance import FEATURE_TOL, feature_scales

    w = datasets.load_basicmotions(50, 25)
    mod = F.shared()
    worst = 0.0
    for x in w.x[::6]:
        x32 = x.astype(np.float32)
        ref = F.compute_shared(x32.astype(np.float64))
        out = [0.0] * mod.count(6)
        mod.compute([[np.float32(v) for v in ch] for ch in x32], out)
        err = np.abs(np.asarray(out, dtype=np.float64) - ref) / np.asarray(feature_scales(x32, mod.N_PER_CHANNEL))
        worst = max(worst, float(err.max()))
    assert worst < FEATURE_TOL / 10, worst


def test_feature_names_and_count():
    names = F.names(datasets.IMU_CHANNELS)
    assert len(names) == F.shared().count(6) == 72
    assert names[:3] == ["ax_mean", "ax_std", "ax_min"] and names[-1] == "gz_band3"


def test_basicmotions_offline_windows():
    w = datasets.load_basicmotions(50, 25)
    assert w.channels == ("ax", "ay", "az", "gx", "gy", "gz") and w.sensor == "imu"
    assert w.x.shape == (240, 6, 50)  # 80 cases x 3 windows
    assert sorted(set(w.y)) == ["badminton", "running", "standing", "walking"]
    assert (w.split == "train").sum() == 120
    np.testing.assert_array_equal(w.x[1][:, :25], w.x[0][:, 25:])  # hop 25


def _write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("device,seq,ts_ms,sensor,flags,label,ax,ay,temperature\n" + "\n".join(rows) + "\n")
    return path


def test_export_csv_windows_and_majority_labels(tmp_path):
    rows = [f"node-1,{i},{1000 + i * 100},imu,0,{'walk' if i < 7 else 'run'},{i},{-i}," for i in range(12)]
    rows += [f"node-1,{100 + i},{5000 + i},env,0,,,,21.5" for i in range(3)]  # another sensor: filtered
    w = datasets.load_csv(_write_csv(tmp_path / "e.csv", rows), window=5, hop=3, sensor="imu")
    assert w.channels == ("ax", "ay") and w.x.shape == (3, 2, 5)
    assert list(w.y) == ["walk", "walk", "run"]  # [0-4] walk, [3-7] 4 walk 1 run, [6-10] 1 walk 4 run
    np.testing.assert_array_equal(w.x[1][0], [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(w.nxt[0], [5, -5])


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("a,b,c\n1,2,3\n", "not an edgefleet export CSV"),
        ("device,seq,ts_ms,sensor,flags,label,ax\nn,1,2,imu,0,,x\n", "not a number"),
        ("device,seq,ts_ms,sensor,flags,label,ax\nn,1,2,imu,0\n", "fields"),
        ("device,seq,ts_ms,sensor,flags,label,ax\n", "no readings"),
    ],
)
def test_bad_csv_is_a_clear_error(tmp_path, content, words):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(EdgefleetError, match=words):
        datasets.load_csv(p, 5, 5)


def test_unknown_dataset_and_missing_file():
    with pytest.raises(EdgefleetError, match="unknown dataset") as e:
        datasets.load("imagenet", 50, 25)
    assert "basicmotions" in (e.value.hint or "")
    with pytest.raises(EdgefleetError, match="no such data file"):
        datasets.load("/nonexistent/x.csv", 50, 25)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("nope\n")
    assert cli.main(["train", "--data", str(bad), "--name", "x", "--out", str(tmp_path)]) == 2
    assert "not an edgefleet export CSV" in capsys.readouterr().err


def test_missing_tensorflow_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)  # import keras -> ImportError, as without TensorFlow
    code = cli.main(["train", "--data", "basicmotions", "--model", "mlp-keras", "--name", "k", "--out", str(tmp_path)])
    assert code == 2 and not (tmp_path / "k").exists()


# ---------------------------------------------------------------- model file


def test_model_file_roundtrip_and_integrity(tmp_path):
    data = (ROOT / "models" / "basicmotions-rf" / "model.efm").read_bytes()
    mf = modelfile.decode(data)
    assert (mf.model_id, mf.task, mf.window, mf.hop, mf.n_features) == ("basicmotions-rf", "classify", 50, 25, 72)
    assert mf.classes == ("badminton", "running", "standing", "walking")
    assert modelfile.encode(mf) == data  # the encoding is deterministic
    with pytest.raises(EdgefleetError, match="sha256"):
        modelfile.decode(data[:200] + bytes([data[200] ^ 0x10]) + data[201:])
    key = b"k" * 32
    signed = modelfile.encode(mf, key)
    assert modelfile.decode(signed, key).signed
    with pytest.raises(EdgefleetError, match="signature"):
        modelfile.decode(signed, b"x" * 32)
    with pytest.raises(EdgefleetError, match="not signed"):
        modelfile.decode(data, key)


def test_scaling_quantizes_like_the_node():
    x = np.array([[0.0, -5.0], [10.0, 5.0], [5.0, 0.0]])
    s = modelfile.Scaling.fit(x)
    q = s.apply(np.array([[0.0, -5.0], [10.0, 5.0], [5.0, 0.0], [100.0, -100.0]]))
    assert q.dtype == np.int16
    np.testing.assert_array_equal(q[:3], [[-30000, -30000], [30000, 30000], [0, 0]])
    np.testing.assert_array_equal(q[3], [32767, -32767])  # clamped, never wraps
    gaps = s.apply(np.array([[np.nan, np.inf], [-np.inf, 1e30]]))
    np.testing.assert_array_equal(gaps, [[0, 32767], [-32767, 32767]])  # as node/model.py quantize


def test_integer_thresholds_match_sklearn_exactly(tmp_path, monkeypatch):
    """emlearn compares x < int(t); our rewrite makes that equal scikit-learn's x <= t on int16 features."""
    from sklearn.ensemble import RandomForestClassifier

    monkeypatch.chdir(tmp_path)  # emlearn compiles its Python extension under ./tmp
    rng = np.random.default_rng(0)
    x = rng.integers(-300, 300, size=(400, 6)).astype(float)
    y = (x[:, 0] + x[:, 1] > 7).astype(int)
    rf = RandomForestClassifier(8, random_state=0).fit(x, y)
    conv = modelfile.integer_thresholds(rf)
    import emlearn

    c = emlearn.convert(conv, method="loadable", dtype="int16_t")
    test = rng.integers(-300, 300, size=(2000, 6)).astype(float)
    np.testing.assert_array_equal(c.predict(test.astype(np.int16)), rf.predict(test))


# ---------------------------------------------------------------- training, convert, parity


def _args(tmp_path, model, **kw):
    ns = TrainOptions(data="basicmotions", model=model, name=f"t-{model}", out=str(tmp_path), sensor=None,
                      window=50, hop=25, test_size=0.25, trees=10, max_leaf_nodes=None, max_depth=None,
                      epochs=150, normal=None, target=None, seed=1, key_file=None)  # fmt: skip
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


@pytest.mark.parametrize("model", ["rf", "dt", "et", "mlp-sk", "mlp-keras", "anomaly", "forecast"])
def test_train_convert_parity(tmp_path, model):
    """Full test split: (b) = (c) 100%, (a) = (c) >= 99.5% (trees and nets), C core = (b); outputs written."""
    import json

    from edgefleet.model.train import train

    kw = {"normal": "standing"} if model == "anomaly" else {}
    out = train(_args(tmp_path, model, **kw))
    for f in ("model.efm", "model.h", "manifest.json", "report.html"):
        assert (out / f).stat().st_size > 0, f
    m = json.loads((out / "manifest.json").read_text())
    p = m["parity"]
    assert p["b_vs_c"] == 1.0, m["disagreements"]
    assert p["core_vs_b"] == 1.0
    assert p["a_vs_c"] >= 0.995, m["disagreements"]
    assert len(m["disagreements"]) == sum(
        round((1 - p[k]) * m["metrics"]["n_test"]) for k in ("a_vs_c", "b_vs_c", "a_vs_b")
    )
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") >= (4 if m["task"] == "classify" else 1)
    assert m["flash_bytes"] == (out / "model.efm").stat().st_size and m["ram_bytes"] > 0
    if model in ("rf", "et"):
        assert m["metrics"]["accuracy"] >= 0.95
    if model == "forecast":
        assert m["metrics"]["A_forecast"] is not None
    if model == "anomaly":
        assert m["threshold"] > 0 and m["metrics"]["detection_rate"] > m["metrics"]["false_alarm_rate"]


def test_every_shipped_model_h_compiles_and_matches_trained(tmp_path):
    """CI item: each models/*/model.h in a C harness with gcc -Wall -Werror, predictions equal (a)."""
    shipped = sorted(p.parent for p in (ROOT / "models").glob("*/model.h"))
    assert shipped, "no shipped models"
    for d in shipped:
        t, est = load_trained(d)
        ts = np.load(d / "testset.npz")
        trees = t.kind in ("rf", "dt", "et", "forecast")
        exe = parity.build_emlearn_harness(d, tmp_path, int16_input=trees, float_output=t.task != "classify",
                                           net=t.kind.startswith("mlp"), elliptic=t.kind == "anomaly")  # fmt: skip
        rows = ts["xq"].astype("<i2") if trees else (ts["xq"] / 32768.0).astype("<f4")
        b = parity.run_emlearn(exe, rows, tmp_path, t.task != "classify")
        a, _ = predict(t, est, ts["xq"].astype(np.float64))
        assert len(b) == len(a) and parity.agreement(a, b) == 1.0, d.name


def test_shipped_model_file_is_what_convert_writes():
    d = ROOT / "models" / "basicmotions-rf"
    data = (d / "model.efm").read_bytes()
    import json

    m = json.loads((d / "manifest.json").read_text())
    assert m["model_file"]["sha256"] == hashlib.sha256(data[:-64]).hexdigest()
    assert m["metrics"]["accuracy"] >= 0.95 and m["parity"]["a_vs_c"] >= 0.995 and m["parity"]["b_vs_c"] == 1.0


def test_all_model_kinds_are_offered():
    assert set(MODELS) == {"rf", "dt", "et", "mlp-keras", "mlp-sk", "anomaly", "forecast"}
    assert os.path.isfile(ROOT / "firmware" / "cmodule" / "efm_core.c")


def _with_node(data: bytes, node: int, right: int) -> bytes:
    """The model file with one compact tree node's right child replaced, sha256 recomputed (a crafted file)."""
    import struct

    mf = modelfile.decode(data)
    body = bytearray(mf.body)
    n_trees = struct.unpack_from("<H", body)[0]
    at = ((8 + 2 * n_trees + 3) & ~3) + 6 * node + 4
    struct.pack_into("<h", body, at, right)
    mf.body = bytes(body)
    return modelfile.encode(mf)


def test_crafted_tree_cannot_loop_or_escape(tmp_path):
    """A file with a valid sha256 but a node jumping to itself or past the end: the C core and the node
    runner both refuse it at load instead of looping or reading out of bounds."""
    data = (ROOT / "models" / "basicmotions-rf" / "model.efm").read_bytes()
    assert modelfile.decode(data).body[7] == 1  # the shipped forest uses compact nodes
    core = parity.build_core_harness(tmp_path)
    q = tmp_path / "q.bin"
    np.zeros((1, 72), dtype="<i2").tofile(q)
    ts = np.load(ROOT / "models" / "basicmotions-rf" / "testset.npz")
    for right in (0, 30000):
        bad = tmp_path / f"bad{right}.efm"
        bad.write_bytes(_with_node(data, 0, right))
        proc = __import__("subprocess").run([str(core), str(bad), str(q)], capture_output=True, text=True)
        assert proc.returncode == 3 and "corrupt model body" in proc.stderr, proc.stderr
        with pytest.raises(EdgefleetError, match=r"jumps to"):
            parity.run_node(bad, ts["x"][:1], 72)


def test_signed_training_end_to_end(tmp_path, monkeypatch):
    """--key-file signs the model file; the node verifies it with the key during the parity run. The key is
    the file's exact bytes, as deploy and the node read it: one ending in a newline or space is not stripped."""
    import json

    key = tmp_path / "model.key"
    key.write_bytes(b" " + os.urandom(30) + b"\n")
    out = tmp_path / "m"
    code = cli.main(["-q", "train", "--data", "basicmotions", "--model", "dt", "--name", "s", "--out", str(out),
                     "--key-file", str(key)])  # fmt: skip
    assert code == 0
    m = json.loads((out / "s" / "manifest.json").read_text())
    assert m["model_file"]["signed"] and m["parity"]["b_vs_c"] == 1.0
    data = (out / "s" / "model.efm").read_bytes()
    assert modelfile.decode(data, key.read_bytes()).signed
    with pytest.raises(EdgefleetError, match="signature does not verify"):
        parity.run_node(out / "s" / "model.efm", np.load(out / "s" / "testset.npz")["x"][:1], 72, key=b"w" * 32)
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    assert (
        cli.main(["train", "--data", "basicmotions", "--name", "t", "--out", str(out), "--key-file", str(short)]) == 2
    )


def _basicmotions_csv(path: Path, labelled: bool = True) -> Path:
    """BasicMotions as a collector export: one device per case, 10 Hz readings, labels in the label column."""
    lines = ["device,seq,ts_ms,sensor,flags,label,ax,ay,az,gx,gy,gz,temperature"]
    for part in ("TRAIN", "TEST"):
        cases, labels = datasets.basicmotions_cases(part)
        for i, (case, label) in enumerate(zip(cases, labels, strict=True)):
            dev = f"{part.lower()}-{i:02d}"
            for s in range(case.shape[1]):
                vals = ",".join(f"{v:.6f}" for v in case[:, s])
                lines.append(f"{dev},{s},{1_700_000_000_000 + 100 * s},imu,0,{label if labelled else ''},{vals},")
            lines.append(f"{dev},{1000},{1_700_000_000_000},env,0,,,,,,,,21.5")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_from_export_csv(tmp_path):
    """`--data PATH.csv`: the export format, split by device series, classifier and unlabelled anomaly model."""
    import json

    from edgefleet.model.train import train

    csv_path = _basicmotions_csv(tmp_path / "export.csv")
    out = train(_args(tmp_path, "rf", data=str(csv_path), sensor="imu"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["channels"] == ["ax", "ay", "az", "gx", "gy", "gz"] and m["sensor"] == "imu"
    assert m["metrics"]["n_test"] == 60  # 20 of 80 device series, 3 windows each
    assert m["metrics"]["accuracy"] >= 0.9 and m["parity"]["b_vs_c"] == 1.0
    unlabelled = _basicmotions_csv(tmp_path / "unlabelled.csv", labelled=False)
    out = train(_args(tmp_path, "anomaly", data=str(unlabelled), sensor="imu", name="anom"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["task"] == "anomaly" and m["threshold"] > 0 and m["parity"]["b_vs_c"] == 1.0
    assert m["feature_relevance"] == []  # no labels, no mutual information
    with pytest.raises(EdgefleetError, match="several sensors"):
        train(_args(tmp_path, "rf", data=str(csv_path)))


def _digits_forest(tmp_path: Path, trees: int, compact: bool = True):
    import emlearn
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_digits(return_X_y=True)
    scaling = modelfile.Scaling.fit(x)
    rf = RandomForestClassifier(n_estimators=trees, max_leaf_nodes=100, random_state=2)
    rf.fit(scaling.apply(x).astype(float), y)
    conv = modelfile.integer_thresholds(rf)
    body = modelfile.trees_body(conv, compact=compact)
    mf = modelfile.ModelFile("big", "classify", "bench", (), 0, 0, 64, scaling, modelfile.KIND_TREES, body,
                             tuple(map(str, rf.classes_)))  # fmt: skip
    efm = tmp_path / f"forest{trees}{'' if compact else '-expanded'}.efm"
    modelfile.write(efm, mf)
    emlearn.convert(conv, method="loadable", dtype="int16_t").save(name="efm_model", file=str(tmp_path / "model.h"))
    return x.astype(np.float32), scaling, efm, len(body)


def test_expanded_tree_nodes_predict_like_compact_ones(tmp_path):
    """Node format 0 (emlearn's 8-byte nodes, for trees too large for compact nodes) runs on the node runner
    and gives the same classes as the compact format and as emlearn's C code."""
    x, scaling, compact, _ = _digits_forest(tmp_path, 10)
    _, _, expanded, _ = _digits_forest(tmp_path, 10, compact=False)
    exe = parity.build_emlearn_harness(tmp_path, tmp_path, int16_input=True, float_output=False)
    b = parity.run_emlearn(exe, scaling.apply(x[:200]).astype("<i2"), tmp_path, False)
    node_c = parity.run_node(compact, x[:200], 64)
    node_e = parity.run_node(expanded, x[:200], 64)
    np.testing.assert_array_equal(node_e.index, b)
    np.testing.assert_array_equal(node_e.index, node_c.index)


def test_large_forest_runs_within_devkitc_heap(tmp_path):
    """A forest just under the node's MAX_BODY (32 KB) loads and runs on MicroPython with the ESP32-DevKitC's
    110 KB heap and agrees with emlearn's C code on every row; a bigger one is refused with a clear error."""
    x, scaling, efm, size = _digits_forest(tmp_path, 50)
    assert 25_000 < size <= 32768, size
    exe = parity.build_emlearn_harness(tmp_path, tmp_path, int16_input=True, float_output=False)
    b = parity.run_emlearn(exe, scaling.apply(x[:300]).astype("<i2"), tmp_path, False)
    node = parity.run_node(efm, x[:300], 64, heap=parity.ESP32_HEAP)
    assert node.model_ram >= size
    np.testing.assert_array_equal(node.index, b)
    _, _, big, big_size = _digits_forest(tmp_path, 70)
    assert big_size > 32768
    with pytest.raises(EdgefleetError, match="model too large for this node"):
        parity.run_node(big, x[:1], 64)
