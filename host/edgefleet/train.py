"""`edgefleet train` and `edgefleet convert`: windows -> features -> int16 scaling -> model -> models/<name>/.

train fits a model on the training split and saves what convert needs (trained.pkl, testset.npz); convert
(run by train, or alone to regenerate) writes model.efm (the node's file), model.h (emlearn C), manifest.json
and report.html, after measuring parity between the trained model, emlearn's C code and the node runner.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import datasets, features, modelfile
from .errors import EdgefleetError
from .forecast import node as forecast_node
from .paths import models_dir

log = logging.getLogger(__name__)

MODELS = ("rf", "dt", "et", "mlp-keras", "mlp-sk", "anomaly", "forecast")
TREE_MODELS = ("rf", "dt", "et", "forecast")


@dataclass
class Trained:
    """Everything convert needs, pickled to models/<name>/trained.pkl."""

    name: str
    kind: str  # one of MODELS
    task: str  # classify | anomaly | regress
    estimator: Any  # sklearn estimator; None for Keras (saved as model.keras beside it)
    scaling: modelfile.Scaling
    sensor: str
    channels: tuple[str, ...]
    window: int
    hop: int
    classes: tuple[str, ...]
    threshold: float | None
    feature_names: list[str]
    relevance: list[tuple[str, float]]
    data: str
    params: dict


# ---------------------------------------------------------------- data


def feature_matrix(w: datasets.Windows, batch: int = 256) -> np.ndarray:
    """Features of every window with the numpy twin, in batches with a progress bar."""
    parts = []
    for i in tqdm(range(0, len(w.x), batch), desc="features", unit="batch", disable=None):
        parts.append(features.compute_batch(w.x[i : i + batch]))
    return np.concatenate(parts) if parts else np.zeros((0, features.shared().count(len(w.channels))))


def split(w: datasets.Windows, seed: int, test_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Train/test indices: the dataset's own split when it has one, else by source series (no leakage of
    overlapping windows across the split) when there are several series, else the last part of the series."""
    idx = np.arange(len(w.y))
    if w.split is not None:
        return idx[w.split == "train"], idx[w.split == "test"]
    groups = np.unique(w.groups)
    if len(groups) >= 4:
        rng = np.random.default_rng(seed)
        test_g = rng.choice(groups, size=max(1, round(len(groups) * test_size)), replace=False)
        te = np.isin(w.groups, test_g)
        return idx[~te], idx[te]
    cut = int(len(idx) * (1 - test_size))
    return idx[:cut], idx[cut:]


# ---------------------------------------------------------------- models


def _mlp_layers_keras(model) -> list[tuple[np.ndarray, np.ndarray, str]]:
    out = []
    for layer in model.layers:
        if type(layer).__name__ != "Dense":
            raise EdgefleetError(f"Keras layer {type(layer).__name__} is not supported", hint="use Dense layers only")
        w, b = layer.get_weights()
        out.append((w, b, layer.activation.__name__))
    return out


def _mlp_layers_sk(model) -> list[tuple[np.ndarray, np.ndarray, str]]:
    acts = [model.activation] * (len(model.coefs_) - 1) + [model.out_activation_]
    return list(zip(model.coefs_, model.intercepts_, acts, strict=True))


def require_tensorflow():
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
    except ImportError as e:
        raise EdgefleetError(
            "TensorFlow/Keras is not installed, --model mlp-keras needs it",
            hint="pip install 'edgefleet[ml]' (tensorflow-cpu), or use --model mlp-sk",
        ) from e
    return keras


