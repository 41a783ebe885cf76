"""The node/host feature tolerance, shared by the fixtures in conftest.py and by host tests. A module of its own
(not `from conftest import`): tests/firmware has a conftest.py too, and which one the name `conftest` means
depends on the order pytest imported them."""

from __future__ import annotations

# Feature tolerance between the node and the host, relative to each channel's scale (max |x| for statistics
# and slope, max |x|^2 for band energies, 1 for the zero-crossing rate). Why 1e-5: the node stores windows and
# features in float32 (and computes in float32 on an ESP32); emulating float32 arithmetic on BasicMotions
# gives at most 3.6e-7 of scale, so 1e-5 leaves ~30x margin and still catches any formula difference.
FEATURE_TOL = 1e-5


def feature_scales(window, n_per_channel: int) -> list[float]:
    import numpy as np

    out = []
    for ch in window:
        s = float(np.abs(np.asarray(ch, dtype=np.float32)).max()) or 1.0
        out += [s] * 6 + [1.0, s] + [s * s] * (n_per_channel - 8)
    return out
