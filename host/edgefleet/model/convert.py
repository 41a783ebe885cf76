"""`edgefleet convert`: a trained model (models/<name>/trained.pkl) -> model.efm, model.h, manifest, report.

Parity is measured here on the full test split, every time: (a) the trained model, (b) emlearn's C code
(model.h) compiled with gcc -Wall -Werror, (c) the node runner on the MicroPython unix port within the
ESP32-DevKitC heap, and our C core (firmware/cmodule) on the same model file. Every disagreement is listed.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgefleetError
from . import modelfile, parity

log = logging.getLogger(__name__)

EMLEARN_NAME = "efm_model"


def load_key(path: str | None) -> bytes | None:
    """The host's HMAC key: --key-file, else $EDGEFLEET_MODEL_KEY_FILE, else unsigned (docs/model-file.md)."""
    path = path or os.environ.get("EDGEFLEET_MODEL_KEY_FILE")
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise EdgefleetError(f"model signing key file {p} not found", hint="create one: head -c 32 /dev/urandom > KEY")
    return modelfile.read_key(p)


# Where classes pickled in trained.pkl lived before the host moved into stage packages (issue 12): a model
# directory trained by an earlier edgefleet must still convert.
MOVED_MODULES = {"edgefleet.train": "edgefleet.model.train", "edgefleet.modelfile": "edgefleet.model.modelfile",
                 "edgefleet.features": "edgefleet.model.features", "edgefleet.datasets": "edgefleet.model.datasets"}  # fmt: skip


class TrainedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that finds classes under their module's name before the move, too."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


def load_trained(out: Path):
    pkl = out / "trained.pkl"
    if not pkl.is_file():
        raise EdgefleetError(f"{out} has no trained.pkl", hint="run `edgefleet train ... --name NAME` first")
    with pkl.open("rb") as f:
        t = TrainedUnpickler(f).load()
    est = t.estimator
    if t.kind == "mlp-keras":
        from .estimators import require_tensorflow

        est = require_tensorflow().models.load_model(out / "model.keras")
    return t, est


def body_of(t, est) -> tuple[int, bytes, Any]:
    """(kind, body bytes, the estimator emlearn converts) for a trained model."""
    from .estimators import mlp_layers_keras, mlp_layers_sk

    if t.kind in ("rf", "dt", "et", "forecast"):
        est_int = modelfile.integer_thresholds(est)
        return modelfile.KIND_TREES, modelfile.trees_body(est_int, regress=t.task == "regress"), est_int
    if t.kind == "mlp-sk":
        return modelfile.KIND_MLP, modelfile.mlp_body(mlp_layers_sk(est)), est
    if t.kind == "mlp-keras":
        return modelfile.KIND_MLP, modelfile.mlp_body(mlp_layers_keras(est)), est
    return modelfile.KIND_GAUSS, modelfile.gauss_body(est.location_, est.precision_), est


def write_model_h(t, conv_est, path: Path) -> None:
    import contextlib

    import emlearn

    path = path.resolve()
    # emlearn compiles nets and envelopes for CPython under ./tmp while converting: keep that out of the cwd
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        if t.kind in ("rf", "dt", "et", "forecast"):
            c = emlearn.convert(conv_est, method="loadable", dtype="int16_t")
        elif t.kind == "anomaly":
            c = emlearn.convert(conv_est, method="inline")
        else:
            c = emlearn.convert(conv_est, method="loadable")
        c.save(name=EMLEARN_NAME, file=str(path))


def _disagreements(label: str, a, c, y, classes, regress: bool) -> list[dict]:
    rows = []
    diff = ~np.isclose(a, c, rtol=1e-4, atol=1e-6) if regress else np.asarray(a) != np.asarray(c)
    for i in np.flatnonzero(diff):

        def name(v):
            return classes[int(v)] if classes and 0 <= int(v) < len(classes) else f"{v:.6g}"

        rows.append({"pair": label, "window": int(i), "truth": name(y[i]) if len(y) else "",
                     "left": name(a[i]), "right": name(c[i])})  # fmt: skip
    return rows


