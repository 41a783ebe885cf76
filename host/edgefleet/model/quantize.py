"""Robust int16 quantization of window features (docs/model-file.md "Quantization").

Scaling.fit maps each feature's training range onto +-32767. Two kinds of feature break that:

- near-constant features (the window mean of z-normalised data, ~1e-9): the range is smaller than float32's
  rounding on the node, so the node's float32 rounding becomes full-range int16 differences. A floor on the
  half-range fixes it: every feature's int16 step is at least STEP_MARGIN times the largest float32 error of
  computing it, measured on the training windows by an emulation of the node's float32 arithmetic
  (features_f32: an ESP32 computes in float32; the unix port in double, so it errs less), so host and node
  land on the same or an adjacent step.
- heavy-tailed features: one outlier stretches the range and leaves the bulk a few steps. When the min-max span
  exceeds TAIL_RATIO times the central (0.5%-99.5% quantile) span, the quantile span, widened by TAIL_PAD on
  each side, is used instead; values outside clip to +-32767, and the clipped fraction is measured and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import features, modelfile

STEP_MARGIN = 4.0
ERROR_SAMPLE = 256  # training windows the float32 error is measured on
TAIL_RATIO = 8.0
TAIL_Q = 0.005
TAIL_PAD = 0.25


@dataclass
class Quantization:
    """The scaling and what it did: features whose range was floored or clipped (names), for the report."""

    scaling: modelfile.Scaling
    floored: list[str] = field(default_factory=list)
    clipped: dict[str, float] = field(default_factory=dict)  # feature -> fraction of training values clipped

    def clipped_fraction(self, xq: np.ndarray) -> float:
        """Fraction of feature values at the int16 clamp (+-32767) in quantized rows xq."""
        return float(np.mean(np.abs(xq.astype(int)) >= modelfile.Q_MAX)) if xq.size else 0.0


def features_f32(windows: np.ndarray) -> np.ndarray:
    """The node's features computed as an ESP32 computes them: every operation in float32, in the order of
    firmware/node/features.py (sequential sums, the same Goertzel recursion). Rows like features.compute_batch."""
    f = np.float32
    x = np.asarray(windows, dtype=f)
    nw, nc, n = x.shape
    mod = features.shared()
    s = np.cumsum(x, axis=2, dtype=f)[..., -1]
    sq = np.cumsum(x * x, axis=2, dtype=f)[..., -1]
    nn = f(n)
    mean = s / nn
    var = np.maximum(sq / nn - mean * mean, f(0))
    lo, hi = x.min(axis=2), x.max(axis=2)
    pos = x >= mean[..., None]
    zcr = (pos[..., 1:] != pos[..., :-1]).sum(axis=2).astype(f) / f(n - 1)
    im = f((n - 1) / 2.0)
    xm = x - mean[..., None]
    sxy = np.cumsum((np.arange(n, dtype=f) - im) * xm, axis=2, dtype=f)[..., -1]
    slope = sxy / f(n * (n * n - 1) / 12.0)
    ks = [k for k in range(1, n // 2 + 1) if mod.band_of_bin(k, n) >= 0]
    coeff = np.array([2.0 * np.cos(2.0 * np.pi * k / n) for k in ks], dtype=f)
    flat = xm.reshape(nw * nc, n)
    s1 = np.zeros((nw * nc, len(ks)), dtype=f)
    s2 = np.zeros_like(s1)
    for i in range(n):
        s0 = (flat[:, i, None] + coeff * s1) - s2
        s2, s1 = s1, s0
    p = np.maximum(s1 * s1 + s2 * s2 - coeff * s1 * s2, f(0)) / f(n * n)
    bands = np.zeros((nw * nc, mod.BANDS), dtype=f)
    for j, k in enumerate(ks):
        bands[:, mod.band_of_bin(k, n)] += p[:, j]
    counts = np.bincount([mod.band_of_bin(k, n) for k in ks], minlength=mod.BANDS).astype(f)
    bands = (bands / np.where(counts == 0, f(1), counts)).reshape(nw, nc, mod.BANDS)
    per = np.stack([mean, np.sqrt(var), lo, hi, np.sqrt(sq / nn), hi - lo, zcr, slope], axis=2)
    return np.concatenate([per, bands], axis=2).reshape(nw, nc * mod.N_PER_CHANNEL).astype(np.float64)


def measured_errors(windows: np.ndarray, x64: np.ndarray, seed: int = 1, lo: np.ndarray | None = None,
                    hi: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Largest |float32 feature - float64 feature| per feature over (a sample of) the training windows; with
    lo/hi, only over values inside [lo, hi] (values beyond clamp to +-32767 on host and node alike)."""
    if len(windows) > ERROR_SAMPLE:
        pick = np.random.default_rng(seed).choice(len(windows), ERROR_SAMPLE, replace=False)
        windows, x64 = windows[pick], x64[pick]
    with np.errstate(all="ignore"):
        d = np.abs(features_f32(windows) - x64)
    d[~np.isfinite(d)] = 0.0
    if lo is not None and hi is not None:
        d[(x64 < lo) | (x64 > hi)] = 0.0
    zcr = [i for i, n in enumerate(features.names(["c"] * windows.shape[1])) if n.endswith("_zcr")]
    d[:, zcr] = 0.0  # crossing counts: exact but for samples equal to the mean, nothing a scale floor can fix
    return d.max(axis=0) if len(d) else np.zeros(x64.shape[1])


def fit(x: np.ndarray, names: list[str], windows: np.ndarray) -> Quantization:
    """Scaling for training features x (rows) of these windows, with the error floor and tail clipping."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    qlo = np.quantile(x, TAIL_Q, axis=0, method="higher")  # inward: a lone outlier never enters the central range
    qhi = np.quantile(x, 1 - TAIL_Q, axis=0, method="lower")
    central = qhi - qlo
    heavy = (hi - lo) > TAIL_RATIO * np.maximum(central, 1e-300)
    heavy &= central > 0
    lo = np.where(heavy, qlo - TAIL_PAD * central, lo)
    hi = np.where(heavy, qhi + TAIL_PAD * central, hi)
    half = (hi - lo) / 2.0
    floor = STEP_MARGIN * measured_errors(windows, x, lo=lo, hi=hi) * modelfile.Q_SPAN
    floored = half < floor
    half = np.maximum(half, floor)
    scale = np.where(half > 0, modelfile.Q_SPAN / np.where(half > 0, half, 1.0), 1.0)
    s = modelfile.Scaling(((lo + hi) / 2.0).astype(np.float32), scale.astype(np.float32))
    xq = s.apply(x)
    clipped = {names[i]: float(np.mean(np.abs(xq[:, i].astype(int)) >= modelfile.Q_MAX)) for i in np.flatnonzero(heavy)}
    return Quantization(s, [names[i] for i in np.flatnonzero(floored & (x.max(axis=0) > x.min(axis=0)))], clipped)
