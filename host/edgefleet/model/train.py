"""`edgefleet train` and `edgefleet convert`: windows -> features -> int16 scaling -> model -> models/<name>/.

train fits a model on the training split and saves what convert needs (trained.pkl, testset.npz); convert
(run by train, or alone to regenerate) writes model.efm (the node's file), model.h (emlearn C), manifest.json
and report.html, after measuring parity between the trained model, emlearn's C code and the node runner.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..board.firmware_shared import firmware_module
from ..errors import EdgefleetError
from ..forecast import node as forecast_node
from ..paths import models_dir
from . import anomaly as anomaly_mod
from . import budget as budget_mod
from . import datasets, features, modelfile, quantize
from .estimators import predict, require_tensorflow

log = logging.getLogger(__name__)

MODELS = ("rf", "dt", "et", "mlp-keras", "mlp-sk", "anomaly", "forecast")
DEFAULT_BOARD = "esp32-devkitc"
DEFAULT_HIDDEN = (32, 16)
MIN_AGREEMENT = 0.995


@dataclass
class TrainOptions:
    """What `train` needs, one field per `edgefleet train` option, with the same defaults (the CLI takes its
    defaults from here): code that trains a model (the demo, tests, benchmarks) names only what it changes."""

    data: str  # export CSV path, or 'basicmotions'
    name: str  # models/<name>/ to write
    model: str = "rf"  # one of MODELS
    out: str | None = None  # parent directory instead of models/
    sensor: str | None = None
    window: int = 50
    hop: int = 25
    test_size: float = 0.25
    trees: int = 10
    max_leaf_nodes: int | None = None
    max_depth: int | None = None
    epochs: int = 200
    normal: str | None = None
    fpr: float = 0.01
    board: str = DEFAULT_BOARD
    min_agreement: float = MIN_AGREEMENT
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    rate_hz: float | None = None
    split_by: str | None = None
    target: str | None = None
    seed: int = 1
    key_file: str | None = None
    labels: str | None = None  # captures file (capture.read_captures): keep and label only those intervals


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


def fit_keras(xs: np.ndarray, y: np.ndarray, n_classes: int, seed: int, epochs: int, hidden=DEFAULT_HIDDEN):
    keras = require_tensorflow()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input(shape=(xs.shape[1],))]
        + [keras.layers.Dense(h, activation="relu") for h in hidden]
        + [keras.layers.Dense(n_classes, activation="softmax")]
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


def fit(kind: str, xq: np.ndarray, y: np.ndarray, n_classes: int, *, seed: int, trees: int = 10,
        max_leaf_nodes: int | None = None, max_depth: int | None = None, epochs: int = 200,
        hidden: tuple[int, ...] | None = DEFAULT_HIDDEN):  # fmt: skip
    """Fit one model kind on int16-quantized features; nets and the envelope see them as q / 32768."""
    from sklearn import ensemble, tree
    from sklearn.neural_network import MLPClassifier

    if kind in ("rf", "et"):
        cls = ensemble.RandomForestClassifier if kind == "rf" else ensemble.ExtraTreesClassifier
        est = cls(n_estimators=trees, max_leaf_nodes=max_leaf_nodes, max_depth=max_depth, random_state=seed)
        for n in tqdm(range(1, trees + 1), desc=kind, unit="tree", disable=None):
            est.set_params(n_estimators=n, warm_start=True)
            est.fit(xq, y)
        return est
    if kind == "dt":
        return tree.DecisionTreeClassifier(max_leaf_nodes=max_leaf_nodes, max_depth=max_depth, random_state=seed).fit(
            xq, y
        )
    if kind == "mlp-sk":
        est = MLPClassifier(
            tuple(hidden or DEFAULT_HIDDEN),
            max_iter=1,
            warm_start=True,
            random_state=seed,
            learning_rate_init=0.01,
            batch_size=32,
        )
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in tqdm(range(epochs), desc="mlp-sk", unit="epoch", disable=None):
                est.fit(xq / 32768.0, y)
        return est
    if kind == "mlp-keras":
        return fit_keras(xq / 32768.0, y, n_classes, seed, epochs, tuple(hidden or DEFAULT_HIDDEN))
    if kind == "anomaly":
        return fit_envelope(xq / 32768.0, seed)
    if kind == "forecast":
        est = ensemble.RandomForestRegressor(n_estimators=trees, max_depth=max_depth or 10, random_state=seed)
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


def mutual_information(xq: np.ndarray, y: np.ndarray, names: list[str], seed: int) -> list[tuple[str, float]]:
    """S_feature: each feature's mutual information with the label, highest first."""
    from sklearn.feature_selection import mutual_info_classif

    if len(set(y)) < 2:
        return []
    mi = mutual_info_classif(xq, y, random_state=seed)
    return sorted(zip(names, (float(v) for v in mi), strict=True), key=lambda kv: -kv[1])


# ---------------------------------------------------------------- the command


