"""The `stored` ack bookkeeping: sorted, merged ranges per (device, log), at most MAX_RANGES per message."""

from __future__ import annotations

import json

from edgefleet.wire import protocol
from edgefleet.wire.storedack import SeqRanges, StoredAcks


def test_ranges_are_sorted_and_merged() -> None:
    r = SeqRanges()
    r.add([5, 3, 4, 9, 1, 10, 4])
    assert r.ranges() == [(1, 1), (3, 5), (9, 10)]
    assert len(r) == 6


def test_one_message_per_device_and_log_split_beyond_max_ranges() -> None:
    acks = StoredAcks()
    acks.add("n1", "0000000a", range(1, 101))
    acks.add("n1", "0000000a", [200])
    acks.add("n1", "0000000b", [1])  # a new log of the same device: its own message
    acks.add("n2", "0000000a", range(1, 2 * protocol.MAX_RANGES + 2, 2))  # 33 separate seqs
    acks.add("v1node", "", [1, 2])  # v1: no log, no ack
    msgs = [(t, json.loads(p)) for t, p in acks.messages("edgefleet")]
    assert msgs[:2] == [
        ("edgefleet/n1/stored", {"v": 2, "log": "0000000a", "ranges": [[1, 100], [200, 200]]}),
        ("edgefleet/n1/stored", {"v": 2, "log": "0000000b", "ranges": [[1, 1]]}),
    ]
    n2 = [m for t, m in msgs if t == "edgefleet/n2/stored"]
    assert [len(m["ranges"]) for m in n2] == [protocol.MAX_RANGES, 1]
    assert len(msgs) == 4
    for _, m in msgs:
        protocol.check_stored(m)


def test_update_merges_per_message_bookkeeping() -> None:
    a, b = StoredAcks(), StoredAcks()
    a.add("n1", "0000000a", [1, 2])
    b.add("n1", "0000000a", [3])
    a.update(b)
    assert [json.loads(p)["ranges"] for _, p in a.messages("p")] == [[[1, 3]]]
    assert not StoredAcks()
