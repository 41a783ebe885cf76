"""The rollout's stage split and its gate's statistics (issue 13 item 4), on rows written to the collector's own
tables (status_history, events) through its own write path (Storage.write), on SQLite and PostgreSQL: a model
that always says one class fails the drift check, one with a similar distribution passes, safe mode, a rollback,
extra boots, a heap drop and reconnects beyond the rest fail theirs."""

from __future__ import annotations

import json
import random

import pytest

from edgefleet.collect.storage import Batch, open_storage
from edgefleet.errors import EdgefleetError
from edgefleet.fleetops import rollout as ro
from edgefleet.sim import fleetsim as fs

T0 = 1_800_000_000_000  # ms
OFFER = T0 + 600_000  # the offer, 10 min after the first row
CONF = OFFER + 60_000  # confirmed a minute later
NOW = CONF + 600_000  # the gate, after a 10 min soak
CLASSES = ("standing", "walking", "running", "badminton")


def test_stage_split() -> None:
    devs = [f"n{i:02d}" for i in range(30)]
    stages = ro.split_stages(devs, ro.parse_stages("5%,25%,100%"), random.Random(1))
    assert [len(s) for s in stages] == [2, 6, 22]  # ceil(1.5), ceil(7.5) - 2, the rest
    assert sorted(d for s in stages for d in s) == devs  # each device in exactly one stage
    other = ro.split_stages(devs, [0.05, 0.25, 1.0], random.Random(2))
    assert other[0] != stages[0]  # a random subset, not the first ids
    assert ro.split_stages(devs, [0.05, 0.25, 1.0], random.Random(1)) == stages  # the seed reproduces it
    # few devices: every stage gets at least one more while any is left, empty stages are dropped
    assert [len(s) for s in ro.split_stages(["a", "b", "c"], [0.05, 0.25, 1.0], random.Random(0))] == [1, 1, 1]
    assert [len(s) for s in ro.split_stages(["a", "b"], [0.05, 0.25, 1.0], random.Random(0))] == [1, 1]
    assert [len(s) for s in ro.split_stages(["a"], [0.05, 0.25, 1.0], random.Random(0))] == [1]
    assert [len(s) for s in ro.split_stages(devs, [0.1, 0.5], random.Random(0))] == [3, 12]  # a canary: stops at 50%
    for bad in ("50%,20%", "5,100", "0%,100%", "5%,101%", "", "x%", "5%,5%"):
        with pytest.raises(EdgefleetError):
            ro.parse_stages(bad)
    assert ro.parse_duration("10m") == 600 and ro.parse_duration("30s") == 30 and ro.parse_duration("2h") == 7200
    assert ro.parse_duration("90") == 90 and ro.parse_duration(1.5) == 1.5
    for bad in ("ten", "-1s", "nan", "5x"):
        with pytest.raises(EdgefleetError):
            ro.parse_duration(bad)


def _status(dev: str, ms: int, boot: int = 1, heap: int = 60000, safe: bool = False, reconnects: int = 0) -> tuple:
    body = fs.online_status(dev, boot=boot, heap_free=heap, safe_mode=safe, counters={"reconnects": reconnects})
    return (dev, ms, "online", True, json.dumps(body))


def _events(dev: str, start: int, end: int, labels, step: int = 5000, seq0: int = 1, kind: str = "class") -> list:
    """A node's events from `start` to `end`: the decision changes every `step` ms to the next of `labels`
    (a callable of the index, or a sequence cycled)."""
    rows, t, i = [], start, 0
    while t < end:
        label = labels(i) if callable(labels) else labels[i % len(labels)]
        rows.append((dev, fs.LOG, seq0 + i, t, 0, kind, label, 0.9, "m", None, None, t + 50))
        t += step
        i += 1
    return rows


