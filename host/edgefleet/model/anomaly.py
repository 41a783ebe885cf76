"""Anomaly thresholds that hold on new normal data (docs/train.md "Anomaly thresholds").

The threshold is the (1 - fpr) quantile of cross-validated scores: the normal training windows are split
into FOLDS folds, a model fitted on the other folds scores each fold, and the pooled out-of-fold scores are
what a window the model never saw scores. A quantile needs data: at least MIN_EXCEEDANCES / fpr windows
(1,000 for the 1% default) give ~10 windows above it; fewer is a warning with the numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

FOLDS = 5
MIN_EXCEEDANCES = 10


def min_windows(fpr: float) -> int:
    return math.ceil(MIN_EXCEEDANCES / fpr)


def cv_threshold(fit: Callable[[np.ndarray], object], score: Callable[[object, np.ndarray], np.ndarray],
                 x: np.ndarray, fpr: float, seed: int) -> tuple[float, dict]:  # fmt: skip
    """Threshold at the (1 - fpr) quantile of out-of-fold scores of normal rows x; returns it and a summary."""
    if not 0 < fpr < 0.5:
        from ..errors import EdgefleetError

        raise EdgefleetError(f"--fpr {fpr} must be between 0 and 0.5")
    n = len(x)
    folds = min(FOLDS, n // 2)
    order = np.random.default_rng(seed).permutation(n)
    scores = np.empty(n)
    for k in range(folds):
        held = order[k::folds]
        rest = np.setdiff1d(order, held)
        scores[held] = score(fit(x[rest]), x[held])
    thr = float(np.quantile(scores, 1 - fpr, method="higher"))
    need = min_windows(fpr)
    info = {"fpr_target": fpr, "n_normal_train": n, "folds": folds, "min_windows": need,
            "enough_normal_data": n >= need}  # fmt: skip
    if n < need:
        info["warning"] = (
            f"anomaly threshold from only {n} normal windows ({folds}-fold cross-validated): a {fpr:.1%} false-positive "
            f"target needs at least {need} (~{MIN_EXCEEDANCES} windows above the threshold); expect the measured rate "
            f"to differ from the target (see its interval in the report)"
        )
        log.warning("%s", info["warning"])
    return thr, info


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% by default) for k events in n trials."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)
