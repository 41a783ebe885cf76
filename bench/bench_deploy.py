"""Deploy cost on the virtual board: a full deploy against re-deploys (nothing changed, one file changed).

The point of hash-compare deploys is that the everyday re-deploy costs a fraction of a full copy; this prints
that ratio (same process, same board, same files), and the copy throughput of mpremote's raw-paste writes.
Run: PYTHONPATH=host python bench/bench_deploy.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from edgefleet.board.boards import load_board
from edgefleet.board.deploy import MpremoteLink, build_plan, deploy, node_config
from edgefleet.board.vboard.board import VirtualBoard


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-kb", type=int, default=32, help="size of the (random) model file deployed")
    args = ap.parse_args()
    board = load_board("sim")
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.efm"
        model.write_bytes(os.urandom(args.model_kb * 1024))
        vb = VirtualBoard(board, Path(tmp) / "flash.img")
        vb.start()
        try:
            plan = build_plan(board, node_config("bench-1", None, None, True), model, [])
            total = sum(len(d) for d in plan.files.values())
            link = MpremoteLink(vb.path, 115200)
            try:
                t0 = time.perf_counter()
                full = deploy(link, plan, progress=False)
                t_full = time.perf_counter() - t0
                t0 = time.perf_counter()
                same = deploy(link, plan, progress=False)
                t_same = time.perf_counter() - t0
                plan.files["/config.json"] = plan.files["/config.json"].replace(b"bench-1", b"bench-2")
                t0 = time.perf_counter()
                one = deploy(link, plan, progress=False)
                t_one = time.perf_counter() - t0
            finally:
                link.close(reset=False)
        finally:
            vb.stop()
    print(f"files {len(plan.files)}, {total / 1024:.1f} KB (model {args.model_kb} KB)")
    print(
        f"full deploy      {t_full:6.2f} s  copied {len(full.copied):3d}  ({total / 1024 / t_full:.1f} KB/s incl. hashing)"
    )
    print(f"re-deploy same   {t_same:6.2f} s  copied {len(same.copied):3d}  ratio to full {t_same / t_full:.3f}")
    print(f"re-deploy 1 file {t_one:6.2f} s  copied {len(one.copied):3d}  ratio to full {t_one / t_full:.3f}")


if __name__ == "__main__":
    main()
