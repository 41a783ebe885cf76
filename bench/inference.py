"""Inference benchmark: our model file and runners against emlearn-micropython's published ESP32 numbers.

The model of their benchmark: RandomForest, 10 trees, max_leaf_nodes=100, scikit-learn digits (64 features).
Published there: a 15,745-byte model file and ~84 us per prediction on an ESP32 with their C module.
We print our model file's size, the per-prediction time of our MicroPython runner on the unix port and of
emlearn's C code compiled with gcc on this machine (same trees, same int16 features), and their ratio.
Goals: file <= 50% of 15,745 bytes; MicroPython runner within 20x of the C code. Then BasicMotions accuracy
(goal >= 95%) with the pipeline's default RandomForest, and the window features per implementation
(MicroPython bytecode, our C module when MPY_DIR is set) for BasicMotions and long windows, features + forest
against the same features in C plus emlearn's C forest (goal: node with the C module within 5x).

Run: PYTHONPATH=host MPY_DIR=/path/to/micropython python bench/inference.py
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgefleet.model import modelfile, parity

PUBLISHED_FILE_BYTES = 15745
PUBLISHED_ESP32_US = 84.0


def digits_forest(tmp: Path):
    import emlearn
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=1, stratify=y)
    scaling = modelfile.Scaling.fit(xtr)
    qtr, qte = scaling.apply(xtr), scaling.apply(xte)
    rf = RandomForestClassifier(n_estimators=10, max_leaf_nodes=100, random_state=1).fit(qtr.astype(float), ytr)
    conv = modelfile.integer_thresholds(rf)
    body = modelfile.trees_body(conv)
    mf = modelfile.ModelFile("digits-rf", "classify", "bench", (), 0, 0, 64, scaling, modelfile.KIND_TREES, body,
                             tuple(str(c) for c in rf.classes_))  # fmt: skip
    efm = tmp / "digits.efm"
    data = modelfile.write(efm, mf)
    emlearn.convert(conv, method="loadable", dtype="int16_t").save(name="efm_model", file=str(tmp / "model.h"))
    return rf, xte.astype(np.float32), qte, yte, efm, len(data)


def time_c(tmp: Path, qte: np.ndarray, repeat: int) -> tuple[np.ndarray, float]:
    exe = parity.build_emlearn_harness(tmp, tmp, int16_input=True, float_output=False)
    inp = tmp / "q.bin"
    qte.astype("<i2").tofile(inp)
    proc = subprocess.run(
        [str(exe), str(inp), str(qte.shape[1]), str(repeat)], capture_output=True, text=True, check=True
    )
    us = float(proc.stderr.split("us_per_predict=")[1].split()[0])
    return np.array([int(v) for v in proc.stdout.split()]), us


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat-c", type=int, default=2000, help="passes over the test set for the C timing")
    ap.add_argument("--repeat-mpy", type=int, default=20, help="repeats per row for the MicroPython timing")
    ap.add_argument("--skip-basicmotions", action="store_true")
    ap.add_argument(
        "--mpy-dir", help="MicroPython source tree to build the C module for the features run (default $MPY_DIR)"
    )
    ap.add_argument("--windows", type=int, default=60, help="BasicMotions test windows for the features run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        rf, xte, qte, yte, efm, size = digits_forest(tmp)
        c_pred, c_us = time_c(tmp, qte, args.repeat_c)
        node = parity.run_node(efm, xte, 64, repeat=args.repeat_mpy)
        sk = rf.predict(qte.astype(float))
    n_nodes = sum(e.tree_.node_count for e in rf.estimators_)
    print(f"== RandomForest, 10 trees, max_leaf_nodes=100, sklearn digits (64 features), {len(yte)} test rows")
    print(f"trees: {n_nodes} sklearn nodes; accuracy {np.mean(sk == yte):.3f}")
    print(f"model file: {size:,} bytes = {size / PUBLISHED_FILE_BYTES:.1%} of the published {PUBLISHED_FILE_BYTES:,} "
          f"(goal <= 50%: {'met' if size <= PUBLISHED_FILE_BYTES / 2 else 'NOT met'})")  # fmt: skip
    print(f"node runner heap for the loaded model: {node.model_ram:,} bytes")
    print(f"emlearn C (gcc -O2, this machine):        {c_us:8.3f} us/prediction")
    print(f"MicroPython runner ({node.backend}, unix port): {node.us_per_infer:8.3f} us/prediction")
    ratio = node.us_per_infer / c_us
    print(f"ratio MicroPython / C: {ratio:.1f}x (goal <= 20x: {'met' if ratio <= 20 else 'NOT met'})")
    print(f"published ESP32 C module: {PUBLISHED_ESP32_US} us/prediction (a different machine: for scale only)")
    print(
        f"agreement: C = runner {np.mean(c_pred == node.index):.2%}, sklearn = runner {np.mean(sk == node.index):.2%}"
    )
    if not args.skip_basicmotions:
        from edgefleet.model.train import TrainOptions, train

        from_args = TrainOptions(data="basicmotions", model="rf", name="bench-bm", sensor=None, window=50, hop=25,
                                 test_size=0.25, trees=10, max_leaf_nodes=None, max_depth=None, epochs=0,
                                 normal=None, target=None, seed=1, key_file=None)  # fmt: skip
        with tempfile.TemporaryDirectory() as t2:
            from_args.out = t2
            out = train(from_args)
            m = json.loads((out / "manifest.json").read_text())
            acc = m["metrics"]["accuracy"]
            print(f"== BasicMotions test split, RandomForest (10 trees), window 50 hop 25: accuracy {acc:.1%} "
                  f"(goal >= 95%: {'met' if acc >= 0.95 else 'NOT met'}), node accuracy {m['metrics']['accuracy_node']:.1%}, "
                  f"parity a=c {m['parity']['a_vs_c']:.1%} b=c {m['parity']['b_vs_c']:.1%}")  # fmt: skip
            bench_features(out, Path(t2), args)
    return 0


def efm_module(args: argparse.Namespace, tmp: Path) -> Path | None:
    """Build our C module for the unix port (x64) when a MicroPython source tree is given; None otherwise."""
    import os

    from edgefleet.model import build_module

    mpy_dir = args.mpy_dir or os.environ.get("MPY_DIR")
    if not mpy_dir:
        print("C module: not measured (MPY_DIR not set: building efm.mpy needs a MicroPython source tree)")
        return None
    return build_module.build("sim", mpy_dir, tmp / "efm").parent


def bench_features(model_dir: Path, tmp: Path, args: argparse.Namespace) -> None:
    """µs per window for the node's features per implementation (MicroPython bytecode, our C module) on
    BasicMotions windows (6 x 50) and long windows (1 x 730), and features + forest against the all-C baseline
    (the same features in C, emlearn's C forest) in the same run. Goal: node (C module) within 5x of it."""
    from edgefleet.model import budget

    ts = np.load(model_dir / "testset.npz")
    x = ts["x"][: args.windows]
    efm = model_dir / "model.efm"
    cmod = efm_module(args, tmp)
    exe = parity.build_features_harness(model_dir, tmp)
    c_cls, c_us, c_feat_us = parity.run_features_harness(exe, efm, x, tmp, args.repeat_c // 10 or 1)
    print(
        f"== window features + forest, BasicMotions ({x.shape[1]} channels x {x.shape[2]} samples, {len(x)} test windows)"
    )
    print(f"all C (gcc -O2: efm_core features + emlearn forest): {c_us:9.2f} us/window ({c_feat_us:.2f} features)")
    runs = [("MicroPython bytecode", None)] + ([("C module efm.mpy", [cmod])] if cmod else [])
    for label, extra in runs:
        node = parity.run_node(efm, x, ts["xq"].shape[1], extra_path=extra, repeat=args.repeat_mpy)
        total = node.us_per_features + node.us_per_infer
        goal = f" (goal <= 5x: {'met' if total / c_us <= 5 else 'NOT met'})" if extra else ""
        print(f"node, {label:20s} features {node.us_per_features:9.1f} + model {node.us_per_infer:6.1f} us/window "
              f"({node.backend}) = {total / c_us:7.1f}x all C{goal}; agrees with all C on "
              f"{np.mean(node.index == c_cls):.1%}")  # fmt: skip
    rng = np.random.default_rng(1)
    long = rng.normal(size=(4, 1, 730)).astype(np.float32)
    print("== window features only, long windows (1 channel x 730 samples)")
    base = None
    for label, extra in runs[::-1]:
        us, impl, _ = budget.features_us(1, 730, 400_000, long, repeat=3, extra_path=extra)
        base = base or us
        print(f"node, {label:20s} {us:10.1f} us/window ({impl}) = {us / base:6.1f}x the C module" if cmod
              else f"node, {label:20s} {us:10.1f} us/window ({impl})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
