# Runs ON MicroPython (unix port): the node's runner over a file of windows, for parity checks and benchmarks.
# argv: MODEL.efm WINDOWS.bin N_WINDOWS OUT.bin [KEY_HEX] [REPEAT]
# WINDOWS.bin holds float32 windows laid out [window][channel][sample] (or float32 feature rows for a model
# without channels, such as the benchmark's digits forest); OUT.bin receives per window
# int32 index, float32 score, int16 q[n_features]. Prints the backend, us_per_infer (runner only, features excluded) and
# model_ram, the heap bytes the loaded model holds, and us_per_features (features + int16 quantization): the least
# over the windows, since every window of a size costs the same and the least is the one the machine's other
# load (a test suite, a busy CI runner) did not stretch; the budget check must not fail on a busy machine.
import gc
import struct
import sys
import time
from array import array

from node import model

path, wpath, n_win, opath = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
key = bytes.fromhex(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] != "-" else None
repeat = int(sys.argv[6]) if len(sys.argv) > 6 else 1
gc.collect()
mem0 = gc.mem_alloc()
r = model.load(path, key)
gc.collect()
ram = gc.mem_alloc() - mem0
nch = len(r.channels)
window = [array("f", bytes(4 * r.window)) for _ in range(nch)]
raw = array("f", bytes(4 * r.n_features))  # models without channels take ready-made features
total_us = 0
feat_min = -1
with open(wpath, "rb") as fin, open(opath, "wb") as fout:
    for _ in range(n_win):
        if nch:
            for ch in window:
                fin.readinto(ch)
            t0 = time.ticks_us()
            q = r.quantized(window)
            dt = time.ticks_diff(time.ticks_us(), t0)
            if feat_min < 0 or dt < feat_min:
                feat_min = dt
        else:
            fin.readinto(raw)
            q = r.quantize(raw)
        t0 = time.ticks_us()
        for _ in range(repeat):
            idx, score = r.infer_q(q)
        total_us += time.ticks_diff(time.ticks_us(), t0)
        fout.write(struct.pack("<if", idx, score))
        fout.write(q)
# MicroPython's %-formatting, not f-strings with format specs: this runs on the node's interpreter
print(
    "backend=%s us_per_infer=%.2f model_ram=%d us_per_features=%.1f"  # noqa: UP031
    % (r.backend, total_us / max(1, n_win * repeat), ram, feat_min if feat_min >= 0 else 0.0)
)
