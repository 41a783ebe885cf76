"""`fleet status` tells the truth about offline nodes (issue 14 item 7): the last will keeps the last online status
(counters, safe mode, versions) beside the offline state, on both backends."""

from __future__ import annotations

import json

from edgefleet.cli import main
from edgefleet.collect.fleet import device_summary
from edgefleet.collect.storage import Batch, open_storage


def _online(dev: str, safe: bool = False) -> str:
    return json.dumps(
        {"v": 1, "dev": dev, "state": "online", "ts": 1764180000000, "fw": "0.3.1", "board": "sim", "model": "m-7",
         "uptime_s": 5, "heap_free": 61234, "boot": 4, "seq": 9, "safe_mode": safe,
         "error": "model: bad signature" if safe else None,
         "counters": {"sampled": 100, "logged": 77, "published": 70}, "e_buffer": 0.9, "r_noise": 0.01}
    )  # fmt: skip


def test_offline_keeps_last_online_status(db_url, capsys) -> None:
    s = open_storage(db_url)
    try:
        s.write(Batch(statuses=[("n1", 1000, "online", True, _online("n1", safe=True))], seen={"n1": 1000}))
        s.write(Batch(statuses=[("n1", 2000, "offline", True, '{"v":1,"dev":"n1","state":"offline"}')],
                      seen={"n1": 2000}))  # fmt: skip
        (row,) = s.fleet()
    finally:
        s.close()
    d = device_summary(row)
    assert (d["state"], d["state_ms"]) == ("offline", 2000)
    assert d["counters"]["logged"] == 77
    assert (d["safe_mode"], d["error"], d["fw"], d["model"], d["heap_free"]) == (
        True, "model: bad signature", "0.3.1", "m-7", 61234)  # fmt: skip
    assert main(["fleet", "status", "--db", db_url]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("n1 "))
    assert "offline" in line and " 77 " in line and "SAFE" in line and "0.3.1" in line and "61234" in line, out
    assert "1 in safe mode" in out