def measure(out: Path, t, est, conv_est, efm: Path, key: bytes | None, heap: int = parity.ESP32_HEAP) -> dict:
    """Run (a), (b), (c) and the C core on the test split; returns metrics and parity."""
    from .estimators import predict

    ts = np.load(out / "testset.npz")
    x, xq_host, y = ts["x"], ts["xq"], ts["y"]
    case = ts["case"] if "case" in ts.files else np.arange(len(y))
    regress = t.task == "regress"
    a_idx, a_score = predict(t, est, xq_host.astype(np.float64))
    node = parity.run_node(efm, x, len(t.feature_names), heap=heap, key=key)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trees = t.kind in ("rf", "dt", "et", "forecast")
        float_out = t.task != "classify"
        exe = parity.build_emlearn_harness(efm.parent, work, int16_input=trees, float_output=float_out, net=t.kind.startswith("mlp"),
                                           elliptic=t.kind == "anomaly")  # fmt: skip

        def emlearn_rows(q):
            return q.astype("<i2") if trees else (q / 32768.0).astype("<f4")

        b_host = parity.run_emlearn(exe, emlearn_rows(xq_host), work, float_out)
        b_node = parity.run_emlearn(exe, emlearn_rows(node.q), work, float_out)
        core_idx, core_score = parity.run_core(parity.build_core_harness(work), efm, node.q, work)
    if regress:
        a_val, c_val, b_val_node, b_val_host = a_score, node.score, b_node, b_host
        core_val = core_score
    elif t.task == "anomaly":
        a_val, c_val = a_idx, node.index
        b_val_host = (b_host > t.threshold).astype(int)
        b_val_node = (b_node > t.threshold).astype(int)
        core_val = core_idx
    else:
        a_val, c_val, b_val_host, b_val_node, core_val = a_idx, node.index, b_host, b_node, core_idx
    pairs = {
        "a_vs_c": parity.agreement(a_val, c_val, regress, rtol=1e-3),
        "b_vs_c": parity.agreement(b_val_node, c_val, regress),
        "a_vs_b": parity.agreement(a_val, b_val_host, regress, rtol=1e-3),
        "core_vs_b": parity.agreement(core_val, b_val_node, regress),
        "q_host_vs_node": float(np.mean(np.all(xq_host == node.q, axis=1))) if len(x) else 1.0,
        "q_max_abs_diff": int(np.abs(xq_host.astype(int) - node.q.astype(int)).max()) if len(x) else 0,
    }
    classes = t.classes
    dis = (_disagreements("a-c", a_val, c_val, y, classes, regress) + _disagreements("b-c", b_val_node, c_val, y, classes, regress)
           + _disagreements("a-b", a_val, b_val_host, y, classes, regress))  # fmt: skip
    metrics: dict[str, Any] = {"n_test": len(x)}
    if t.task == "classify":
        from sklearn.metrics import precision_recall_fscore_support

        metrics["accuracy_node"] = float(np.mean(node.index == y))
        metrics["accuracy"] = float(np.mean(a_idx == y))
        metrics.update(case_accuracy(case, y, node.index, a_idx))
        p, r, f, _ = precision_recall_fscore_support(y, a_idx, labels=range(len(classes)), zero_division=0)
        metrics["per_class"] = {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i])} for i, c in enumerate(classes)
        }
    elif t.task == "regress":
        from ..forecast.node import regress_metrics

        metrics.update(regress_metrics(ts, a_score))  # on values, beside naive and seasonal naive
    else:
        metrics["flagged_fraction"] = float(np.mean(a_idx))
        if len(set(y.tolist())) > 1:
            metrics["detection_rate"] = float(np.mean(a_idx[y == 1]))
            metrics["false_alarm_rate"] = float(np.mean(a_idx[y == 0]))
        metrics.update(false_positives(node.index, y, t.params.get("anomaly", {})))
    return {"metrics": metrics, "parity": pairs, "xq_host": xq_host, "a_val": a_val, "c_val": c_val, "disagreements": dis, "node": node, "pred": a_idx, "y": y,
            "node_us": node.us_per_infer, "node_ram": node.model_ram, "node_us_features": node.us_per_features}  # fmt: skip


