"""Forecasting stored telemetry: `edgefleet forecast` (docs/forecast.md).

series (database -> regular grid, gaps) -> backtest (every model against naive and seasonal naive on the
series' own past) -> the chosen model forecasts the horizon -> report (CSV, PNG, table). The `forecast` model
kind that runs on a node is in `edgefleet.forecast.node`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgefleetError
from . import backtest, models, report
from .series import Series, fmt_duration, load_series

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
MAX_AUTO_SEASON = 168  # steps; a daily cycle on a grid finer than ~9 min is too long a season for ETS/ARIMA


@dataclass
class Result:
    series: Series
    backtest: backtest.Backtest
    model: str  # the model that made the forecast
    times_ms: np.ndarray
    prediction: models.Prediction
    out: Path | None


def auto_season(step_ms: int) -> tuple[int, str]:
    """The daily cycle in steps when the grid divides a day into 2..MAX_AUTO_SEASON steps; else none."""
    if step_ms < DAY_MS and DAY_MS % step_ms == 0 and 2 <= DAY_MS // step_ms <= MAX_AUTO_SEASON:
        return DAY_MS // step_ms, "daily cycle"
    return 1, "no daily cycle on this grid (give --season)"


def horizon_steps(horizon_ms: int, step_ms: int) -> int:
    return max(1, -(-horizon_ms // step_ms))


def run(
    s: Series,
    horizon_ms: int,
    model: str = "auto",
    season: int | None = None,
    folds: int = 5,
    out: Path | None = None,
    progress: bool = False,
) -> Result:
    """Backtest, forecast and (with `out`) write the report files for an already loaded series."""
    h = horizon_steps(horizon_ms, s.step_ms)
    backtest.check_series(s.y, h, f"{s.device}/{s.sensor}/{s.channel}")
    names = models.resolve(model)
    if season is None:
        season, why = auto_season(s.step_ms)
        log.info("season: %d steps (%s)", season, why)
    bt = backtest.run(s.y, h, names, season, s.step_ms, folds, progress)
    chosen = model if model in models.MODELS else bt.best  # one model named: that one; auto or a list: the best
    pred = models.fit_predict(chosen, s.y, h, bt.season, s.step_ms)
    times = s.times_ms[-1] + np.arange(1, h + 1, dtype=np.int64) * s.step_ms
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report.write_forecast_csv(out / "forecast.csv", times, pred)
        report.write_backtest_csv(out / "backtest.csv", bt)
        report.plot(out / "forecast.png", s, bt, times, pred)
        report.write_summary(out / "summary.json", s, bt, chosen)
    return Result(s, bt, chosen, times, pred, out)


def forecast(
    db: str,
    device: str,
    sensor: str,
    channel: str,
    horizon_ms: int,
    model: str = "auto",
    step_ms: int | None = None,
    season: int | None = None,
    folds: int = 5,
    max_gap: int = 3,
    out: Path | None = None,
    progress: bool = False,
) -> Result:
    """`edgefleet forecast`: load the channel from the fleet database (read-only) and run()."""
    if folds < 1:
        raise EdgefleetError("--folds must be at least 1")
    models.resolve(model)  # a bad --model fails before any reading is loaded
    s = load_series(db, device, sensor, channel, step_ms, max_gap)
    log.info("%s", s.summary())
    return run(s, horizon_ms, model, season, folds, out, progress)


__all__ = ["Result", "auto_season", "fmt_duration", "forecast", "run"]
