"""The trained estimators as train fits them and convert encodes them: the (a) side of parity.

Why a module of its own: train runs convert at its end, and convert reads what train fitted (an MLP's layers,
the trained model's predictions); with these here both import downwards and neither imports the other.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import EdgefleetError


def mlp_layers_keras(model) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """A Keras net's Dense layers as (weights, biases, activation) for the model file's MLP body."""
    out = []
    for layer in model.layers:
        if type(layer).__name__ != "Dense":
            raise EdgefleetError(f"Keras layer {type(layer).__name__} is not supported", hint="use Dense layers only")
        w, b = layer.get_weights()
        out.append((w, b, layer.activation.__name__))
    return out


def mlp_layers_sk(model) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """The net's layers; a binary classifier's single logistic output becomes softmax over (0, z), which is
    exactly (1 - sigmoid(z), sigmoid(z)): the node's runner wants one output per class."""
    acts = [model.activation] * (len(model.coefs_) - 1) + [model.out_activation_]
    layers = list(zip(model.coefs_, model.intercepts_, acts, strict=True))
    w, b, act = layers[-1]
    if act == "logistic" and w.shape[1] == 1:
        layers[-1] = (np.hstack([np.zeros_like(w), w]), np.concatenate([np.zeros_like(b), b]), "softmax")
    return layers


def require_tensorflow():
    """keras, or an error naming the extra to install: TensorFlow is optional (edgefleet[ml]), only mlp-keras
    needs it."""
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
    except ImportError as e:
        raise EdgefleetError(
            "TensorFlow/Keras is not installed, --model mlp-keras needs it",
            hint="pip install 'edgefleet[ml]' (tensorflow-cpu), or use --model mlp-sk",
        ) from e
    return keras


def predict(t: Any, est, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a): the trained model's (index, score) per row, as the node reports them. `t` is a train.Trained."""
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
    if t.kind in ("rf", "et", "dt"):
        return hard_vote(est, xq)
    p = est.predict_proba(xq)
    return p.argmax(axis=1), p.max(axis=1)


def hard_vote(est, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The forest as the model file encodes it and the node runs it: each tree votes its leaf's majority class,
    the most votes win (lowest class on a tie), score = votes / trees. scikit-learn's predict_proba averages
    the leaves' class fractions instead (a soft vote), which differs once leaves are impure (limited leaves)."""
    trees = getattr(est, "estimators_", [est])
    n_classes = len(est.classes_)
    votes = np.zeros((len(xq), n_classes), dtype=int)
    rows = np.arange(len(xq))
    for tr in trees:
        votes[rows, tr.tree_.value[tr.apply(xq), 0, :n_classes].argmax(axis=1)] += 1
    best = votes.argmax(axis=1)
    return best, votes[rows, best] / len(trees)
