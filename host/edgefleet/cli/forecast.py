"""`edgefleet forecast` and `edgefleet forecast import-series`: the forecast stage's commands (edgefleet.forecast)."""

from __future__ import annotations

import argparse

from ..forecast import command, models, series
from .common import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    # The module's docstring is this command's whole help text: steps, then examples (its epilog is part of it,
    # as `import-series` is an optional positional, not a subcommand with a help of its own).
    text = command.__doc__ or ""
    desc, examples = text.split("\nexamples:\n", 1)
    p = sub.add_parser(
        "forecast",
        help="forecast a channel of stored telemetry, backtested against naive baselines",
        description=desc.rstrip("\n"),
        epilog="examples:\n" + examples,
        formatter_class=HelpFormatter,
    )
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
    p.set_defaults(func=_forecast)


def _forecast(args: argparse.Namespace) -> int:
    if args.action == "import-series":
        return command.import_series(args.db, args.series, args.device)
    return command.run_forecast(
        db=args.db, device=args.device, sensor=args.sensor, channel=args.channel, horizon=args.horizon,
        model=args.model, step=args.step, season=args.season, folds=args.folds, max_gap=args.max_gap,
        out=args.out, progress=not args.quiet,
    )  # fmt: skip
