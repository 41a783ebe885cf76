# Window features: contract 1. THE one definition, run by the node (MicroPython, float32) and by the host
# (CPython, float64, loaded from this file by host/edgefleet/model/features.py). Keep to the subset both run:
# no numpy, no f-strings with format specs MicroPython lacks, no allocation per sample.
#
# Per channel, in this order (PER_CHANNEL):
#   mean, std (population), min, max, rms, ptp (max - min), zcr (sign changes of x - mean per step),
#   slope (least-squares, units per sample), then BANDS band energies: mean power of the DFT bins whose
#   frequency falls in [edge_i, edge_i+1) of the Nyquist range, from Goertzel filters (bin 0, the mean, is
#   excluded). Band edges as fractions of the sample rate: 0-1/16, 1/16-1/8, 1/8-1/4, 1/4-1/2
#   (at 10 Hz: 0-0.625, 0.625-1.25, 1.25-2.5, 2.5-5 Hz): walking/running energy sits in the 1-3 Hz bands.
# Feature i of channel c is at index c * N_PER_CHANNEL + i.
#
# Speed on the node: compute() runs each channel in our C module (efm.channel, firmware/cmodule, the same
# definition in float32) when the firmware has it, else _channel below as bytecode. Not native: the native
# emitter's machine code of _channel costs the node heap it does not have on the devkitc (the HIL model test
# went into safe mode, "memory allocation failed"), and measured no faster under load. IMPL says which.
import math

try:
    from efm import channel as _c_channel

    IMPL = "c"
except ImportError:
    _c_channel = None
    IMPL = "python"


PER_CHANNEL = ("mean", "std", "min", "max", "rms", "ptp", "zcr", "slope")
BAND_EDGES = (0.0, 0.0625, 0.125, 0.25, 0.5)
BANDS = len(BAND_EDGES) - 1
N_PER_CHANNEL = len(PER_CHANNEL) + BANDS


def names(channels):
    out = []
    for ch in channels:
        for s in PER_CHANNEL:
            out.append(ch + "_" + s)
        for b in range(BANDS):
            out.append(ch + "_band" + str(b))
    return out


def count(n_channels):
    return n_channels * N_PER_CHANNEL


def band_of_bin(k, n):
    # Band index of DFT bin k (1 <= k <= n // 2) for a window of n samples, or -1.
    f = k / n
    for b in range(BANDS):
        if BAND_EDGES[b] <= f < BAND_EDGES[b + 1] or (b == BANDS - 1 and f == BAND_EDGES[BANDS]):
            return b
    return -1


def _channel(x, n, out, base):
    s = 0.0
    sq = 0.0
    lo = x[0]
    hi = x[0]
    for i in range(n):
        v = x[i]
        s += v
        sq += v * v
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    mean = s / n
    var = sq / n - mean * mean
    if var < 0.0:
        var = 0.0
    # zero crossings of the mean-removed signal, slope by least squares on i - (n - 1) / 2
    crossings = 0
    prev = x[0] >= mean
    im = (n - 1) / 2.0
    sxy = 0.0
    for i in range(n):
        v = x[i]
        pos = v >= mean
        if pos != prev:
            crossings += 1
        prev = pos
        sxy += (i - im) * (v - mean)
    sxx = n * (n * n - 1) / 12.0
    out[base] = mean
    out[base + 1] = math.sqrt(var)
    out[base + 2] = lo
    out[base + 3] = hi
    out[base + 4] = math.sqrt(sq / n)
    out[base + 5] = hi - lo
    out[base + 6] = crossings / (n - 1) if n > 1 else 0.0
    out[base + 7] = sxy / sxx if n > 1 else 0.0
    # band energies: Goertzel per bin on the mean-removed signal, |X_k|^2 / n^2, averaged over the band
    b0 = base + len(PER_CHANNEL)
    for b in range(BANDS):
        out[b0 + b] = 0.0
    counts = [0] * BANDS
    for k in range(1, n // 2 + 1):
        b = band_of_bin(k, n)
        if b < 0:
            continue
        coeff = 2.0 * math.cos(2.0 * math.pi * k / n)
        s1 = 0.0
        s2 = 0.0
        for i in range(n):
            s0 = (x[i] - mean) + coeff * s1 - s2
            s2 = s1
            s1 = s0
        p = s1 * s1 + s2 * s2 - coeff * s1 * s2
        if p < 0.0:
            p = 0.0
        out[b0 + b] += p / (n * n)
        counts[b] += 1
    for b in range(BANDS):
        if counts[b]:
            out[b0 + b] = out[b0 + b] / counts[b]


def compute(window, out):
    # window: sequence of per-channel sample sequences (array('f')), all the same length, oldest first.
    # out: preallocated array('f') (or list) of count(len(window)) floats; filled in place and returned.
    n = len(window[0])
    if n < 2:
        raise ValueError("window needs at least 2 samples")
    if len(out) < len(window) * N_PER_CHANNEL:
        raise ValueError("out too small")
    if _c_channel is not None:
        try:
            for c in range(len(window)):
                _c_channel(window[c], out, c * N_PER_CHANNEL)
            return out
        except (TypeError, ValueError):  # not array('f') (lists, array('d')): the definition below
            pass
    for c in range(len(window)):
        _channel(window[c], n, out, c * N_PER_CHANNEL)
    return out
