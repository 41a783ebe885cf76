"""Fitting a model to the target board (boards/<name>.json "inference"): model body bytes, heap, time.

Before training, `check` refuses budgets nothing can meet (features alone too slow for a window, the smallest
model of the kind larger than the body budget, the window buffers larger than the heap) in one message. While
training, `fit_trees` and `net_layers` shrink the model until its body fits: trees by leaves, then depth and
count; nets by halving the hidden layers. The choice and its accuracy cost go into the manifest and report.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..board.boards import load_board
from ..errors import EdgefleetError
from ..paths import firmware_dir
from ..runtime import find_micropython, micropython_env
from . import modelfile

# Runs on the unix port, beside the simulated board it is not part of (firmware/simboard/).
FEATURES_SCRIPT = firmware_dir() / "simboard" / "node_features.py"
DEFAULT = {"max_model_bytes": 32768, "window_budget_ms": 250.0, "unix_slowdown": 30.0}


@dataclass(frozen=True)
class Budget:
    board: str
    max_body: int
    heap: int
    window_ms: float  # CPU time the board may spend on one window (features + model)
    slowdown: float  # board time / unix-port time (an estimate per board, docs/train.md)

    @classmethod
    def of(cls, board: str) -> Budget:
        b = load_board(board)
        inf = {**DEFAULT, **b.data.get("inference", {})}
        return cls(b.name, int(inf["max_model_bytes"]), b.heap_bytes, float(inf["window_budget_ms"]),
                   float(inf["unix_slowdown"]))  # fmt: skip

    def time_limit_ms(self, hop_s: float | None) -> float:
        """The per-window budget: the board's, and never more than the time between windows."""
        return min(self.window_ms, hop_s * 1000.0) if hop_s else self.window_ms


def features_us(n_channels: int, window: int, heap: int, windows: np.ndarray | None = None,
                repeat: int = 1, extra_path: list[Path] | None = None) -> tuple[float, str, np.ndarray | None]:  # fmt: skip
    """µs per window of the node's features on the unix port (and the float32 features when windows given).

    Without windows: the least of 5 runs on a pseudo-random window, so other processes on a shared machine
    do not make a budget fail; with windows: the mean over them."""
    with tempfile.TemporaryDirectory() as tmp:
        wpath, opath = "-", "-"
        n = 3
        if windows is not None:
            wpath, opath = str(Path(tmp) / "w.bin"), str(Path(tmp) / "f.bin")
            np.ascontiguousarray(windows, dtype="<f4").tofile(wpath)
            n = len(windows)
        argv = [find_micropython(), "-X", f"heapsize={heap}", str(FEATURES_SCRIPT), str(n_channels), str(window),
                str(n), wpath, opath, str(repeat if windows is not None else 5)]  # fmt: skip
        proc = subprocess.run(argv, env=micropython_env(extra_path or []), capture_output=True, text=True, timeout=600)
        if proc.returncode:
            raise EdgefleetError(f"node features failed on MicroPython:\n{(proc.stdout + proc.stderr)[-2000:]}")
        m = re.search(r"impl=(\S+) us_per_window=([\d.]+) us_min=(\d+)", proc.stdout)
        feats = np.fromfile(opath, dtype="<f4").reshape(n, -1) if windows is not None else None
    return float(m.group(3) if windows is None else m.group(2)), m.group(1), feats


def smallest_body(kind: str, n_features: int, n_classes: int) -> int:
    """Bytes of the smallest model of a kind: one stump for trees, 2+2 hidden units for nets."""
    if kind in ("rf", "dt", "et", "forecast"):
        return 8 + 4 + 3 * 8 + 4
    if kind.startswith("mlp"):
        return net_body((2, 2), n_features, n_classes)
    if kind == "anomaly":
        return 4 * (n_features + n_features * n_features)
    return 0


def net_body(hidden: tuple[int, ...], n_features: int, n_classes: int) -> int:
    sizes = (n_features, *hidden, n_classes)
    return 4 + sum(8 + 4 * (a * b + b) for a, b in itertools.pairwise(sizes))


