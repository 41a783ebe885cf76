"""False-rejection rate of the node's cleaner on real environmental series, replayed through node.clean.

The series are real measurements shipped inside a PyPI wheel (nothing is downloaded at run time):
vega_datasets' local data `seattle-temps` and `sf-temps` (hourly air temperature, 2010, NOAA, one year each,
in degF; converted to degC). Being quality-controlled records, none of their readings is a glitch, so every
reading the cleaner flags suspect (flags bit 8) or rejects is a false rejection. Each series runs through
the node's own Cleaner (firmware/node/clean.py, the bme280 temperature channel) on the MicroPython unix port,
with the default settings and with a few `clean` settings a user could pick (docs/firmware.md).

    PYTHONPATH=host .venv/bin/python bench/cleaning.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from edgefleet.runtime import find_micropython, micropython_env  # noqa: E402

MPY = r"""
import sys, json
from array import array
from node.clean import Cleaner, FLAG_SUSPECT, REJECT

path, settings = sys.argv[1], json.loads(sys.argv[2])
out = {}
for name, st in settings:
    c = Cleaner("bme280", ("temperature",), rate_hz=1 / 3600, window=st.get("window", 7), k=st.get("k", 3.0),
                stuck_n=10 ** 9)
    v = array("f", [0.0])
    cl = array("f", [0.0])
    flagged = rejected = n = 0
    worst = 0.0
    with open(path) as f:
        for line in f:
            v[0] = float(line)
            r = c.process(v, cl)
            n += 1
            if r == REJECT:
                rejected += 1
            elif r & FLAG_SUSPECT:
                flagged += 1
                d = abs(cl[0] - v[0])
                if d > worst:
                    worst = d
    out[name] = {"n": n, "suspect": flagged, "rejected": rejected, "max_change_c": worst}
print("BENCH " + json.dumps(out))
"""

SETTINGS = [
    ("default (window 7, k 3)", {}),
    ("window 11, k 4", {"window": 11, "k": 4}),
    ("window 5, k 6", {"window": 5, "k": 6}),
]


def _series(name: str) -> list[float]:
    from vega_datasets import local_data

    df = getattr(local_data, name.replace("-", "_"))()
    return [(f - 32) * 5 / 9 for f in df["temp"].tolist()]


def main() -> int:
    print("cleaner false rejections on real hourly temperature series (vega_datasets, in the wheel)")
    print(
        f"{'series':<14}{'settings':<26}{'readings':>9}{'suspect':>9}{'rejected':>9}{'false rej.':>11}{'max change degC':>16}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "clean_bench.py"
        script.write_text(MPY)
        for name in ("seattle-temps", "sf-temps"):
            data = Path(tmp) / f"{name}.txt"
            data.write_text("".join(f"{x:.3f}\n" for x in _series(name)))
            proc = subprocess.run(
                [find_micropython(), str(script), str(data), json.dumps(SETTINGS)],
                env=micropython_env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
            if proc.returncode or line is None:
                print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
                return 1
            for label, r in json.loads(line[6:]).items():
                rate = (r["suspect"] + r["rejected"]) / r["n"]
                print(
                    f"{name:<14}{label:<26}{r['n']:>9}{r['suspect']:>9}{r['rejected']:>9}{rate:>10.2%}"
                    f"{r['max_change_c']:>16.2f}"
                )
    print("every flagged reading is real (quality-controlled records): the node still logs and stores it raw")
    return 0


if __name__ == "__main__":
    sys.exit(main())
