"""`edgefleet convert`: a trained model (models/<name>/trained.pkl) -> model.efm, model.h, manifest, report.

Parity is measured here on the full test split, every time: (a) the trained model, (b) emlearn's C code
(model.h) compiled with gcc -Wall -Werror, (c) the node runner on the MicroPython unix port within the
ESP32-DevKitC heap, and our C core (firmware/cmodule) on the same model file. Every disagreement is listed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import modelfile, parity
from .errors import EdgefleetError
from .paths import models_dir

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
    key = p.read_bytes().strip()
    if len(key) < 16:
        raise EdgefleetError(f"model signing key in {p} is shorter than 16 bytes")
    return key


def load_trained(out: Path):
    pkl = out / "trained.pkl"
    if not pkl.is_file():
        raise EdgefleetError(f"{out} has no trained.pkl", hint="run `edgefleet train ... --name NAME` first")
    with pkl.open("rb") as f:
        t = pickle.load(f)
    est = t.estimator
    if t.kind == "mlp-keras":
        from .train import require_tensorflow

        est = require_tensorflow().models.load_model(out / "model.keras")
    return t, est


def body_of(t, est) -> tuple[int, bytes, Any]:
    """(kind, body bytes, the estimator emlearn converts) for a trained model."""
    from .train import _mlp_layers_keras, _mlp_layers_sk

    if t.kind in ("rf", "dt", "et", "forecast"):
        est_int = modelfile.integer_thresholds(est)
        return modelfile.KIND_TREES, modelfile.trees_body(est_int, regress=t.task == "regress"), est_int
    if t.kind == "mlp-sk":
        return modelfile.KIND_MLP, modelfile.mlp_body(_mlp_layers_sk(est)), est
    if t.kind == "mlp-keras":
        return modelfile.KIND_MLP, modelfile.mlp_body(_mlp_layers_keras(est)), est
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


def measure(out: Path, t, est, conv_est, efm: Path, key: bytes | None) -> dict:
    """Run (a), (b), (c) and the C core on the test split; returns metrics and parity."""
    from .train import predict

    ts = np.load(out / "testset.npz")
    x, xq_host, y = ts["x"], ts["xq"], ts["y"]
    regress = t.task == "regress"
    a_idx, a_score = predict(t, est, xq_host.astype(np.float64))
    node = parity.run_node(efm, x, len(t.feature_names), key=key)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trees = t.kind in ("rf", "dt", "et", "forecast")
        float_out = t.task != "classify"
        exe = parity.build_emlearn_harness(out, work, int16_input=trees, float_output=float_out, net=t.kind.startswith("mlp"),
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

        metrics["accuracy"] = float(np.mean(a_idx == y))
        metrics["accuracy_node"] = float(np.mean(node.index == y))
        p, r, f, _ = precision_recall_fscore_support(y, a_idx, labels=range(len(classes)), zero_division=0)
        metrics["per_class"] = {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i])} for i, c in enumerate(classes)
        }
    elif t.task == "regress":
        from .forecast.node import regress_metrics

        metrics.update(regress_metrics(ts, a_score))  # on values, beside naive and seasonal naive
    else:
        metrics["flagged_fraction"] = float(np.mean(a_idx))
        if len(set(y.tolist())) > 1:
            metrics["detection_rate"] = float(np.mean(a_idx[y == 1]))
            metrics["false_alarm_rate"] = float(np.mean(a_idx[y == 0]))
    return {"metrics": metrics, "parity": pairs, "disagreements": dis, "node": node, "pred": a_idx, "y": y,
            "node_us": node.us_per_infer, "node_ram": node.model_ram, "node_us_features": node.us_per_features}  # fmt: skip


def convert(out: Path, key: bytes | None = None) -> dict:
    from . import report

    t, est = load_trained(out)
    kind, body, conv_est = body_of(t, est)
    mf = modelfile.ModelFile(t.name, t.task, t.sensor, t.channels, t.window, t.hop, len(t.feature_names), t.scaling,
                             kind, body, t.classes, t.threshold)  # fmt: skip
    efm = out / "model.efm"
    data = modelfile.write(efm, mf, key)
    write_model_h(t, conv_est, out / "model.h")
    log.info("wrote %s (%d bytes) and model.h", efm, len(data))
    res = measure(out, t, est, conv_est, efm, key)
    manifest = {
        "name": t.name, "model": t.kind, "task": t.task, "data": t.data, "sensor": t.sensor,
        "channels": list(t.channels), "window": t.window, "hop": t.hop, "features": t.feature_names,
        "scaling": {"offset": t.scaling.offset.tolist(), "scale": t.scaling.scale.tolist(),
                    "rule": "q = clamp(floor((x - offset) * scale + 0.5), -32767, 32767)"},
        "classes": list(t.classes), "threshold": t.threshold, "params": t.params,
        "model_file": {"path": "model.efm", "format_version": modelfile.VERSION, "bytes": len(data),
                       "sha256": mf.sha256, "signed": mf.signed},
        "flash_bytes": len(data), "ram_bytes": res["node_ram"], "node_us_per_inference_unix": res["node_us"],
        "node_us_per_features_unix": res["node_us_features"],
        "metrics": res["metrics"], "parity": res["parity"], "disagreements": res["disagreements"],
        "feature_relevance": t.relevance[:20],
    }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    report.write(out / "report.html", manifest, res)
    p = res["parity"]
    log.info("parity: a=c %.4f  b=c %.4f  a=b %.4f  core=b %.4f", p["a_vs_c"], p["b_vs_c"], p["a_vs_b"], p["core_vs_b"])
    return manifest


def _cmd_convert(args: argparse.Namespace) -> int:
    out = Path(args.out or models_dir()) / args.name
    m = convert(out, key=load_key(args.key_file))
    p = m["parity"]
    print(f"{out}/: model.efm {m['flash_bytes']} bytes, accuracy {m['metrics'].get('accuracy', '-')}, "
          f"parity a=c {p['a_vs_c']:.2%} b=c {p['b_vs_c']:.2%}")  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="regenerate models/<name>/ (model.efm, model.h, manifest, report)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--name", required=True, help="models/<name>/ holding trained.pkl from `edgefleet train`")
    p.add_argument("--out", help="parent directory instead of models/")
    p.add_argument("--key-file", help="HMAC key file to sign the model file (default: $EDGEFLEET_MODEL_KEY_FILE)")
    p.set_defaults(func=_cmd_convert)