def case_accuracy(case: np.ndarray, y: np.ndarray, node_idx: np.ndarray, host_idx: np.ndarray) -> dict:
    """Per-case accuracy by majority vote over a case's windows (cases longer than a window), node and host."""
    cases = np.unique(case)
    if len(cases) == len(case):
        return {}

    def vote(v):
        return np.array([np.bincount(v[case == c].astype(int)).argmax() for c in cases])

    truth = vote(y)
    return {"n_cases": len(cases), "case_accuracy_node": float(np.mean(vote(node_idx) == truth)),
            "case_accuracy": float(np.mean(vote(host_idx) == truth))}  # fmt: skip


def false_positives(flags: np.ndarray, y: np.ndarray, info: dict) -> dict:
    """The node's false-positive rate on held-out normal windows (y == 0) with its Wilson 95% interval."""
    from .anomaly import wilson

    normal = flags[y == 0]
    k, n = int(np.sum(normal)), len(normal)
    out = {"n_normal_test": n, "fpr_measured": k / n if n else None, "fpr_ci95": list(wilson(k, n))}
    for key in ("fpr_target", "n_normal_train", "folds", "min_windows", "warning"):
        if key in info:
            out[key if key != "n_normal_train" else "n_normal_threshold"] = info[key]
    return out


def gate(t, res: dict, min_agreement: float) -> None:
    """Fail when the trained model and the node runner disagree on more than 1 - min_agreement of the test
    windows, naming the features whose int16 values differ between host and node on those windows."""
    p = res["parity"]
    if p["a_vs_c"] >= min_agreement:
        return
    n = res["metrics"]["n_test"]
    xq_host, node_q = res["xq_host"], res["node"].q
    bad = np.flatnonzero(np.asarray(res["a_val"]) != np.asarray(res["c_val"])) if t.task != "regress" else \
        np.flatnonzero(~np.isclose(res["a_val"], res["c_val"], rtol=1e-3, atol=1e-6))  # fmt: skip
    diff = xq_host[bad].astype(int) != node_q[bad].astype(int)
    counts = diff.sum(axis=0)
    top = np.argsort(-counts)[:6]
    named = [f"{t.feature_names[i]} ({counts[i]} windows, max |dq| "
             f"{int(np.abs(xq_host[bad, i].astype(int) - node_q[bad, i].astype(int)).max())})" for i in top if counts[i]]  # fmt: skip
    why = ("int16 features that differ between host (float64) and node (float32) on those windows: " + ", ".join(named)
           if named else "the int16 features are identical there: the model's own arithmetic differs on the node")  # fmt: skip
    raise EdgefleetError(
        f"the node would disagree with the trained model on {len(bad)} of {n} test windows "
        f"({p['a_vs_c']:.2%} agreement, below --min-agreement {min_agreement:.2%}); {why}",
        hint="drop or rescale those features' channels, use a longer --window, or lower --min-agreement knowingly",
    )


def check_time(t, res: dict) -> dict:
    """The node's measured cost (unix port) scaled to the board must fit its time budget per window."""
    from .budget import Budget

    board = t.params.get("board")
    if not board:
        return {}
    b = Budget.of(board)
    rate = t.params.get("rate_hz")
    limit = b.time_limit_ms(t.hop / rate if rate else None)
    # features: train's least-of-runs measurement (a loaded machine must not fail the budget), model: measured here
    feat = (t.params.get("cost") or {}).get("features_us_unix", res["node_us_features"] or 0.0)
    us = feat + (res["node_us"] or 0.0)
    ms = us * b.slowdown / 1000.0
    if ms > limit:
        raise EdgefleetError(
            f"features + model take ~{ms:,.0f} ms per window on {board} ({us:,.0f} µs on the unix port x {b.slowdown:g}), "
            f"over its budget of {limit:,.0f} ms",
            hint="a smaller --window, fewer --trees, or the C module (edgefleet build-module)",
        )
    return {"board": b.board, "board_ms_per_window": ms, "budget_ms": limit}