class Fleet:
    """Rows written the collector's way, per device: statuses and events before and after the update."""

    def __init__(self, url: str) -> None:
        self.store = open_storage(url)

    def write(self, events: dict | None = None, statuses: list | None = None) -> None:
        self.store.write(Batch(events=events or {}, statuses=statuses or []))

    def healthy(self, dev: str, before, after, boots: tuple = (1, 2), reconnects: int = 0, heap_after: int = 60000,
                safe: bool = False) -> None:  # fmt: skip
        sts = [_status(dev, T0 + k * 60_000, boots[0]) for k in range(10)]
        sts += [_status(dev, CONF + k * 60_000, boots[1], heap_after, safe, reconnects * k // 9) for k in range(10)]
        self.write(statuses=sts)
        ev = _events(dev, T0, OFFER, before) if before is not None else []
        ev += _events(dev, CONF, NOW, after, seq0=1000) if after is not None else []
        if ev:
            self.write(events={dev: ev})


@pytest.fixture
def rows(db_url):
    f = Fleet(db_url)
    yield f
    f.store.close()


def _gate(f: Fleet, devices: list[str], rest=(), kind: str = "model", states=None, **settings) -> ro.GateResult:
    states = states or {}
    devs = {d: (states.get(d, "confirmed"), OFFER, CONF) for d in devices}
    return ro.gate(f.store, 0, kind, devs, list(rest), NOW, ro.GateSettings(baseline_s=3600, **settings))


def _check(res: ro.GateResult, name: str) -> ro.Check:
    return next(c for c in res.checks if c.name == name)


def _mixed(seed: int):
    rng = random.Random(seed)
    return lambda i: rng.choices(CLASSES, weights=(4, 3, 2, 1))[0]


def test_a_model_that_always_says_one_class_fails_the_drift_check(rows) -> None:
    for d in ("a", "b", "c"):
        rows.healthy(d, _mixed(hash(d) % 100), ["standing"])  # after: one event, then the same class for ever
    res = _gate(rows, ["a", "b", "c"])
    drift = _check(res, "drift")
    assert not drift.passed and not res.passed
    assert drift.value > 0.5 and "standing 100%" in drift.detail
    assert all(c.passed for c in res.checks if c.name != "drift"), res.checks


def test_a_similar_model_passes_and_the_threshold_is_the_setting(rows) -> None:
    for i, d in enumerate(("a", "b", "c")):
        rows.healthy(d, _mixed(i), _mixed(i + 10))
    res = _gate(rows, ["a", "b", "c"])
    assert res.passed, res.checks
    drift = _check(res, "drift")
    assert drift.value < 0.2 and drift.threshold == 0.5
    assert not _gate(rows, ["a", "b", "c"], drift=drift.value / 2).passed  # the same rows under a tighter gate
    # a config or code update has no drift check: the model did not change
    assert [c.name for c in _gate(rows, ["a"], kind="config").checks] == [
        "ota", "safe_mode", "boots", "heap", "reconnects"
    ]  # fmt: skip


def test_a_class_swap_and_an_anomaly_rate_change_fail(rows) -> None:
    rows.healthy("a", ["standing", "walking"], ["running", "badminton"])  # same shape, other classes: disjoint
    assert _check(_gate(rows, ["a"]), "drift").value == pytest.approx(1.0, abs=0.01)
    # anomaly models: the share of time in "anomaly" is what moves
    ev = _events("b", T0, OFFER, lambda i: "anomaly" if i % 10 == 0 else "normal", kind="anomaly")
    ev += _events("b", CONF, NOW, lambda i: "anomaly" if i % 10 < 8 else "normal", seq0=1000, kind="anomaly")
    rows.write(events={"b": ev}, statuses=[_status("b", OFFER - 1000), _status("b", CONF + 1000, 2)])
    d = _check(_gate(rows, ["b"]), "drift")
    assert not d.passed and 0.6 < d.value < 0.8, d  # 10% -> 80% of the time in anomaly


def test_no_previous_model_passes_drift_and_a_silent_new_model_fails(rows) -> None:
    rows.healthy("a", None, ["walking", "standing"])
    assert _check(_gate(rows, ["a"]), "drift").passed  # nothing to compare with
    rows.healthy("b", _mixed(3), None)  # events before, none from the new model
    d = _check(_gate(rows, ["b"]), "drift")
    assert not d.passed and "sent no event" in d.detail


def test_a_decision_made_before_confirmation_counts_and_older_ones_do_not(rows) -> None:
    """A new model's first decision comes at boot, before the node confirms the update; a model that never
    changes its mind sends no other event. It says one class all the time: the gate must say so, not call it
    silent (and a decision of the previous model, made before the offer, is not carried into the window)."""
    rows.healthy("a", _mixed(5), None)
    rows.write(events={"a": _events("a", OFFER + 5_000, OFFER + 6_000, ["running"], seq0=900)})
    d = _check(_gate(rows, ["a"]), "drift")
    assert not d.passed and "running 100%" in d.detail and "silent" not in d.detail, d
    rows.healthy("b", _mixed(6), None)  # the previous model's last decision was before the offer: not carried
    d = _check(_gate(rows, ["b"]), "drift")
    assert not d.passed and "sent no event" in d.detail, d


def test_health_checks(rows) -> None:
    for d in ("ok1", "ok2"):
        rows.healthy(d, None, None)
    assert _gate(rows, ["ok1", "ok2"], kind="config").passed
    rows.healthy("safe", None, None, safe=True)
    res = _gate(rows, ["ok1", "safe"], kind="config")
    assert not res.passed and _check(res, "safe_mode").detail == "safe"
    rows.healthy("loop", None, None, boots=(1, 4))  # three boots since the offer, one was the update's
    assert _check(_gate(rows, ["loop"], kind="config"), "boots").detail == "loop +2"
    assert _check(_gate(rows, ["loop"], kind="config", extra_boots=2), "boots").passed
    rows.healthy("heap", None, None, heap_after=30000)
    assert _check(_gate(rows, ["heap"], kind="config"), "heap").detail == "heap -50%"
    assert _check(_gate(rows, ["heap"], kind="config", heap_drop=0.6), "heap").passed
    rows.healthy("flaky", None, None, reconnects=9)
    rows.healthy("rest1", None, None, reconnects=1)
    rows.healthy("rest2", None, None, reconnects=8)  # the rest reconnect too (a broker restart): not the update
    assert not _check(_gate(rows, ["flaky"], kind="config"), "reconnects").passed
    assert not _check(_gate(rows, ["flaky"], rest=["rest1", "ok1"], kind="config"), "reconnects").passed
    assert _check(_gate(rows, ["flaky"], rest=["rest2"], kind="config"), "reconnects").passed
    res = _gate(rows, ["ok1", "ok2"], kind="config", states={"ok2": "rolled_back"})
    assert not res.passed and _check(res, "ota").detail == "ok2 rolled_back"
    assert json.loads(json.dumps(res.as_dict())) == ro.GateResult.from_dict(res.as_dict()).as_dict()


def test_rollout_state_on_both_backends(db_url, tmp_path) -> None:
    """The rollout tables and their state machine, migrated once, every change committed (another connection,
    like a host that restarted, reads it back)."""
    from edgefleet.fleetops.ota import Artifact

    clock = [1000.0]
    store = open_storage(db_url)
    rs = ro.RolloutStore(store, lambda: clock[0])
    assert ro.RolloutStore(store).store is store  # a second open does not migrate again
    art = Artifact(str(tmp_path / "m.efm"), "model", 3, b"EFML" + bytes(60))
    gate = ro.GateSettings(drift=0.4)
    rs.create("r-1", art, "all", [["a"], ["b", "c"]], 30.0, gate, {"confirm_s": 60, "chunk": 1024, "wait_s": None})
    clock[0] = 1005.0
    rs.set_device("r-1", "a", state="offered", sha256="ab" * 32, offered_ms=1_005_000)
    rs.set("r-1", phase=ro.SOAK, phase_ms=1_005_000)
    rs.save_gate("r-1", ro.GateResult(0, False, [ro.Check("drift", False, "x", 0.9, 0.4)], 1_006_000))
    assert rs.set_state_if("r-1", ro.PAUSED, (ro.RUNNING,))
    assert not rs.set_state_if("r-1", ro.PAUSED, (ro.RUNNING,))  # not running any more
    store.close()
    again = ro.RolloutStore(open_storage(db_url, create=False))
    row = again.get("r-1")
    assert (row.state, row.stage, row.phase, row.phase_ms, row.updated_ms) == (
        ro.PAUSED,
        0,
        ro.SOAK,
        1_005_000,
        1_005_000,
    )
    assert row.stages == [["a"], ["b", "c"]] and row.gate == gate and row.sha256 == art.sha256 and row.version == 3
    assert row.gates["0"]["checks"][0]["value"] == 0.9
    devs = again.devices("r-1")
    assert [(d.device, d.stage, d.state) for d in devs] == [("a", 0, "offered"), ("b", 1, "queued"), ("c", 1, "queued")]
    assert devs[0].offered_ms == 1_005_000 and [d.device for d in again.devices("r-1", 1)] == ["b", "c"]
    assert "1      1        1        1" in ro.render_status(row, devs)
    with pytest.raises(EdgefleetError, match="no rollout 'r-2'"):
        again.get("r-2")
    again.store.close()
