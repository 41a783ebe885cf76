"""The `forecast` model kind that runs on a node: what it predicts, the baselines it must beat, its interval.

Formulation (why): the node's regressor sees one window of samples and forecasts the next sample of the target
channel. Trained on the absolute next value, a forest can only answer with values it saw in training (a tree
leaf is a mean of training targets), so any level it has not seen is forecast wrong, and it lost to "no change"
in the demo (A_forecast 0.9755 against 0.9937). Trained on the change from the last value (next - last), the
forest's answer is a correction to "no change": where it has nothing to add it predicts ~0 and falls back to the
naive forecast, and the level is carried by the last value, which the node has. So:

    forecast = last value of the target channel + model output

The target is the model's first channel (`train` puts --target first), so the node knows which one it is.
Baselines on the held-out split, in the target's units:
- naive: the next sample equals the last one;
- seasonal naive: the next sample equals the one `window` samples before it (the oldest sample of the window:
  the longest lag a node holding one window can repeat).
Prediction interval: the 99% quantile of |residual| of out-of-fold forecasts on the training split (3
time-ordered folds, so the band is not calibrated on the data it is judged on). It travels in the model file's
threshold field; the node turns a residual outside ±threshold into an `anomaly` event (firmware/node/decision.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgefleetError

log = logging.getLogger(__name__)

BAND_QUANTILE = 0.99


def target_first(w: Any, target: str | None) -> Any:
    """The windows with the target channel moved to the front (the node forecasts channel 0)."""
    ch = target or w.channels[0]
    if ch not in w.channels:
        raise EdgefleetError(f"--target {ch} is not a channel of {w.sensor}: {w.channels}")
    if w.nxt is None:
        raise EdgefleetError("this dataset has no next sample after its windows")
    i = w.channels.index(ch)
    order = [i, *[k for k in range(len(w.channels)) if k != i]]
    return replace(w, x=w.x[:, order, :], nxt=w.nxt[:, order], channels=tuple(w.channels[k] for k in order))


def delta_target(w: Any) -> np.ndarray:
    """next - last of the target (channel 0); NaN where a window has no next sample."""
    return w.nxt[:, 0] - w.x[:, 0, -1]


def band(est: Any, xq: np.ndarray, y: np.ndarray) -> float:
    """Half-width of the node's prediction interval: the BAND_QUANTILE of |out-of-fold residual| on training."""
    from sklearn.base import clone
    from sklearn.model_selection import KFold, cross_val_predict

    folds = min(3, len(y))
    if folds < 2:
        return float("nan")
    oof = cross_val_predict(clone(est), xq, y, cv=KFold(folds, shuffle=False))
    return float(np.quantile(np.abs(y - oof), BAND_QUANTILE))


def testset_extra(w: Any, te: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays stored beside the test split so scores are computed on values, not on changes."""
    return {"last": w.x[te, 0, -1].astype(np.float64), "season_ago": w.x[te, 0, 0].astype(np.float64)}


def _a_forecast(y: np.ndarray, yhat: np.ndarray) -> float | None:
    nz = y != 0  # the paper's relative error has no value where y = 0: those points are left out
    return float(1 - np.mean(np.abs(y[nz] - yhat[nz]) / np.abs(y[nz]))) if nz.any() else None


def regress_metrics(ts: Any, score: np.ndarray) -> dict[str, Any]:
    """Held-out metrics of a regressor. With `last` in the test set (the change formulation) the model, naive and
    seasonal naive are scored on the target's values; without it (an old absolute model), on y as stored."""
    y = np.asarray(ts["y"], dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    if "last" not in getattr(ts, "files", ts):
        return {"A_forecast": _a_forecast(y, score), "mae": float(np.mean(np.abs(y - score))) if len(y) else None}
    last, ago = np.asarray(ts["last"]), np.asarray(ts["season_ago"])
    actual, pred = last + y, last + score
    mae = float(np.mean(np.abs(actual - pred)))
    mae_n = float(np.mean(np.abs(actual - last)))
    mae_s = float(np.mean(np.abs(actual - ago)))
    return {
        "target": "change from the last value", "mae": mae, "A_forecast": _a_forecast(actual, pred),
        "naive_mae": mae_n, "naive_A_forecast": _a_forecast(actual, last),
        "seasonal_naive_mae": mae_s, "seasonal_naive_A_forecast": _a_forecast(actual, ago),
        "vs_naive": mae / mae_n if mae_n else None, "vs_seasonal_naive": mae / mae_s if mae_s else None,
        "beats_naive": mae < mae_n, "beats_seasonal_naive": mae < mae_s,
    }  # fmt: skip


def verdict(metrics: dict[str, Any], band_width: float | None = None) -> str:
    """What `edgefleet train` prints about a forecast model: its error beside both baselines, plainly."""
    if "naive_mae" not in metrics:
        return f"forecast: MAE {metrics.get('mae')}"
    m = metrics
    a = m["A_forecast"]
    head = (
        f"forecast (held-out, next sample): MAE {m['mae']:.4g} A_forecast {a if a is None else round(a, 4)} | "
        f"naive MAE {m['naive_mae']:.4g} | seasonal naive MAE {m['seasonal_naive_mae']:.4g}"
    )
    if m["beats_naive"] and m["beats_seasonal_naive"]:
        tail = f"beats both ({(1 - m['vs_naive']) * 100:.1f}% below naive)"
    else:
        lost = [n for n, k in (("naive", "beats_naive"), ("seasonal naive", "beats_seasonal_naive")) if not m[k]]
        tail = "WARNING: does NOT beat " + " and ".join(lost) + "; a node running it forecasts worse than repeating"
        tail += " the last value" if not m["beats_naive"] else " the value one window ago"
    band_txt = f"\nanomaly band on the node: residual outside ±{band_width:.4g}" if band_width else ""
    return f"{head}\n{tail}{band_txt}"


def train_report(out: Path) -> str:
    """The verdict from a converted model's manifest (for `edgefleet train` to print)."""
    m = json.loads((out / "manifest.json").read_text())
    return verdict(m["metrics"], m.get("threshold"))
