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

import argparse
import logging
from pathlib import Path

from ..errors import EdgefleetError
from . import forecast, models, report, series

log = logging.getLogger(__name__)


def _cmd_forecast(args: argparse.Namespace) -> int:
    if args.action == "import-series":
        return _cmd_import(args)
    missing = [o for o in ("device", "sensor", "channel", "horizon") if not getattr(args, o)]
    if missing:
        raise EdgefleetError(
            "missing " + ", ".join("--" + m for m in missing),
            hint="edgefleet forecast --db URL --device D --sensor S --channel C --horizon 6h",
        )
    out = Path(args.out or f"forecast-{args.device}-{args.sensor}-{args.channel}")
    if not out.parent.exists():
        raise EdgefleetError(f"directory {out.parent} does not exist")
    r = forecast(
        args.db, args.device, args.sensor, args.channel, series.parse_duration(args.horizon), model=args.model,
        step_ms=series.parse_duration(args.step) if args.step else None, season=args.season, folds=args.folds,
        max_gap=args.max_gap, out=out, progress=not args.quiet,
    )  # fmt: skip
    s, bt = r.series, r.backtest
    print(s.summary())
    for n in bt.notes:
        print("note:", n)
    print(f"\nbacktest: {bt.folds} folds of {bt.h} steps ({series.fmt_duration(bt.h * s.step_ms)}), season {bt.season}")
    print(report.table(bt))
    print(report.verdict(bt))
    print(f"\nforecast by {r.model}: {out}/forecast.csv (80%/95% intervals), {out}/forecast.png, {out}/backtest.csv")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    if not args.series or not args.device:
        raise EdgefleetError(
            "import-series needs --series and --device", hint="one of " + ", ".join(series.REAL_SERIES)
        )
    from ..collect.storage import open_storage

    ts, y, sensor, channel = series.real_series(args.series)
    store = open_storage(args.db)
    try:
        n = series.import_readings(store, args.device, sensor, channel, ts, y)
    finally:
        store.close()
    print(f"stored {n} readings of {args.series} as {args.device}/{sensor}/{channel} in {args.db}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forecast", help="forecast a channel of stored telemetry, backtested against naive baselines",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("action", nargs="?", choices=["import-series"], help="import-series: store a bundled real series")
    p.add_argument("--db", default="sqlite:///fleet.db", help="the fleet database URL (default sqlite:///fleet.db)")
    p.add_argument("--device", help="device id")
    p.add_argument("--sensor", help="sensor name, e.g. env")
    p.add_argument("--channel", help="channel of the sensor, e.g. temperature")
    p.add_argument("--horizon", help="how far ahead: 90s, 30m, 6h, 2d (rounded up to whole steps)")
    p.add_argument(
        "--model", default="auto",
        help=f"auto (default: the backtest's best of {', '.join(models.AUTO_CANDIDATES)}), one of "
        f"{', '.join(models.MODELS)}, or a comma list to choose from",
    )  # fmt: skip
    p.add_argument("--step", help="grid step, e.g. 1m (default: the median interval between readings)")
    p.add_argument("--season", type=int, help="season length in steps (default: a day, when the step divides it)")
    p.add_argument("--folds", type=int, default=5, help="rolling-origin backtest folds (default 5)")
    p.add_argument("--max-gap", type=int, default=3, help="longest gap in steps that is interpolated (default 3)")
    p.add_argument("--out", help="output directory (default forecast-<device>-<sensor>-<channel>)")
    p.add_argument("--series", help=f"import-series: one of {', '.join(series.REAL_SERIES)}")
    p.set_defaults(func=_cmd_forecast)
