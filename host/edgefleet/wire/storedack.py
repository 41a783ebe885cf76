"""Bookkeeping of the end-to-end `stored` acks (protocol v2): which seqs of which (device, log) a committed batch
covered, as sorted, merged ranges.

The collector fills one `StoredAcks` per database transaction with the seqs of every message that transaction
settled (records newly stored, redelivered duplicates, messages dead-lettered whole whose device, log and seqs
were readable) and, after the COMMIT, publishes `messages()`: one `stored` message per (device, log), more only
when the ranges exceed protocol.MAX_RANGES. Pure and small, so the range logic is tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from . import protocol


class SeqRanges:
    """A set of positive seqs, read out as sorted, merged [first, last] ranges."""

    __slots__ = ("_seqs",)

    def __init__(self) -> None:
        self._seqs: set[int] = set()

    def add(self, seqs: Iterable[int]) -> None:
        self._seqs.update(seqs)

    def __len__(self) -> int:
        return len(self._seqs)

    def ranges(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for s in sorted(self._seqs):
            if out and s == out[-1][1] + 1:
                out[-1] = (out[-1][0], s)
            else:
                out.append((s, s))
        return out


class StoredAcks:
    """Seq ranges per (device, log) settled by one transaction; v1 messages (log "") get no ack."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], SeqRanges] = {}

    def add(self, device: str, log: str, seqs: Iterable[int]) -> None:
        if not log:
            return  # a v1 node has no log id and does not listen for `stored`
        r = self._by_key.get((device, log))
        if r is None:
            r = self._by_key[(device, log)] = SeqRanges()
        r.add(seqs)

    def update(self, other: StoredAcks) -> None:
        for (device, log), r in other._by_key.items():
            self.add(device, log, r._seqs)

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def messages(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        """(topic, payload) of the `stored` messages, MAX_RANGES ranges each."""
        n = protocol.MAX_RANGES
        for (device, log), seqs in sorted(self._by_key.items()):
            ranges = seqs.ranges()
            topic = protocol.topic(prefix, device, "stored")
            for i in range(0, len(ranges), n):
                yield topic, protocol.encode(protocol.stored(log, ranges[i : i + n]))
