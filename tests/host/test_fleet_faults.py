"""Fault injection on a whole simulated fleet (edgefleet.sim.chaos): real mosquitto with per-device logins,
the real collector as a subprocess, the real firmware in 5 MicroPython processes. The collector is kill -9'd,
the broker is down for 30 s, random nodes are SIGKILLed and booted again, one node's flash gets a corrupted block;
then mosquitto is kill -9'd with persistence on, the collector stays away past the broker's queue limit, the
broker restarts with its persistence deleted, and all of that at once with node SIGKILLs.
Invariant: every record a node logged is stored exactly once, except at most one record per power cut
(docs/reliability.md) and the corrupted block (docs/firmware.md)."""

from __future__ import annotations

import pytest

from edgefleet.sim.chaos import run_chaos
from edgefleet.sim.simulate import power_cut_loss


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_fleet_survives_broker_collector_node_and_flash_faults(tmp_path, capsys) -> None:
    result = run_chaos(tmp_path / "chaos", n_nodes=5, run_s=75, outage_s=30, seed=7)
    with capsys.disabled():
        print("\n" + result.report())
    assert result.records > 1000, "the fleet must have produced records"
    assert result.dead_letters == 0
    # every node stored records and went through the drain to its last durable seq
    for n in result.nodes:
        assert n.last_seq > 50 and n.stored > 0, n.line()
        assert n.unexplained == [], n.line()
        assert n.stored + n.missing == n.last_seq
        assert n.missing == n.lost_power_cut + n.lost_corrupt + min(n.dropped, n.missing), n.line()
        assert all(length <= power_cut_loss() for _, length in n.gaps if n.lost_corrupt == 0), n.line()
    # the faults really happened: nodes were killed, the corrupted sector held records not yet acknowledged
    assert sum(n.kills for n in result.nodes) >= 3
    text = "\n".join(result.events)
    for what in ("broker killed (SIGKILL", "persistence deleted (mosquitto.db", "all at once: broker killed"):
        assert what in text, (what, text)
    assert "(none" not in text, "each broker restart without persistence must have had a file to lose: " + text
    broker_log = (tmp_path / "chaos" / "broker" / "mosquitto.log").read_text(errors="replace")
    assert "Outgoing messages are being dropped" in broker_log, "the collector outage must pass the queue limit"
    assert result.corrupted is not None
    assert result.corrupted["last_seq"] > result.corrupted["acked"], result.corrupted
