"""Window features on the host: the node's own definition (firmware/node/features.py), plus a numpy twin.

The shared file is contract 1: it is loaded here with importlib, so there is no second copy to drift. The
numpy twin exists only for speed over thousands of windows; tests/host/test_features.py proves it equals the
shared file under CPython, and tests/firmware/test_features_node.py that the node (float32) agrees.
"""

from __future__ import annotations

from array import array
from types import ModuleType

import numpy as np

from ..board.firmware_shared import firmware_module


def shared() -> ModuleType:
    """firmware/node/features.py imported under CPython (the same file the node runs)."""
    return firmware_module("node/features.py")


def names(channels: list[str] | tuple[str, ...]) -> list[str]:
    return list(shared().names(channels))


def compute_shared(window: np.ndarray) -> np.ndarray:
    """Features of one window (channels x samples) by the shared file, in float64."""
    mod = shared()
    out = [0.0] * mod.count(window.shape[0])
    mod.compute([array("d", ch) for ch in window], out)
    return np.asarray(out, dtype=np.float64)


def _band_matrix(n: int) -> np.ndarray:
    """(n//2+1) x BANDS matrix averaging DFT bin powers into bands, with the shared file's band rule."""
    mod = shared()
    m = np.zeros((n // 2 + 1, mod.BANDS))
    for k in range(1, n // 2 + 1):
        b = mod.band_of_bin(k, n)
        if b >= 0:
            m[k, b] = 1.0
    counts = m.sum(axis=0)
    return m / np.where(counts == 0, 1, counts)


def compute_batch(windows: np.ndarray) -> np.ndarray:
    """The numpy twin: features of windows shaped (n_windows, channels, samples) -> (n_windows, n_features)."""
    x = np.asarray(windows, dtype=np.float64)
    nw, nc, n = x.shape
    mean = x.mean(axis=2)
    std = x.std(axis=2)
    lo, hi = x.min(axis=2), x.max(axis=2)
    rms = np.sqrt((x * x).mean(axis=2))
    pos = x >= mean[..., None]
    zcr = (pos[..., 1:] != pos[..., :-1]).sum(axis=2) / (n - 1)
    t = np.arange(n) - (n - 1) / 2.0
    slope = ((x - mean[..., None]) * t).sum(axis=2) / (n * (n * n - 1) / 12.0)
    power = np.abs(np.fft.rfft(x - mean[..., None], axis=2)) ** 2 / (n * n)
    bands = power @ _band_matrix(n)
    per = np.stack([mean, std, lo, hi, rms, hi - lo, zcr, slope], axis=2)
    return np.concatenate([per, bands], axis=2).reshape(nw, nc * shared().N_PER_CHANNEL)
