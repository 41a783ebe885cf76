"""`edgefleet forecast`: forecast one channel of a device's stored readings, after a backtest against naive and
seasonal naive; `edgefleet forecast import-series`: store a real public series as a device's readings.

steps:
  1. edgefleet forecast import-series --db sqlite:///fleet.db --series seattle-temps --device seattle
     (or use the collector's database of a real fleet)
  2. edgefleet forecast --db sqlite:///fleet.db --device seattle --sensor env --channel temperature --horizon 6h
  3. open forecast-seattle-env-temperature/forecast.png; the table is printed and in backtest.csv

examples:
  edgefleet forecast --db sqlite:///fleet.db --device node-01 --sensor env --channel temperature --horizon 6h
  edgefleet forecast --db postgresql://fleet@db/fleet --device node-01 --sensor env --channel humidity \\
      --horizon 30m --step 1m --model ets,theta,prophet --out out/
  edgefleet forecast import-series --db sqlite:///fleet.db --series sf-temps --device sf

The database is only read (a SQLite file that does not exist is an error, never created). See docs/forecast.md
for the resampling rule, the gap handling and what each column of the backtest table means.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import EdgefleetError
from . import forecast, report, series

log = logging.getLogger(__name__)


def run_forecast(*, db: str, device: str | None, sensor: str | None, channel: str | None, horizon: str | None,
                 model: str = "auto", step: str | None = None, season: int | None = None, folds: int = 5,
                 max_gap: int = 3, out: str | None = None, progress: bool = True) -> int:  # fmt: skip
    """`edgefleet forecast`: backtest, forecast and print the report; writes its files to `out`."""
    given = {"device": device, "sensor": sensor, "channel": channel, "horizon": horizon}
    missing = [o for o, v in given.items() if not v]
    if missing:
        raise EdgefleetError(
            "missing " + ", ".join("--" + m for m in missing),
            hint="edgefleet forecast --db URL --device D --sensor S --channel C --horizon 6h",
        )
    out_dir = Path(out or f"forecast-{device}-{sensor}-{channel}")
    if not out_dir.parent.exists():
        raise EdgefleetError(f"directory {out_dir.parent} does not exist")
    r = forecast(
        db, device, sensor, channel, series.parse_duration(horizon), model=model,
        step_ms=series.parse_duration(step) if step else None, season=season, folds=folds,
        max_gap=max_gap, out=out_dir, progress=progress,
    )  # fmt: skip
    s, bt = r.series, r.backtest
    print(s.summary())
    for n in bt.notes:
        print("note:", n)
    print(f"\nbacktest: {bt.folds} folds of {bt.h} steps ({series.fmt_duration(bt.h * s.step_ms)}), season {bt.season}")
    print(report.table(bt))
    print(report.verdict(bt))
    print(f"\nforecast by {r.model}: {out_dir}/forecast.csv (80%/95% intervals), {out_dir}/forecast.png, "
          f"{out_dir}/backtest.csv")  # fmt: skip
    return 0


def import_series(db: str, series_name: str | None, device: str | None) -> int:
    """`edgefleet forecast import-series`: store a bundled real series as `device`'s readings in `db`."""
    if not series_name or not device:
        raise EdgefleetError(
            "import-series needs --series and --device", hint="one of " + ", ".join(series.REAL_SERIES)
        )
    from ..collect.storage import open_storage

    ts, y, sensor, channel = series.real_series(series_name)
    store = open_storage(db)
    try:
        n = series.import_readings(store, device, sensor, channel, ts, y)
    finally:
        store.close()
    print(f"stored {n} readings of {series_name} as {device}/{sensor}/{channel} in {db}")
    return 0
