"""The forecasters: two baselines, statsforecast's statistical models, and Prophet as an option.

Every model has one signature, `fit_predict(y, h, season, levels) -> Prediction`, so the backtest and the
command treat them alike. statsforecast compiles its models with numba on first use (~0.5 s per model after a
~2.5 s import on this machine); fits run on the last `MAX_FIT` points at most, which bounds a fit's cost on
long histories (AutoARIMA's search is the slow one, so `arima` restricts its orders).
Prophet's wheel ships its compiled Stan model, so it fits offline; when it is not installed, asking for it is
an error that says so (it is never picked by `auto` silently).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import EdgefleetError

log = logging.getLogger(__name__)

MAX_FIT = 1500  # points a model is fitted on (the most recent ones)
LEVELS = (80, 95)
BASELINES = ("naive", "seasonal-naive")
STAT_MODELS = ("ets", "theta", "arima")
MODELS = (*BASELINES, *STAT_MODELS, "prophet")
AUTO_CANDIDATES = (*BASELINES, *STAT_MODELS)  # prophet only when asked for: slower, needs its own package


@dataclass
class Prediction:
    mean: np.ndarray
    lo: dict[int, np.ndarray]  # level -> lower bound
    hi: dict[int, np.ndarray]


def _statsforecast():
    os.environ.setdefault("NIXTLA_ID_AS_COL", "1")
    try:
        from statsforecast import models as sf
    except ImportError:
        raise EdgefleetError(
            "statsforecast is not installed", hint="pip install 'edgefleet[forecast]' (statsforecast)"
        ) from None
    return sf


def _sf_model(name: str, season: int):
    sf = _statsforecast()
    m = max(1, season)
    if name == "naive":
        return sf.Naive()
    if name == "seasonal-naive":
        return sf.SeasonalNaive(season_length=m)
    if name == "ets":
        return sf.AutoETS(season_length=m)
    if name == "theta":
        return sf.AutoTheta(season_length=m)
    if name == "arima":
        # restricted stepwise search: the full search takes ~9 s per fit on 4 weeks of hourly data
        return sf.AutoARIMA(season_length=m, max_p=2, max_q=2, max_P=1, max_Q=1, approximation=True)
    raise EdgefleetError(f"unknown model {name!r}", hint="one of " + ", ".join(MODELS))


def _fit_sf(name: str, y: np.ndarray, h: int, season: int, levels: tuple[int, ...]) -> Prediction:
    model = _sf_model(name, season)
    # convergence chatter of the ARIMA optimizer and float underflow inside the models (raised, not warned,
    # when some other library set np.seterr(all="raise") in the process): the backtest judges the result
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        out = model.forecast(y=y, h=h, level=list(levels))
    mean = np.asarray(out["mean"], dtype=float)
    lo = {lv: np.asarray(out[f"lo-{lv}"], dtype=float) for lv in levels}
    hi = {lv: np.asarray(out[f"hi-{lv}"], dtype=float) for lv in levels}
    return Prediction(mean, lo, hi)


def prophet_available() -> bool:
    try:
        import prophet  # noqa: F401
    except ImportError:
        return False
    return True


def _fit_prophet(y: np.ndarray, h: int, season: int, levels: tuple[int, ...], step_ms: int) -> Prediction:
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)  # "plotly failed": we plot with matplotlib
    try:
        import pandas as pd
        from prophet import Prophet
    except ImportError:
        raise EdgefleetError(
            "Prophet is not installed, --model prophet needs it",
            hint="pip install 'edgefleet[forecast]' (prophet ships its compiled Stan model; no network needed)",
        ) from None
    for noisy in ("cmdstanpy", "prophet"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ds = pd.to_datetime(np.arange(len(y) + h, dtype=np.int64) * step_ms, unit="ms")
    daily = step_ms < 86_400_000 and season * step_ms == 86_400_000
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    mean = None
    for lv in levels:  # Prophet gives one interval width per fit
        m = Prophet(
            daily_seasonality=daily, weekly_seasonality=False, yearly_seasonality=False,
            interval_width=lv / 100.0, uncertainty_samples=200,
        )  # fmt: skip
        if season > 1 and not daily:
            m.add_seasonality("season", period=season * step_ms / 86_400_000, fourier_order=5)
        m.fit(pd.DataFrame({"ds": ds[: len(y)], "y": y}))
        p = m.predict(pd.DataFrame({"ds": ds[len(y) :]}))
        mean = p["yhat"].to_numpy(dtype=float)
        out[lv] = (p["yhat_lower"].to_numpy(dtype=float), p["yhat_upper"].to_numpy(dtype=float))
    assert mean is not None
    return Prediction(mean, {lv: v[0] for lv, v in out.items()}, {lv: v[1] for lv, v in out.items()})


def fit_predict(
    name: str, y: np.ndarray, h: int, season: int, step_ms: int, levels: tuple[int, ...] = LEVELS
) -> Prediction:
    """Fit `name` on (the last MAX_FIT points of) y and forecast h steps with prediction intervals."""
    y = np.asarray(y[-MAX_FIT:], dtype=float)
    if name == "prophet":
        return _fit_prophet(y, h, season, levels, step_ms)
    return _fit_sf(name, y, h, season, levels)


def resolve(spec: str) -> list[str]:
    """--model value -> the models to backtest. 'auto': the candidates; else a comma list (which may hold auto). Baselines are
    always included, because every score is reported against them."""
    names: list[str] = []
    for s in (p.strip() for p in spec.split(",")):
        for n in AUTO_CANDIDATES if s == "auto" else (s,) if s else ():
            if n not in names:
                names.append(n)
    for n in names:
        if n not in MODELS:
            raise EdgefleetError(f"unknown model {n!r}", hint="auto, or a comma list of: " + ", ".join(MODELS))
    if "prophet" in names and not prophet_available():
        raise EdgefleetError(
            "Prophet is not installed, --model prophet needs it",
            hint="pip install 'edgefleet[forecast]'; or use ets, theta, arima",
        )
    return [*BASELINES, *[n for n in names if n not in BASELINES]]
