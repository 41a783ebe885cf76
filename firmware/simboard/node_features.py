# Runs ON MicroPython (unix port): the node's window features (firmware/node/features.py, or the C module's
# when the firmware has it) over a file of windows, for parity tests, train's time budget and bench/.
# argv: N_CHANNELS WINDOW N_WINDOWS WINDOWS.bin|- OUT.bin|- [REPEAT]
# WINDOWS.bin holds float32 windows [window][channel][sample]; "-" uses a fixed pseudo-random window.
# OUT.bin receives float32 features per window. Prints impl=<name> us_per_window=<mean> us_min=<least>.
import sys
import time
from array import array

from node import features

nch, n, n_win = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
wpath, opath = sys.argv[4], sys.argv[5]
repeat = int(sys.argv[6]) if len(sys.argv) > 6 else 1
window = [array("f", bytes(4 * n)) for _ in range(nch)]
out = array("f", bytes(4 * features.count(nch)))
if wpath == "-":
    seed = 12345
    for ch in window:
        for i in range(n):
            seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
            ch[i] = seed / 1073741824.0 - 1.0
fin = open(wpath, "rb") if wpath != "-" else None  # noqa: SIM115 (MicroPython script)
fout = open(opath, "wb") if opath != "-" else None  # noqa: SIM115
total = 0
best = 1 << 30
for _ in range(n_win):
    if fin:
        for ch in window:
            fin.readinto(ch)
    for _ in range(repeat):
        t0 = time.ticks_us()
        features.compute(window, out)
        dt = time.ticks_diff(time.ticks_us(), t0)
        total += dt
        best = min(best, dt)
    if fout:
        fout.write(out)
if fin:
    fin.close()
if fout:
    fout.close()
# min: the least disturbed run (other processes share the CPU), which train's time budget uses
impl = getattr(features, "IMPL", "python")
# MicroPython's %-formatting, not f-strings with format specs: this runs on the node's interpreter
print("impl=%s us_per_window=%.1f us_min=%d" % (impl, total / max(1, n_win * repeat), best))  # noqa: UP031