def check(budget: Budget, kind: str, n_channels: int, window: int, n_features: int, n_classes: int,
          hop_s: float | None, extra_path: list[Path] | None = None) -> dict:  # fmt: skip
    """Refuse, before training, a budget no model of this kind can meet; returns the features' measured cost."""
    need = smallest_body(kind, n_features, n_classes)
    if need > budget.max_body:
        raise EdgefleetError(
            f"no {kind} model fits {budget.board}: the smallest needs a {need:,}-byte body, the board allows "
            f"{budget.max_body:,} ({n_features} features)",
            hint="fewer channels (--sensor), another model kind, or a board with a larger inference.max_model_bytes",
        )
    buffers = 4 * n_channels * window * 2 + 16 * n_features
    if buffers + need > budget.heap // 2:
        raise EdgefleetError(
            f"a {n_channels}-channel window of {window} samples needs {buffers:,} bytes of buffers, more than half "
            f"of {budget.board}'s {budget.heap:,}-byte heap",
            hint="a smaller --window",
        )
    us, impl, _ = features_us(n_channels, window, budget.heap, extra_path=extra_path)
    est_ms = us * budget.slowdown / 1000.0
    limit = budget.time_limit_ms(hop_s)
    if est_ms > limit:
        raise EdgefleetError(
            f"features of a {n_channels}x{window} window take ~{est_ms:,.0f} ms on {budget.board} ({us:,.0f} µs on the "
            f"unix port x {budget.slowdown:g}, {impl} features), over its budget of {limit:,.0f} ms per window",
            hint="a smaller --window or larger --hop, or build the C module (edgefleet build-module) for C-speed features",
        )
    return {"features_us_unix": us, "features_impl": impl, "features_ms_board": est_ms, "limit_ms": limit}


def tree_body_bytes(est, regress: bool = False) -> int:
    return len(modelfile.trees_body(modelfile.integer_thresholds(est), regress=regress))


def _leaves(est) -> float:
    trees = getattr(est, "estimators_", [est])
    return float(np.mean([t.get_n_leaves() if hasattr(t, "get_n_leaves") else t.tree_.n_leaves for t in trees]))


def fit_trees(make: Callable[[int, int | None, int | None], object], trees: int, leaves: int | None,
              depth: int | None, max_body: int, regress: bool = False) -> tuple[object, dict]:  # fmt: skip
    """Fit with the requested size; while the body is over budget, refit with fewer leaves (then fewer trees).

    make(n_trees, max_leaf_nodes, max_depth) returns a fitted estimator. Returns it and what was chosen."""
    est = make(trees, leaves, depth)
    body = tree_body_bytes(est, regress)
    requested = {"trees": trees, "max_leaf_nodes": leaves, "max_depth": depth, "body_bytes": body}
    tries = 0
    while body > max_body:
        tries += 1
        if tries > 12:
            raise EdgefleetError(f"could not fit the forest into {max_body:,} bytes (last try {body:,})")
        factor = max_body / body * 0.92
        avg = _leaves(est)
        new_leaves = int(avg * factor)
        if new_leaves >= 2:
            leaves = new_leaves
        else:
            leaves = 2
            trees = max(1, int(trees * factor))
        est = make(trees, leaves, depth)
        body = tree_body_bytes(est, regress)
    chosen = {"trees": trees, "max_leaf_nodes": leaves, "max_depth": depth, "body_bytes": body}
    return est, {"requested": requested, "chosen": chosen, "max_body": max_body, "resized": chosen != requested}


def net_layers(hidden: tuple[int, ...], n_features: int, n_classes: int, max_body: int) -> tuple[tuple[int, ...], dict]:
    """Halve the hidden layers until the net's body fits."""
    req = tuple(hidden)
    while net_body(hidden, n_features, n_classes) > max_body:
        if all(h <= 2 for h in hidden):
            raise EdgefleetError(f"no net fits {max_body:,} bytes with {n_features} features")
        hidden = tuple(max(2, h // 2) for h in hidden)
    info = {"requested": {"hidden": list(req), "body_bytes": net_body(req, n_features, n_classes)},
            "chosen": {"hidden": list(hidden), "body_bytes": net_body(hidden, n_features, n_classes)},
            "max_body": max_body, "resized": hidden != req}  # fmt: skip
    return hidden, info