def fit_keras(xs: np.ndarray, y: np.ndarray, n_classes: int, seed: int, epochs: int):
    keras = require_tensorflow()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(xs.shape[1],)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(n_classes, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    bar = tqdm(total=epochs, desc="keras", unit="epoch", disable=None)

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            bar.update(1)
            bar.set_postfix(loss=f"{(logs or {}).get('loss', 0):.3f}")

    model.fit(xs, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[Progress()])
    bar.close()
    return model


def fit(kind: str, xq: np.ndarray, y: np.ndarray, n_classes: int, args: argparse.Namespace):
    """Fit one model kind on int16-quantized features; nets and the envelope see them as q / 32768."""
    from sklearn import ensemble, tree
    from sklearn.neural_network import MLPClassifier

    seed = args.seed
    if kind in ("rf", "et"):
        cls = ensemble.RandomForestClassifier if kind == "rf" else ensemble.ExtraTreesClassifier
        est = cls(
            n_estimators=args.trees, max_leaf_nodes=args.max_leaf_nodes, max_depth=args.max_depth, random_state=seed
        )
        for n in tqdm(range(1, args.trees + 1), desc=kind, unit="tree", disable=None):
            est.set_params(n_estimators=n, warm_start=True)
            est.fit(xq, y)
        return est
    if kind == "dt":
        return tree.DecisionTreeClassifier(
            max_leaf_nodes=args.max_leaf_nodes, max_depth=args.max_depth, random_state=seed
        ).fit(xq, y)
    if kind == "mlp-sk":
        est = MLPClassifier(
            (32, 16), max_iter=1, warm_start=True, random_state=seed, learning_rate_init=0.01, batch_size=32
        )
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in tqdm(range(args.epochs), desc="mlp-sk", unit="epoch", disable=None):
                est.fit(xq / 32768.0, y)
        return est
    if kind == "mlp-keras":
        return fit_keras(xq / 32768.0, y, n_classes, seed, args.epochs)
    if kind == "anomaly":
        return fit_envelope(xq / 32768.0, seed)
    if kind == "forecast":
        est = ensemble.RandomForestRegressor(n_estimators=args.trees, max_depth=args.max_depth or 10, random_state=seed)
        return est.fit(xq, y)
    raise EdgefleetError(f"unknown model {kind}", hint="one of " + ", ".join(MODELS))


def fit_envelope(xs: np.ndarray, seed: int):
    """EllipticEnvelope with a Ledoit-Wolf shrunk covariance.

    72 features over ~100 windows make the empirical covariance rank-deficient: distances then reach 1e4 and
    float32 (node) and float64 (host) disagree near the threshold. Shrinkage makes the precision matrix well
    conditioned. emlearn and the node read location_/precision_, so all three sides use the shrunk matrix.
    """
    import warnings

    from sklearn.covariance import EllipticEnvelope, LedoitWolf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the rank warning this function exists to fix
        warnings.simplefilter("ignore", RuntimeWarning)  # MCD iterations on a singular matrix
        est = EllipticEnvelope(support_fraction=1.0, random_state=seed).fit(xs)
    lw = LedoitWolf(assume_centered=False).fit(xs - est.location_)
    est.covariance_ = lw.covariance_
    est.precision_ = lw.precision_
    est.offset_ = -float(np.quantile(est.mahalanobis(xs), 0.99))
    return est


def predict(t: Trained, est, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a): the trained model's (index, score) per row, as the node reports them."""
    if t.kind == "mlp-keras":
        p = est.predict(xq / 32768.0, verbose=0)
        return p.argmax(axis=1), p.max(axis=1)
    if t.kind == "mlp-sk":
        p = est.predict_proba(xq / 32768.0)
        return p.argmax(axis=1), p.max(axis=1)
    if t.task == "anomaly":
        s = est.mahalanobis(xq / 32768.0)
        return (s > t.threshold).astype(int), s
    if t.task == "regress":
        v = est.predict(xq)
        return np.zeros(len(v), dtype=int), v
    p = est.predict_proba(xq)
    return p.argmax(axis=1), p.max(axis=1)


def mutual_information(xq: np.ndarray, y: np.ndarray, names: list[str], seed: int) -> list[tuple[str, float]]:
    """S_feature: each feature's mutual information with the label, highest first."""
    from sklearn.feature_selection import mutual_info_classif

    if len(set(y)) < 2:
        return []
    mi = mutual_info_classif(xq, y, random_state=seed)
    return sorted(zip(names, (float(v) for v in mi), strict=True), key=lambda kv: -kv[1])


# ---------------------------------------------------------------- the command


def train(args: argparse.Namespace) -> Path:
    if args.model not in MODELS:
        raise EdgefleetError(f"unknown model {args.model!r}", hint="one of " + ", ".join(MODELS))
    if args.model == "mlp-keras":
        require_tensorflow()
    key = _key(args)  # a bad key file fails before any training
    w = datasets.load(args.data, args.window, args.hop, args.sensor)
    if args.model == "forecast":
        w = forecast_node.target_first(w, args.target)  # the node forecasts its model's first channel
    names = features.names(w.channels)
    x = feature_matrix(w)
    tr, te = split(w, args.seed, args.test_size)
    scaling = modelfile.Scaling.fit(x[tr])
    xq = scaling.apply(x).astype(np.float64)
    classes: tuple[str, ...] = ()
    threshold = None
    kind = args.model
    if kind == "forecast":
        task = "regress"
        y = forecast_node.delta_target(w)  # the change from the last value (why: forecast/node.py)
        ok = ~np.isnan(y)
        tr, te = tr[ok[tr]], te[ok[te]]
    elif kind == "anomaly":
        task = "anomaly"
        y = np.zeros(len(w.y), dtype=int)
        if args.normal:
            tr = tr[w.y[tr] == args.normal]  # fit on the normal class only; the test split keeps all
            if len(tr) == 0:
                raise EdgefleetError(f"no training windows labelled {args.normal!r}")
    else:
        task = "classify"
        labelled = w.y != ""
        tr, te = tr[labelled[tr]], te[labelled[te]]
        classes = tuple(sorted(set(w.y[tr])))
        if len(classes) < 2:
            raise EdgefleetError("need at least 2 labels to train a classifier", hint="label the CSV's label column")
        y = np.array([classes.index(c) if c in classes else -1 for c in w.y])
        te = te[y[te] >= 0]
    if len(tr) < 4 or len(te) < 1:
        raise EdgefleetError(
            f"too few windows: {len(tr)} train, {len(te)} test", hint="more data or a smaller window/hop"
        )
    log.info("%s: %d windows (%d train, %d test), %d features", args.data, len(w.y), len(tr), len(te), len(names))
    if kind == "anomaly":
        rng = np.random.default_rng(args.seed)
        perm = rng.permutation(tr)
        n_val = max(1, len(perm) // 4)
        val, fit_idx = perm[:n_val], perm[n_val:]
        est = fit(kind, xq[fit_idx], y[fit_idx], 0, args)
        threshold = float(np.quantile(est.mahalanobis(xq[val] / 32768.0), args.quantile))
        log.info("anomaly threshold %.3f = %.3f quantile of %d validation windows", threshold, args.quantile, n_val)
    else:
        est = fit(kind, xq[tr], y[tr], len(classes), args)
        if kind == "forecast":
            threshold = forecast_node.band(est, xq[tr], y[tr])  # the node's anomaly band
    relevance = mutual_information(xq[tr], np.asarray(w.y)[tr], names, args.seed) if w.y[tr].any() else []
    out = Path(args.out or models_dir()) / args.name
    out.mkdir(parents=True, exist_ok=True)
    t = Trained(
        args.name, kind, task, None if kind == "mlp-keras" else est, scaling, w.sensor, w.channels, w.window, w.hop,
        classes, threshold, names, relevance, args.data,
        {k: getattr(args, k) for k in ("model", "window", "hop", "trees", "max_leaf_nodes", "max_depth", "seed", "epochs")},
    )  # fmt: skip
    if kind == "mlp-keras":
        est.save(out / "model.keras")
    with (out / "trained.pkl").open("wb") as f:
        pickle.dump(t, f)
    labels = y[te] if task != "anomaly" else (w.y[te] != (args.normal or "")).astype(int) if args.normal else y[te]
    np.savez_compressed(out / "testset.npz", x=w.x[te].astype(np.float32), xq=xq[te].astype(np.int16), y=labels,
                        label=np.asarray(w.y)[te], **(forecast_node.testset_extra(w, te) if kind == "forecast" else {}))  # fmt: skip
    from .convert import convert

    convert(out, key=key)
    return out


def _key(args: argparse.Namespace) -> bytes | None:
    from .convert import load_key

    return load_key(getattr(args, "key_file", None))


def _cmd_train(args: argparse.Namespace) -> int:
    out = train(args)
    print(f"model written to {out}/ (report: {out / 'report.html'})")
    if args.model == "forecast":
        print(forecast_node.train_report(out))
    return 0


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="export CSV path, or 'basicmotions' (bundled with aeon, offline)")
    p.add_argument("--model", default="rf", choices=MODELS, help="model kind (default rf)")
    p.add_argument("--name", required=True, help="models/<name>/ to write")
    p.add_argument("--out", help="parent directory instead of models/")
    p.add_argument("--sensor", help="CSV: which sensor's rows to use when the export holds several")
    p.add_argument("--window", type=int, default=50, help="samples per window (default 50: 5 s at 10 Hz)")
    p.add_argument("--hop", type=int, default=25, help="samples between window starts (default 25)")
    p.add_argument("--test-size", type=float, default=0.25, help="test fraction when the data has no split")
    p.add_argument("--trees", type=int, default=10, help="trees for rf/et/forecast (default 10)")
    p.add_argument("--max-leaf-nodes", type=int, default=None, help="limit leaves per tree")
    p.add_argument("--max-depth", type=int, default=None, help="limit tree depth")
    p.add_argument("--epochs", type=int, default=200, help="MLP epochs (default 200)")
    p.add_argument("--normal", help="anomaly: the label of normal data to fit on (default: all, unlabelled)")
    p.add_argument("--quantile", type=float, default=0.99, help="anomaly: validation quantile for the threshold")
    p.add_argument(
        "--target",
        help="forecast: channel whose next value is predicted (default: the first); the model predicts its change from the last value",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--key-file", help="HMAC key file to sign the model file (default: $EDGEFLEET_MODEL_KEY_FILE)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on an export CSV or BasicMotions, then convert it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_train_args(p)
    p.set_defaults(func=_cmd_train)