def model_rate(w: datasets.Windows, opts: TrainOptions) -> float | None:
    """The rate the model runs at: --rate-hz, else (classifiers, anomaly) the node's default rate for the sensor
    (firmware config), else the data's. Data at another rate is refused: its windows would span another length of time."""
    want = opts.rate_hz
    source = "--rate-hz"
    if want is None and opts.model == "forecast":
        return (
            w.rate_hz
        )  # forecasts run on the series' own rate (often resampled, docs/forecast.md); checked with --rate-hz
    if want is None:
        want = firmware_module("node/config.py").DEFAULTS["rates"].get(w.sensor)
        source = f"the node's default {w.sensor} rate"
    if want is None:
        return w.rate_hz
    if w.rate_hz is None:
        log.warning("%s: sample rate unknown (no rate_hz column, no ts_ms steps); assuming %g Hz", opts.data, want)
        return float(want)
    if abs(w.rate_hz - want) > datasets.RATE_TOLERANCE * want:
        raise EdgefleetError(
            f"{opts.data} is sampled at {w.rate_hz:g} Hz but the model runs at {want:g} Hz ({source})",
            hint="capture full-rate data (edgefleet capture --device ID --sensor S --label L --for 60s), or give "
            "--rate-hz with the rate the node will sample at",
        )
    return float(want)


def host_accuracy(t: Trained, est, xq: np.ndarray, y: np.ndarray) -> float | None:
    if t.task != "classify" or not len(y):
        return None
    return float(np.mean(predict(t, est, xq)[0] == y))


def fit_params(opts: TrainOptions) -> dict[str, Any]:
    """The keyword arguments of `fit` that come from the train options."""
    return {"seed": opts.seed, "trees": opts.trees, "max_leaf_nodes": opts.max_leaf_nodes,
            "max_depth": opts.max_depth, "epochs": opts.epochs, "hidden": opts.hidden}  # fmt: skip


def fit_sized(kind: str, xq: np.ndarray, y: np.ndarray, n_classes: int, opts: TrainOptions,
              budget: budget_mod.Budget) -> tuple[Any, dict, Any]:  # fmt: skip
    """Fit a model whose body fits the board; returns (model, what was chosen, the model as requested)."""
    params = fit_params(opts)
    if kind in ("rf", "dt", "et", "forecast"):
        first = []

        def make(n: int, leaves: int | None, depth: int | None):
            est = fit(kind, xq, y, n_classes, **{**params, "trees": n, "max_leaf_nodes": leaves, "max_depth": depth})
            first.append(est)
            return est

        est, info = budget_mod.fit_trees(make, opts.trees, opts.max_leaf_nodes, opts.max_depth, budget.max_body,
                                         regress=kind == "forecast")  # fmt: skip
        return est, info, first[0]
    if kind.startswith("mlp"):
        want = tuple(opts.hidden or DEFAULT_HIDDEN)
        hidden, info = budget_mod.net_layers(want, xq.shape[1], n_classes, budget.max_body)
        est = fit(kind, xq, y, n_classes, **{**params, "hidden": hidden})
        return est, info, (fit(kind, xq, y, n_classes, **params) if info["resized"] else est)
    est = fit(kind, xq, y, n_classes, **params)
    nf = xq.shape[1]
    return est, {"chosen": {"body_bytes": 4 * (nf + nf * nf)}, "max_body": budget.max_body, "resized": False}, est


def _labels(w: datasets.Windows, kind: str, normal: str | None, tr: np.ndarray, te: np.ndarray):
    """(task, y, classes, tr, te) for a model kind; anomaly y is 1 for windows not labelled `normal`."""
    if kind == "anomaly":
        y = (w.y != normal).astype(int) if normal else np.zeros(len(w.y), dtype=int)
        if normal:
            tr = tr[w.y[tr] == normal]  # fit on the normal class only; the test split keeps all
            if len(tr) == 0:
                raise EdgefleetError(f"no training windows labelled {normal!r}")
        return "anomaly", y, (), tr, te
    labelled = w.y != ""
    tr, te = tr[labelled[tr]], te[labelled[te]]
    classes = tuple(sorted(set(w.y[tr])))
    if len(classes) < 2:
        raise EdgefleetError("need at least 2 labels to train a classifier", hint="label the CSV's label column")
    y = np.array([classes.index(c) if c in classes else -1 for c in w.y])
    return "classify", y, classes, tr, te[y[te] >= 0]


