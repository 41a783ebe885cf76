"""The load generator's measurement (edgefleet.sim.loadgen, used by bench/loadgen.py): its own MQTT 3.1.1
devices log in on the secure mosquitto configuration, a real collector stores into PostgreSQL, and the trial
finds every record in the database and an ack latency for each; with no collector it reports all of them lost
(the loss count can fail)."""

from __future__ import annotations

from pathlib import Path

from edgefleet.sim.loadgen import LoadSpec, MosquittoTarget, trial


def test_small_fleet_all_stored_and_acked(pg_cluster, tmp_path: Path) -> None:
    target = MosquittoTarget(tmp_path)
    r = trial(40, target, pg_cluster, LoadSpec(period=1.0, msgs=2, recs=2, drain=5.0), tmp_path, 1)
    assert r.errors == []
    assert (r.connected, r.logged, r.stored, r.lost, r.acked) == (40, 160, 160, 0, 160)
    assert 0 < r.p50_ms <= r.p99_ms <= r.max_ms < 5000
    assert set(r.cpu) >= {"generator", "broker", "collector", "postgresql"}


def test_no_collector_means_everything_lost(pg_cluster, tmp_path: Path) -> None:
    target = MosquittoTarget(tmp_path)
    r = trial(10, target, pg_cluster, LoadSpec(period=0.5, msgs=2, recs=1, drain=1.0, collectors=0), tmp_path, 1)
    assert (r.connected, r.logged, r.stored, r.lost, r.acked) == (10, 20, 0, 20, 0)
    assert r.p99_ms == float("inf") and not r.ok(2000)
