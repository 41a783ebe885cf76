"""`edgefleet capture`, `train`, `convert` and `build-module`: the model stage's commands (edgefleet.model)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..forecast import node as forecast_node
from ..model import build_module, capture, convert, report, train
from ..paths import models_dir
from ..wire import protocol
from .common import add_command, options

# ---------------------------------------------------------------- capture


def register_capture(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "capture",
        help="record labelled full-rate sensor data from chosen nodes for a while",
        description=capture.__doc__,
        examples=[
            "edgefleet capture --device n1 --sensor imu --label walking --for 60s",
            "edgefleet capture --device n1 --device n2 --sensor imu --label idle --for 2m "
            "--broker mqtts://op:pw@fleet:8883",
            "edgefleet capture --device n1 --sensor imu --label walking --for 60s --out walking.csv",
        ],
    )
    p.add_argument("--device", action="append", required=True, help="node id (repeat for several nodes)")
    p.add_argument("--sensor", required=True, help="board sensor name to log at full rate, e.g. imu")
    p.add_argument("--label", required=True, help="label for the captured interval, e.g. walking")
    p.add_argument("--for", required=True, metavar="DURATION", help="how long: 60s, 2m, 1h")
    p.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="mqtt://[user:pass@]host:port or mqtts://... as the operator identity (default mqtt://127.0.0.1:1883)",
    )
    p.add_argument("--prefix", default=protocol.DEFAULT_PREFIX, help="topic prefix (default: edgefleet)")
    p.add_argument("--out", default="captures.csv", help="captures file to append to (default captures.csv)")
    p.add_argument(
        "--restore-every",
        type=int,
        help="log_every to restore afterwards (default: the node's default for the sensor, imu 10)",
    )
    p.add_argument("--ca", help="CA certificate file for TLS (mqtts://)")
    p.add_argument("--cert", help="client certificate file for TLS")
    p.add_argument("--key", help="client private key file for TLS")
    p.set_defaults(func=_capture)


def _capture(args: argparse.Namespace) -> int:
    rows = capture.capture(args.broker, args.device, args.sensor, args.label,
                           capture.parse_duration(getattr(args, "for")), Path(args.out), args.prefix,
                           args.restore_every, args.ca, args.cert, args.key)  # fmt: skip
    print(f"captured {rows[0].sensor} as {rows[0].label!r} on {len(rows)} node(s) for "
          f"{(rows[0].end_ms - rows[0].start_ms) / 1000:.1f} s; intervals appended to {args.out}")  # fmt: skip
    return 0


# ---------------------------------------------------------------- train

# The defaults of `edgefleet train` are TrainOptions' own, so a caller of train() gets what the command does.
TRAIN_DEFAULTS = train.TrainOptions(data="", name="")


def add_train_args(p: argparse.ArgumentParser) -> None:
    d = TRAIN_DEFAULTS
    p.add_argument("--data", required=True, help="export CSV path, or 'basicmotions' (bundled with aeon, offline)")
    p.add_argument("--model", default=d.model, choices=train.MODELS, help=f"model kind (default {d.model})")
    p.add_argument("--name", required=True, help="models/<name>/ to write")
    p.add_argument("--out", help="parent directory instead of models/")
    p.add_argument("--sensor", help="CSV: which sensor's rows to use when the export holds several")
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="CSV: a captures file from `edgefleet capture`; keep only its intervals of the export and label them",
    )
    p.add_argument(
        "--window", type=int, default=d.window, help=f"samples per window (default {d.window}: 5 s at 10 Hz)"
    )
    p.add_argument("--hop", type=int, default=d.hop, help=f"samples between window starts (default {d.hop})")
    p.add_argument("--test-size", type=float, default=d.test_size, help="test fraction when the data has no split")
    p.add_argument("--trees", type=int, default=d.trees, help=f"trees for rf/et/forecast (default {d.trees})")
    p.add_argument("--max-leaf-nodes", type=int, default=d.max_leaf_nodes, help="limit leaves per tree")
    p.add_argument("--max-depth", type=int, default=d.max_depth, help="limit tree depth")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"MLP epochs (default {d.epochs})")
    p.add_argument("--normal", help="anomaly: the label of normal data to fit on (default: all, unlabelled)")
    p.add_argument(
        "--fpr",
        type=float,
        default=d.fpr,
        help="anomaly: target false-positive rate on normal windows; the threshold is its quantile of "
        f"cross-validated scores (default {d.fpr})",
    )
    p.add_argument(
        "--board",
        default=d.board,
        help=f"board whose budget (boards/<name>.json: inference, heap_bytes) the model must fit (default {d.board})",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=d.min_agreement,
        help="fail unless trained model and node runner agree on this fraction of test windows "
        f"(default {d.min_agreement})",
    )
    p.add_argument(
        "--hidden",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        default=d.hidden,
        help="mlp: hidden layer sizes, comma separated; shrunk to fit the board "
        f"(default {','.join(map(str, d.hidden))})",
    )
    p.add_argument(
        "--rate-hz",
        type=float,
        help="the node's sample rate for the model (default: the node's configured rate for the sensor); "
        "data at another rate is refused",
    )
    p.add_argument(
        "--split-by",
        help="train/test by a rule: device=REGEX puts matching devices in the test split "
        "(default: the CSV's split column if any, else by device series)",
    )
    p.add_argument(
        "--target",
        help="forecast: channel whose next value is predicted (default: the first); the model predicts its change "
        "from the last value",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="random seed for the split and the model")
    p.add_argument("--key-file", help="HMAC key file to sign the model file (default: $EDGEFLEET_MODEL_KEY_FILE)")


def register_train(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "train",
        help="train a model on an export CSV or BasicMotions, then convert it",
        description=train.__doc__,
        examples=[
            "edgefleet train --data basicmotions --model rf --name basicmotions-rf",
            "edgefleet train --data export.csv --sensor imu --model rf --name walk --board esp32-c3",
            "edgefleet train --data export.csv --sensor imu --split-by 'device=^lab-' --name walk",
            "edgefleet train --data ecg.csv --model anomaly --normal normal --fpr 0.005 --name ecg",
        ],
    )
    add_train_args(p)
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    out = train.train(options(train.TrainOptions, args))
    m = json.loads((out / "manifest.json").read_text())
    print(report.headline(m))
    print(f"model written to {out}/ (report: {out / 'report.html'})")
    if args.model == "forecast":
        print(forecast_node.train_report(out))
    return 0


# ---------------------------------------------------------------- convert


def register_convert(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "convert",
        help="regenerate models/<name>/ (model.efm, model.h, manifest, report)",
        description=convert.__doc__,
        examples=[
            "edgefleet convert --name basicmotions-rf",
            "edgefleet convert --name walk --key-file model.key --min-agreement 0.99",
        ],
    )
    p.add_argument("--name", required=True, help="models/<name>/ holding trained.pkl from `edgefleet train`")
    p.add_argument("--out", help="parent directory instead of models/")
    p.add_argument("--key-file", help="HMAC key file to sign the model file (default: $EDGEFLEET_MODEL_KEY_FILE)")
    p.add_argument(
        "--min-agreement",
        type=float,
        help="fail below this host/node agreement on the test split (default: the one train used, 0.995)",
    )
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    out = Path(args.out or models_dir()) / args.name
    m = convert.convert(out, key=convert.load_key(args.key_file), min_agreement=args.min_agreement)
    p = m["parity"]
    print(f"{out}/: {report.headline(m)}; parity b=c {p['b_vs_c']:.2%}")
    return 0


# ---------------------------------------------------------------- build-module


def register_build_module(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "build-module",
        help="build the emlearn-based `efm` C module as a native .mpy for a board",
        description=build_module.__doc__,
        examples=[
            "edgefleet build-module --board sim --mpy-dir ~/src/micropython",
            "MPY_DIR=~/src/micropython edgefleet build-module --board esp32-devkitc --out build/efm-xtensawin",
        ],
    )
    p.add_argument("--board", required=True, help="board name (boards/<name>.json) whose arch to build for")
    p.add_argument("--mpy-dir", help="MicroPython source checkout (default $MPY_DIR)")
    p.add_argument("--out", help="output directory (default ./build/efm-<arch>)")
    p.set_defaults(func=_build_module)


def _build_module(args: argparse.Namespace) -> int:
    path = build_module.build(
        args.board, args.mpy_dir or os.environ.get("MPY_DIR"), Path(args.out) if args.out else None
    )
    print(f"built {path} ({path.stat().st_size} bytes); deploy it as lib/efm.mpy on the board")
    return 0
