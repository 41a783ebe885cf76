"""What a forecast run writes: forecast.csv (with prediction intervals), backtest.csv, forecast.png, summary.json,
and the backtest table as text (printed by the command, pasted into docs/forecast.md by hand)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from pathlib import Path

import numpy as np

from .backtest import Backtest
from .models import LEVELS, Prediction
from .series import Series, fmt_duration

COLUMNS = ("model", "MAE", "A_forecast", "MASE_naive", "MASE_snaive", "vs_naive", "vs_snaive", "cover80", "fit_s")


def _f(x: float | None, fmt: str = "{:.4f}") -> str:
    return "n/a" if x is None or not np.isfinite(x) else fmt.format(x)


def table(bt: Backtest) -> str:
    """The backtest table in Markdown (readable in a terminal too); the chosen model is marked with *."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for s in bt.scores:
        name = s.model + (" *" if s.model == bt.best else "")
        cells = [name, _f(s.mae), _f(s.a_forecast), _f(s.mase_naive, "{:.3f}"), _f(s.mase_snaive, "{:.3f}"),
                 _f(s.vs_naive, "{:.3f}"), _f(s.vs_snaive, "{:.3f}"), _f(s.cover80, "{:.2f}"), _f(s.fit_s, "{:.2f}")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(bt: Backtest) -> str:
    """One sentence on whether the chosen model beats both baselines, said plainly when it does not."""
    s = bt.score(bt.best)
    if bt.best in ("naive", "seasonal-naive"):
        return f"no model beat the baselines on this series: the forecast is the {bt.best} baseline"
    n, m = (1 - s.vs_naive) * 100, (1 - s.vs_snaive) * 100
    return f"{bt.best} beats naive by {n:.1f}% and seasonal naive by {m:.1f}% (MAE, {bt.folds}-fold backtest)"


def _iso(ms: np.ndarray) -> list[str]:
    return [dt.datetime.fromtimestamp(int(t) / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in ms]


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        write(f)
    os.replace(tmp, path)


def write_forecast_csv(path: Path, times: np.ndarray, p: Prediction) -> None:
    def w(f):
        out = csv.writer(f)
        out.writerow(["time", "ts_ms", "forecast", *[f"{b}{lv}" for lv in LEVELS for b in ("lo", "hi")]])
        for i, (iso, t) in enumerate(zip(_iso(times), times, strict=True)):
            row = [iso, int(t), f"{p.mean[i]:.6g}"]
            for lv in LEVELS:
                row += [f"{p.lo[lv][i]:.6g}", f"{p.hi[lv][i]:.6g}"]
            out.writerow(row)

    _atomic(path, w)


def write_backtest_csv(path: Path, bt: Backtest) -> None:
    def w(f):
        out = csv.writer(f)
        out.writerow([*COLUMNS, "chosen"])
        for s in bt.scores:
            out.writerow([s.model, s.mae, s.a_forecast, s.mase_naive, s.mase_snaive, s.vs_naive, s.vs_snaive,
                          s.cover80, s.fit_s, int(s.model == bt.best)])  # fmt: skip

    _atomic(path, w)


def plot(path: Path, s: Series, bt: Backtest, times: np.ndarray, p: Prediction, history: int = 0) -> None:
    """Two panels: the history's tail with the forecast and its intervals; the last backtest block, the
    chosen model and both baselines against what actually happened."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_all = s.times_ms.astype("datetime64[ms]")
    tf = times.astype("datetime64[ms]")
    keep = history or max(4 * bt.h, 3 * bt.season if bt.season > 1 else 0, 48)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6.4))
    a1.plot(t_all[-keep:], s.y[-keep:], color="k", lw=1, label="history")
    a1.fill_between(tf, p.lo[95], p.hi[95], color="C0", alpha=0.15, label="95% interval")
    a1.fill_between(tf, p.lo[80], p.hi[80], color="C0", alpha=0.3, label="80% interval")
    a1.plot(tf, p.mean, color="C0", lw=1.5, label=f"forecast ({bt.best})")
    a1.set_title(f"{s.device} {s.sensor}/{s.channel}: {fmt_duration(bt.h * s.step_ms)} ahead")
    a1.legend(loc="upper left", fontsize=8)
    o = bt.origins[-1]
    span = slice(max(0, o - 2 * bt.h), o + bt.h)
    a2.plot(t_all[span], s.y[span], color="k", lw=1, label="actual")
    tb = t_all[o : o + bt.h]
    for m, style in ((bt.best, "-"), ("naive", "--"), ("seasonal-naive", ":")):
        if m in bt.last_fold:
            sc = bt.score(m)
            a2.plot(tb, bt.last_fold[m], style, lw=1.5, label=f"{m}: A_forecast {_f(sc.a_forecast)}, MAE {sc.mae:.3g}")
    a2.set_title("last backtest block: forecast against actual")
    a2.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def write_summary(path: Path, s: Series, bt: Backtest, model: str) -> None:
    data = {
        "device": s.device, "sensor": s.sensor, "channel": s.channel, "step_ms": s.step_ms, "step_rule": s.step_rule,
        "points": len(s.y), "readings": s.readings, "used_readings": s.used_readings, "interpolated": s.interpolated,
        "short_gaps": len(s.short_gaps), "long_gaps": [g.__dict__ for g in s.long_gaps],
        "horizon_steps": bt.h, "season": bt.season, "folds": bt.folds, "model": model, "chosen_by_backtest": bt.best,
        "backtest": [sc.row() for sc in bt.scores], "notes": bt.notes, "verdict": verdict(bt),
    }  # fmt: skip
    _atomic(path, lambda f: json.dump(data, f, indent=1, default=float))
