"""Rolling-origin backtest: how each model would have done on the series' own recent past.

The last `folds * h` points are cut into `folds` consecutive blocks of h steps. For each block, every model is
fitted on everything before it (its origin) and forecasts the block; errors of all blocks are pooled. A model is
only worth running if it beats "no change" (naive) and "same as one season ago" (seasonal naive) on these
blocks, so every score is given against both:

- MAE: mean |y - ŷ|.
- A_forecast = 1 - mean(|y - ŷ| / |y|), the paper's formula. Points where y = 0 have no relative error and are
  left out (their count is reported in `zeros`); when every y is 0 it is undefined (None).
- MASE_naive / MASE_snaive: mean |y - ŷ| scaled by the in-sample MAE of the one-step naive (lag 1) or seasonal
  naive (lag = season) forecast on that fold's training data (Hyndman & Koehler). Below 1 is better than the
  in-sample baseline; n/a when that baseline made no error in sample (a perfectly periodic series).
- vs_naive / vs_snaive: MAE / the baseline's MAE on the same blocks. Below 1 means fewer errors than the
  baseline made out of sample; 0.9 is 10% lower error.
- cover80: the share of actual values inside the model's 80% prediction interval.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..errors import EdgefleetError
from . import models

log = logging.getLogger(__name__)

MIN_POINTS = 20  # fewer points than this is not a series to forecast
MIN_TRAIN = 20  # the shortest history a fold fits on


@dataclass
class Score:
    model: str
    mae: float
    a_forecast: float | None
    zeros: int
    mase_naive: float
    mase_snaive: float
    vs_naive: float
    vs_snaive: float
    cover80: float
    fit_s: float

    def row(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Backtest:
    h: int
    season: int
    folds: int
    origins: list[int]
    scores: list[Score]
    best: str
    # model -> (origin of the last fold, its forecast), for the forecast-vs-actual plot
    last_fold: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def score(self, model: str) -> Score:
        return next(s for s in self.scores if s.model == model)


def check_series(y: np.ndarray, h: int, name: str) -> None:
    """The bad inputs a forecast cannot be made from, each with one clear message."""
    if len(y) < MIN_POINTS:
        raise EdgefleetError(
            f"too little data: {name} has {len(y)} points on the grid, a forecast needs at least {MIN_POINTS}",
            hint="collect longer, or use a smaller --step",
        )
    if h > len(y):
        raise EdgefleetError(
            f"horizon of {h} steps is longer than the history ({len(y)} steps)",
            hint="a shorter --horizon, or more history",
        )
    if float(np.ptp(y)) == 0.0:
        raise EdgefleetError(
            f"{name} is constant ({y[0]:g} at every step): there is nothing to model, every forecast is that value",
            hint="check the sensor (stuck?) or pick another channel",
        )


def plan(n: int, h: int, folds: int, season: int) -> tuple[int, int, list[str]]:
    """(folds, season) that fit the history, and notes on what was reduced."""
    notes = []
    k = folds
    while k > 1 and n - k * h < MIN_TRAIN:
        k -= 1
    if n - k * h < MIN_TRAIN:
        raise EdgefleetError(
            f"too little data to backtest a {h}-step horizon: {n} points, need at least {h + MIN_TRAIN}",
            hint="a shorter --horizon, or more history",
        )
    if k < folds:
        notes.append(f"backtest folds reduced from {folds} to {k} to keep >= {MIN_TRAIN} training points")
    if season > 1 and n - k * h < 2 * season:
        notes.append(f"season of {season} steps needs 2 seasons of training data; seasonality off")
        season = 1
    return k, season, notes


def _scale(train: np.ndarray, lag: int) -> float:
    if len(train) <= lag:
        lag = 1
    d = np.abs(train[lag:] - train[:-lag])
    s = float(d.mean()) if len(d) else 0.0
    return s if s > 0 else float("nan")


def run(
    y: np.ndarray, h: int, names: list[str], season: int, step_ms: int, folds: int = 5, progress: bool = False
) -> Backtest:
    k, season, notes = plan(len(y), h, folds, season)
    origins = [len(y) - (k - i) * h for i in range(k)]
    errs: dict[str, list[np.ndarray]] = {m: [] for m in names}
    inside: dict[str, list[np.ndarray]] = {m: [] for m in names}
    scaled1: dict[str, list[np.ndarray]] = {m: [] for m in names}
    scaledm: dict[str, list[np.ndarray]] = {m: [] for m in names}
    secs = dict.fromkeys(names, 0.0)
    actual = np.concatenate([y[o : o + h] for o in origins])
    last: dict[str, np.ndarray] = {}
    bar = tqdm(total=k * len(names), desc="backtest", unit="fit", disable=not progress)
    for o in origins:
        train, test = y[:o], y[o : o + h]
        s1, sm = _scale(train, 1), _scale(train, max(1, season))
        for m in names:
            t0 = time.perf_counter()
            p = models.fit_predict(m, train, h, season, step_ms)
            secs[m] += time.perf_counter() - t0
            e = np.abs(test - p.mean)
            errs[m].append(e)
            scaled1[m].append(e / s1)
            scaledm[m].append(e / sm)
            inside[m].append((test >= p.lo[80]) & (test <= p.hi[80]))
            last[m] = p.mean
            bar.update(1)
    bar.close()
    nz = actual != 0
    zeros = int((~nz).sum())
    if zeros:
        notes.append(f"A_forecast leaves out {zeros} of {len(actual)} backtest points where the actual value is 0")
    mae = {m: float(np.concatenate(errs[m]).mean()) for m in names}
    scores = []
    for m in names:
        e = np.concatenate(errs[m])
        a = float(1 - np.mean(e[nz] / np.abs(actual[nz]))) if nz.any() else None
        scores.append(
            Score(
                model=m, mae=mae[m], a_forecast=a, zeros=zeros,
                mase_naive=_nanmean(np.concatenate(scaled1[m])),
                mase_snaive=_nanmean(np.concatenate(scaledm[m])),
                vs_naive=_ratio(mae[m], mae["naive"]), vs_snaive=_ratio(mae[m], mae["seasonal-naive"]),
                cover80=float(np.concatenate(inside[m]).mean()), fit_s=secs[m] / k,
            )
        )  # fmt: skip
    best = min(names, key=lambda m: (mae[m], names.index(m)))
    return Backtest(h, season, k, origins, scores, best, last, notes)


def _nanmean(a: np.ndarray) -> float:
    """Mean over the folds whose in-sample baseline made an error; NaN (shown n/a) when none did."""
    ok = np.isfinite(a)
    return float(a[ok].mean()) if ok.any() else float("nan")


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return 1.0 if a == 0 else float("inf")
    return a / b
