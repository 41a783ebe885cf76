"""Forecast accuracy on real series against the two baselines, through the command a user runs.

Each series ships inside an installed wheel (vega_datasets: hourly temperatures of Seattle and San Francisco,
2010; statsmodels: weekly Mauna Loa CO2 with its missing weeks). It is imported into a fresh SQLite fleet
database as a device's readings (`edgefleet forecast import-series`), then forecast with `edgefleet forecast`
(rolling-origin backtest, every model against naive and seasonal naive in the same run). Printed: each model's
scores side by side with both baselines, and whether the chosen model meets the goal of issue 15:
MASE against seasonal naive below 1 and at least 10% lower MAE than naive.

    PYTHONPATH=host .venv/bin/python bench/forecast.py [--series seattle-temps,sf-temps] [--horizon 6h]
        [--model auto,prophet] [--folds 5]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

from edgefleet.cli import main

# per series: horizon and extra options
SETTINGS = {"seattle-temps": ("6h", []), "sf-temps": ("6h", [])}


def run_one(name: str, work: Path, model: str, folds: int, horizon: str | None) -> tuple[list[dict], float]:
    url = f"sqlite:///{work}/fleet.db"
    dev = name.replace("-temps", "")
    if main(["-q", "forecast", "import-series", "--db", url, "--series", name, "--device", dev]) != 0:
        raise SystemExit(f"import of {name} failed")
    from edgefleet.forecast.series import REAL_SERIES

    _, sensor, channel, _ = REAL_SERIES[name]
    h, extra = SETTINGS.get(name, ("6h", []))
    out = work / f"out-{name}"
    t0 = time.perf_counter()
    rc = main(["-q", "forecast", "--db", url, "--device", dev, "--sensor", sensor, "--channel", channel,
               "--horizon", horizon or h, "--model", model, "--folds", str(folds), "--out", str(out), *extra])  # fmt: skip
    if rc != 0:
        raise SystemExit(f"forecast of {name} failed")
    return list(csv.DictReader((out / "backtest.csv").open())), time.perf_counter() - t0


def main_bench() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", default="seattle-temps,sf-temps", help="comma list (default: both)")
    ap.add_argument("--model", default="auto,prophet", help="--model of edgefleet forecast (default auto,prophet)")
    ap.add_argument("--folds", type=int, default=5, help="backtest folds (default 5)")
    ap.add_argument("--horizon", help="override every series' horizon")
    args = ap.parse_args()
    ok_all = True
    summary = []
    with tempfile.TemporaryDirectory(prefix="bench-forecast-") as tmp:
        for name in args.series.split(","):
            work = Path(tmp) / name
            work.mkdir()
            rows, secs = run_one(name, work, args.model, args.folds, args.horizon)
            print(f"\n== {name}  ({secs:.1f} s for backtest + forecast)", flush=True)
            print(f"{'model':16} {'MAE':>9} {'A_forecast':>10} {'MASE_naive':>10} {'MASE_snaive':>11} "
                  f"{'vs_naive':>8} {'vs_snaive':>9} {'cover80':>7}")  # fmt: skip
            for r in rows:
                mark = " <- chosen" if r["chosen"] == "1" else ""
                print(f"{r['model']:16} {float(r['MAE']):9.4f} {_num(r['A_forecast']):>10} "
                      f"{float(r['MASE_naive']):10.3f} {float(r['MASE_snaive']):11.3f} {float(r['vs_naive']):8.3f} "
                      f"{float(r['vs_snaive']):9.3f} {float(r['cover80']):7.2f}{mark}")  # fmt: skip
            best = next(r for r in rows if r["chosen"] == "1")
            goal = float(best["MASE_snaive"]) < 1 and float(best["vs_naive"]) <= 0.9
            ok_all &= goal
            summary.append(f"{name}: chosen {best['model']}, MASE_snaive {float(best['MASE_snaive']):.3f}, "
                           f"MAE {(1 - float(best['vs_naive'])) * 100:.1f}% below naive, "
                           f"{(1 - float(best['vs_snaive'])) * 100:.1f}% below seasonal naive: "
                           + ("goal met" if goal else "GOAL NOT MET"))  # fmt: skip
    print("\n" + "\n".join(summary))
    return 0 if ok_all else 1


def _num(x: str) -> str:
    return f"{float(x):.4f}" if x not in ("", "None") else "n/a"


if __name__ == "__main__":
    sys.exit(main_bench())
