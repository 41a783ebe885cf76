"""Fault injection, longer and wider than tests/host/test_fleet_faults.py: the same run (edgefleet.sim.chaos:
collector kill -9, broker outage with node SIGKILLs and a corrupted flash block, mosquitto kill -9 with
persistence on, a collector outage past the broker's queue limit, a broker restarted without its persistence,
and all of them at once with node SIGKILLs) with more nodes, a longer run and a longer broker outage. Prints
every figure; exit 1 when a record is lost beyond one per power cut and the corrupted block
(docs/reliability.md).

Run: PYTHONPATH=host python bench/chaos.py [--nodes 12] [--run-s 240] [--outage-s 60] [--seed 7]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from edgefleet.sim.chaos import run_chaos


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=12)
    p.add_argument("--run-s", type=float, default=240)
    p.add_argument("--outage-s", type=float, default=60)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workdir", help="keep the run here (default: a temporary directory)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="edgefleet-chaos-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        result = run_chaos(work, n_nodes=args.nodes, run_s=args.run_s, outage_s=args.outage_s, seed=args.seed)
        print(result.report())
    ok = result.unexplained == 0 and result.dead_letters == 0
    print("invariant holds" if ok else "INVARIANT VIOLATED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