def train(opts: TrainOptions) -> Path:
    """Train, convert and gate; the model directory appears only when everything passed (staged, then renamed)."""
    if opts.model not in MODELS:
        raise EdgefleetError(f"unknown model {opts.model!r}", hint="one of " + ", ".join(MODELS))
    if opts.model == "mlp-keras":
        require_tensorflow()
    key = _key(opts)  # a bad key file fails before any training
    budget = budget_mod.Budget.of(opts.board or DEFAULT_BOARD)
    w = datasets.load(opts.data, opts.window, opts.hop, opts.sensor, opts.labels)
    if opts.split_by:
        datasets.apply_split_rule(w, opts.split_by)
    rate = model_rate(w, opts)
    if opts.model == "forecast":
        w = forecast_node.target_first(w, opts.target)  # the node forecasts its model's first channel
    names = features.names(w.channels)
    kind = opts.model
    n_classes = max(2, len(set(w.y.tolist()) - {""}))
    cost = budget_mod.check(budget, kind, len(w.channels), w.window, len(names), n_classes,
                            w.hop / rate if rate else None)  # fmt: skip
    x = feature_matrix(w)
    tr, te = split(w, opts.seed, opts.test_size)
    quant = quantize.fit(x[tr], names, w.x[tr])
    if quant.floored:
        log.info("quantization: %d near-constant features get a range floor: %s", len(quant.floored),
                 ", ".join(quant.floored[:8]))  # fmt: skip
    xq = quant.scaling.apply(x).astype(np.float64)
    classes: tuple[str, ...] = ()
    threshold = None
    extra: dict[str, Any] = {}
    if kind == "forecast":
        task = "regress"
        y = forecast_node.delta_target(w)  # the change from the last value (why: forecast/node.py)
        ok = ~np.isnan(y)
        tr, te = tr[ok[tr]], te[ok[te]]
    else:
        task, y, classes, tr, te = _labels(w, kind, opts.normal, tr, te)
    if len(tr) < 4 or len(te) < 1:
        raise EdgefleetError(
            f"too few windows: {len(tr)} train, {len(te)} test", hint="more data or a smaller window/hop"
        )
    log.info("%s: %d windows (%d train, %d test), %d features", opts.data, len(w.y), len(tr), len(te), len(names))
    t = Trained(
        opts.name, kind, task, None, quant.scaling, w.sensor, w.channels, w.window, w.hop, classes, None, names,
        [], opts.data, {k: getattr(opts, k) for k in ("model", "window", "hop", "trees", "max_leaf_nodes",
                                                            "max_depth", "seed", "epochs", "hidden")},
    )  # fmt: skip
    if kind == "anomaly":
        fpr = opts.fpr or 0.01
        threshold, extra["anomaly"] = anomaly_mod.cv_threshold(
            lambda rows: fit(kind, rows, y[: len(rows)], 0, **fit_params(opts)),
            lambda est, rows: est.mahalanobis(rows / 32768.0),
            xq[tr],
            fpr,
            opts.seed,
        )
        t.threshold = threshold
        log.info(
            "anomaly threshold %.3f: the %.3g quantile of %d cross-validated normal windows",
            threshold,
            1 - fpr,
            len(tr),
        )
    est, fitinfo, requested = fit_sized(kind, xq[tr], y[tr], len(classes), opts, budget)
    t.estimator = None if kind == "mlp-keras" else est
    if kind == "forecast":
        t.threshold = forecast_node.band(est, xq[tr], y[tr])  # the node's anomaly band
    acc_req, acc = host_accuracy(t, requested, xq[te], y[te]), host_accuracy(t, est, xq[te], y[te])
    fitinfo.update({"accuracy_requested": acc_req, "accuracy_chosen": acc, "board": budget.board})
    if fitinfo["resized"]:
        log.info("fitted to %s: %s (body %d <= %d bytes); host test accuracy %s -> %s", budget.board,
                 fitinfo["chosen"], fitinfo["chosen"]["body_bytes"], budget.max_body, acc_req, acc)  # fmt: skip
    t.relevance = mutual_information(xq[tr], np.asarray(w.y)[tr], names, opts.seed) if w.y[tr].any() else []
    t.params.update({"board": opts.board or DEFAULT_BOARD, "board_name": budget.board, "rate_hz": rate, "min_agreement": _min_agreement(opts), "fit": fitinfo,
                     "cost": cost, "quantization": {"floored": quant.floored, "clipped": quant.clipped}, **extra})  # fmt: skip
    out = Path(opts.out or models_dir()) / opts.name
    extra_test = forecast_node.testset_extra(w, te) if kind == "forecast" else {}
    _write_atomically(out, t, est, key, w, xq, y, te, extra_test)
    return out


def _min_agreement(opts: TrainOptions) -> float:
    v = opts.min_agreement
    v = MIN_AGREEMENT if v is None else v
    if not 0 <= v <= 1:
        raise EdgefleetError(f"--min-agreement {v} must be between 0 and 1")
    return float(v)


def _write_atomically(out: Path, t: Trained, est, key, w, xq, y, te, extra_test: dict) -> None:
    """Stage trained.pkl, testset.npz and convert's outputs in a hidden sibling directory, then rename: a failure
    at any step (conversion, parity gate, budget) leaves no partial model directory, and an older model stays."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if t.kind == "mlp-keras":
            est.save(stage / "model.keras")
        with (stage / "trained.pkl").open("wb") as f:
            pickle.dump(t, f)
        np.savez_compressed(stage / "testset.npz", x=w.x[te].astype(np.float32), xq=xq[te].astype(np.int16), y=y[te],
                            label=np.asarray(w.y)[te], case=np.asarray(w.groups)[te], **extra_test)  # fmt: skip
        from .convert import convert

        convert(stage, key=key, final_name=out)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(stage, out)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _key(opts: TrainOptions) -> bytes | None:
    from .convert import load_key

    return load_key(opts.key_file)
