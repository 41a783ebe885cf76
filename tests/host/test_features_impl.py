"""The window features (contract 1) as the node runs them, ON MicroPython (unix port): the bytecode build of
firmware/node/features.py always, our C module's efm.channel when MPY_DIR lets us build it. Both must equal the
definition (the same file under CPython, float64) within float32 rounding, on random and real windows."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgefleet.model import budget, build_module, datasets, features, quantize

EPS32 = float(np.finfo(np.float32).eps)


def windows_of_every_kind() -> list[np.ndarray]:
    """(n, channels, samples) batches: random, z-normalised, near-constant, odd and long lengths, and real data
    (BasicMotions windows, ACSF1 cases from the aeon wheel)."""
    rng = np.random.default_rng(11)
    z = rng.normal(size=(6, 2, 97))
    out = [
        rng.normal(size=(6, 3, 50)) * 5 + 2,
        (z - z.mean(axis=2, keepdims=True)) / z.std(axis=2, keepdims=True),
        1.5 + rng.normal(size=(4, 1, 64)) * 1e-6,
        rng.standard_cauchy(size=(4, 2, 33)),
        rng.normal(size=(2, 1, 730)),
        datasets.load_basicmotions(50, 25).x[::12],
    ]
    aeon = pytest.importorskip("aeon")
    acsf = Path(aeon.__file__).parent / "datasets" / "data" / "ACSF1" / "ACSF1_TEST.ts"
    cases, _ = datasets.parse_ts(acsf)
    out.append(cases[:3, :, :400])
    return [w.astype(np.float32).astype(np.float64) for w in out]


def float32_bound(w: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """What float32 arithmetic may change: twice the measured error of an ESP32-order float32 computation,
    plus a few ulps of each value (the node stores features as float32)."""
    return 2 * np.abs(quantize.features_f32(w) - ref) + 4 * EPS32 * np.abs(ref) + 1e-30


def _zcr_mask(nch: int) -> np.ndarray:
    return np.array([n.endswith("_zcr") for n in features.names([f"c{i}" for i in range(nch)])])


def check(impl_expected: str, extra_path: list[Path] | None) -> None:
    for w in windows_of_every_kind():
        ref = np.array([features.compute_shared(x) for x in w])
        _, impl, got = budget.features_us(w.shape[1], w.shape[2], 400_000, w, extra_path=extra_path)
        assert impl == impl_expected
        bad = np.abs(got - ref) > float32_bound(w, ref)
        # a sample equal to the mean in one precision but not the other may move one crossing: 1/(n-1)
        zcr = _zcr_mask(w.shape[1])
        bad[:, zcr] &= np.abs(got - ref)[:, zcr] > 1.01 / (w.shape[2] - 1)
        assert not bad.any(), (w.shape, np.argwhere(bad)[:5], got[bad][:5], ref[bad][:5])
        if impl == "c":  # the C code is the float32 emulation, operation for operation
            np.testing.assert_allclose(got, quantize.features_f32(w), rtol=4 * EPS32, atol=1e-30)


def test_micropython_features_equal_the_definition():
    check("python", None)


@pytest.mark.needs_mpy_dir
@pytest.mark.skipif(not os.environ.get("MPY_DIR"), reason="MPY_DIR not set: no MicroPython source tree to build "
                    "the efm C module (py/dynruntime.mk, tools/mpy_ld.py); set MPY_DIR to a micropython checkout")  # fmt: skip
def test_c_module_features_equal_the_definition(tmp_path):
    mpy = build_module.build("sim", os.environ["MPY_DIR"], tmp_path / "efm")
    check("c", [mpy.parent])
