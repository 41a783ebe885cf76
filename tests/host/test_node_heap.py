"""The whole node runs within the heap policy (runtime.unix_heap_bytes, docs/architecture.md "Heap on the
simulator"): node.app's own boot on the sim board, sampling all four sensors, the decision stage with the
shipped models/basicmotions-rf model.efm, flash log, MQTT to a real mosquitto, status, commands.

It runs for RUN_S seconds at exactly the policy heap (the board's heap plus the measured sim machinery,
scaled on a 64-bit interpreter) and must show: no MemoryError anywhere, safe_mode false with the model
loaded, the model's events published, a command answered, and a heap that does not shrink (status
heap_free at the end no lower than at the start, within the noise of messages in flight).

Two interpreters: the default one (the pip 64-bit unix port in CI, EDGEFLEET_MICROPYTHON ignored) and, when
EDGEFLEET_MICROPYTHON points to a 32-bit unix port, that one at the board's true heap.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from netnode_harness import Subscriber, check_status, wait_until

from edgefleet.board.boards import load_board
from edgefleet.runtime import SIM_MACHINERY_BYTES, find_micropython, interpreter_bits, micropython_env, unix_heap_bytes

ROOT = Path(__file__).resolve().parents[2]
FULLNODE = ROOT / "tests" / "firmware" / "fullnode.py"
MODEL = ROOT / "models" / "basicmotions-rf" / "model.efm"
RUN_S = 40
STATUS_S = 2
# status heap_free is measured after gc.collect() while messages may be in flight (a 2 KB batch buffer is
# preallocated, but its encoded JSON and the status payload itself are not): that much noise is allowed.
HEAP_NOISE = 1536


def _interpreter(which: str) -> str:
    if which == "default":
        return find_micropython(use_env=False)
    mp = os.environ.get("EDGEFLEET_MICROPYTHON")
    if not mp:
        pytest.skip("no 32-bit MicroPython unix port: set EDGEFLEET_MICROPYTHON to one (see docs/firmware.md, Heap)")
    if interpreter_bits(mp) != 32:
        pytest.skip(f"EDGEFLEET_MICROPYTHON={mp} is a {interpreter_bits(mp)}-bit build, not 32-bit")
    return mp


@pytest.mark.parametrize("which", ["default", "32bit"])
def test_whole_node_runs_at_policy_heap(which, mqtt_broker, tmp_path):
    mp = _interpreter(which)
    board = load_board("sim")
    heap = unix_heap_bytes(board.heap_bytes, executable=mp, sim_machinery=True)
    if interpreter_bits(mp) == 32:
        assert heap == board.heap_bytes + SIM_MACHINERY_BYTES  # the board's true heap + the sim hardware
    dev = f"heap-{which}"
    sub = Subscriber(mqtt_broker.host, mqtt_broker.port, dev)
    out = tmp_path / "node.log"
    argv = [mp, "-X", f"heapsize={heap}", str(FULLNODE), str(board.path), str(tmp_path / "flash.img"), dev,
            mqtt_broker.url, str(MODEL), "5", str(STATUS_S)]  # fmt: skip
    with out.open("w") as f:
        proc = subprocess.Popen(
            argv, env=micropython_env(extra_path=[FULLNODE.parent], executable=mp), stdout=f, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: sub.topic("status") or proc.poll() is not None, 30, "first status")
        sub.client.publish(f"edgefleet/{dev}/cmd", json.dumps({"v": 1, "id": "p1", "cmd": "ping"}), qos=1)
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert proc.poll() is None, f"node exited ({proc.returncode}):\n{out.read_text()[-3000:]}"
    finally:
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        sub.close()
    text = out.read_text(errors="replace")
    assert "MemoryError" not in text and "memory allocation failed" not in text, f"heap {heap}:\n{text[-3000:]}"
    assert "Traceback" not in text and "safe mode" not in text, text[-3000:]

    online = [m for m, _ in sub.topic("status") if m.get("state") == "online"]
    assert len(online) >= RUN_S // STATUS_S // 2, f"{len(online)} status messages"
    for m in online:
        check_status(m, dev)
        assert m["safe_mode"] is False and m["error"] is None, m
        assert m["model"] == "basicmotions-rf", m
    assert online[-1]["counters"]["sampled"] > online[0]["counters"]["sampled"]
    assert online[-1]["counters"]["published"] > 0, online[-1]
    events = [r for m, _ in sub.topic("event") for r in m["recs"] if r["kind"] == "class"]
    assert events and all(r["model"] == "basicmotions-rf" for r in events), events[:3]
    acks = [m for m, _ in sub.topic("ack")]
    assert acks and acks[0]["id"] == "p1" and acks[0]["ok"] is True, acks

    # Steady heap: what is free at the end is no less than what was free once the node had settled.
    free = [m["heap_free"] for m in online[2:]]
    third = max(3, len(free) // 3)
    start, end = statistics.median(free[:third]), statistics.median(free[-third:])
    assert end >= start - HEAP_NOISE, f"heap_free went from {start} to {end} bytes: {free}"
    allocs = [int(a) for a in re.findall(r"fullnode: heap alloc=(\d+)", text)]
    assert allocs and max(allocs) < heap, allocs
    print(f"{which}: heap {heap} B, in use {allocs[0]}..{max(allocs)} B, status heap_free {free}")