def convert(out: Path, key: bytes | None = None, final_name: Path | None = None,
            min_agreement: float | None = None) -> dict:  # fmt: skip
    """Write model.efm, model.h, manifest.json, report.html for models/<name>/ after the parity gate.

    From train, `out` is already a staging directory (final_name is where it will be renamed to); alone, the
    outputs are written to a scratch directory and moved into `out` only when the gate and budget passed."""
    if final_name is not None:
        return _convert(out, out, key, min_agreement)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent if out.is_dir() else None) as tmp:
        manifest = _convert(out, Path(tmp), key, min_agreement)
        for f in ("model.efm", "model.h", "manifest.json", "report.html"):
            os.replace(Path(tmp) / f, out / f)
    return manifest


def _convert(out: Path, dest: Path, key: bytes | None, min_agreement: float | None) -> dict:
    from . import report

    t, est = load_trained(out)
    kind, body, conv_est = body_of(t, est)
    mf = modelfile.ModelFile(t.name, t.task, t.sensor, t.channels, t.window, t.hop, len(t.feature_names), t.scaling,
                             kind, body, t.classes, t.threshold)  # fmt: skip
    efm = dest / "model.efm"
    data = modelfile.write(efm, mf, key)
    write_model_h(t, conv_est, dest / "model.h")
    log.info("wrote %s (%d bytes) and model.h", efm, len(data))
    board = t.params.get("board")
    heap = _board_heap(board)
    res = measure(out, t, est, conv_est, efm, key, heap)
    gate(t, res, t.params.get("min_agreement", 0.995) if min_agreement is None else min_agreement)
    timing = check_time(t, res)
    manifest = {
        "name": t.name, "model": t.kind, "task": t.task, "data": t.data, "sensor": t.sensor,
        "channels": list(t.channels), "window": t.window, "hop": t.hop, "features": t.feature_names,
        "scaling": {"offset": t.scaling.offset.tolist(), "scale": t.scaling.scale.tolist(),
                    "rule": "q = clamp(floor((x - offset) * scale + 0.5), -32767, 32767)"},
        "classes": list(t.classes), "threshold": t.threshold, "params": _jsonable(t.params),
        "rate_hz": t.params.get("rate_hz"), "board": t.params.get("board_name", board), "timing": timing,
        "fit": _jsonable(t.params.get("fit")), "quantization": t.params.get("quantization"),
        "model_file": {"path": "model.efm", "format_version": modelfile.VERSION, "bytes": len(data),
                       "sha256": mf.sha256, "signed": mf.signed},
        "flash_bytes": len(data), "ram_bytes": res["node_ram"], "node_us_per_inference_unix": res["node_us"],
        "node_us_per_features_unix": res["node_us_features"],
        "metrics": res["metrics"], "parity": res["parity"], "disagreements": res["disagreements"],
        "feature_relevance": t.relevance[:20],
    }  # fmt: skip
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    report.write(dest / "report.html", manifest, res)
    p = res["parity"]
    log.info("parity: a=c %.4f  b=c %.4f  a=b %.4f  core=b %.4f", p["a_vs_c"], p["b_vs_c"], p["a_vs_b"], p["core_vs_b"])
    return manifest


def _board_heap(board: str | None) -> int:
    if not board:
        return parity.ESP32_HEAP
    from ..board.boards import load_board

    return load_board(board).heap_bytes


def _jsonable(v):
    """params for the manifest: tuples as lists, numpy scalars as numbers."""
    return json.loads(json.dumps(v, default=lambda o: o.item() if hasattr(o, "item") else list(o)))
