"""Staged rollouts end to end on the host's side (issue 13 item 4): a real mosquitto run on the registry's files,
a real collector writing the fleet database the gate reads, and scripted devices that speak the node's side of
docs/protocol.md "Over-the-air updates" over their own logins (offer MAC checked with the device's key, chunks
fetched one at a time from the retained topics and CRC-checked, sha256 and the model's signature verified, ota
reports in a retained status, class events only when the decision changes). The firmware's own side is tested
with the real nodes by the integration test; here the host's decisions are under test: stages, gate, rollback,
crash and resume, pause and abort, and the CLI."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import queue
import random
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.broker.mosquitto import Mosquitto
from edgefleet.cli import main
from edgefleet.collect.collector import Collector
from edgefleet.collect.storage import open_storage
from edgefleet.errors import EdgefleetError
from edgefleet.fleetops import rollout as ro
from edgefleet.fleetops.devices import PASSWORD_FILE, Registry
from edgefleet.model import modelfile
from edgefleet.sim import fleetsim as fs
from edgefleet.wire import ota as wire_ota
from edgefleet.wire import protocol

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "basicmotions-rf" / "model.efm"
P = "edgefleet"
IDS = [f"dev-{i}" for i in range(6)]
CLASSES = ("standing", "walking", "running", "badminton")


def mixed(rng: random.Random) -> str:
    return rng.choices(CLASSES, weights=(4, 3, 2, 1))[0]


def degenerate(rng: random.Random) -> str:
    return "badminton"


class ScriptedNode:
    """A device on its own broker login doing what the node's OTA side does, in Python."""

    def __init__(self, dev: str, password: str, key: bytes, port: int) -> None:
        self.dev, self.key = dev, key
        self.rng = random.Random(dev)
        self.behaviour = self.before = mixed
        self.after = mixed
        self.fail_with: str | None = None  # roll back by itself with this reason instead of confirming
        self.silent = False  # ack an offer, then never report (a node stuck downloading)
        self.switched = False  # runs an update it can go back from (ota_rollback has a previous version)
        self.boot, self.seq, self.label = 1, 0, None
        self.ota: dict | None = None
        self.vers = {"model": 1, "config": 0, "code": 0}
        self.prev_vers = dict(self.vers)
        self.offers: list[dict] = []
        self.rollbacks = 0
        self.chunks: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev, protocol=mqtt.MQTTv311)
        c.username_pw_set(dev, password)
        c.max_queued_messages_set(0)
        self.connected = threading.Event()
        c.on_connect = lambda *a: self.connected.set()
        c.on_message = self.on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert self.connected.wait(5)
        c.subscribe(f"{P}/{dev}/cmd", qos=1)
        self.c = c
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    # -- what the node publishes
    def status(self) -> None:
        with self.lock:
            self.seq += 1
            body = fs.online_status(self.dev, seq=self.seq, ts=int(time.time() * 1000), boot=self.boot,
                                    counters={"reconnects": 0}, ota=self.ota, ota_ver=dict(self.vers))  # fmt: skip
        self.c.publish(f"{P}/{self.dev}/status", protocol.encode(body), qos=1, retain=True)

    def ack(self, cid: str, ok: bool, result: dict | None = None, error: str | None = None) -> None:
        body = {"v": 2, "dev": self.dev, "id": cid, "ok": ok, "result": result or {}}
        if error:
            body["error"] = error
        self.c.publish(f"{P}/{self.dev}/ack", protocol.encode(body), qos=1)

    def run(self) -> None:
        """Decide every 50 ms; an event only when the decision changes (node/decision.py); a status every 0.5 s."""
        n = 0
        while not self.stop.is_set():
            label = self.behaviour(self.rng)
            if label != self.label:
                self.label = label
                with self.lock:
                    self.seq += 1
                    rec = fs.event(self.seq, ts=int(time.time() * 1000), label=label)
                self.c.publish(
                    f"{P}/{self.dev}/event", protocol.encode(protocol.events(self.dev, [rec], log=fs.LOG)), qos=1
                )
            if n % 10 == 0:
                self.status()
            n += 1
            time.sleep(0.05)

    # -- what the node receives
    def on_message(self, client, userdata, msg) -> None:
        if msg.topic.startswith(f"{P}/ota/"):
            if msg.retain:
                self.chunks.put((msg.topic, bytes(msg.payload)))
            return
        body = json.loads(msg.payload)
        args = body.get("args") or {}
        if body["cmd"] == "ota":
            self.offers.append(args)
            text = wire_ota.mac_text(self.dev, args["kind"], args["ver"], args["size"], args["sha256"], args["chunk"],
                                     args["confirm_s"])  # fmt: skip
            if not hmac.compare_digest(hmac.new(self.key, text, hashlib.sha256).hexdigest(), args["mac"]):
                self.ack(body["id"], False, error="bad mac")
            elif args["ver"] <= self.vers[args["kind"]]:
                self.ack(
                    body["id"], False, error=f"version {args['ver']} is not above the running {self.vers[args['kind']]}"
                )
            else:
                self.ack(body["id"], True, {"state": "downloading", "got": 0})
                self.switched = False
                if not self.silent:
                    threading.Thread(target=self.download, args=(args,), daemon=True).start()
        elif body["cmd"] == "ota_rollback":
            self.rollbacks += 1
            if not self.switched:
                self.ack(body["id"], False, error="no previous version")
                return
            self.switched = False
            self.ack(body["id"], True, {"rebooting": True})
            kind = args["kind"]
            self.boot += 1
            self.vers = dict(self.prev_vers)
            self.behaviour = self.before
            self.ota = {**(self.ota or {}), "kind": kind, "state": "rolled_back", "reason": "operator rollback"}
            self.status()

    def download(self, args: dict) -> None:
        kind, ver, size = args["kind"], args["ver"], args["size"]
        data = b""
        for n in range(wire_ota.n_chunks(size, args["chunk"])):
            topic = wire_ota.chunk_topic(P, args["art"], n)
            self.c.subscribe(topic, qos=1)
            got_topic, payload = self.chunks.get(timeout=10)
            self.c.unsubscribe(topic)
            assert got_topic == topic
            assert int.from_bytes(payload[:4], "big") == binascii.crc32(payload[4:]) & 0xFFFFFFFF
            data += payload[4:]
            self.ota = {
                "kind": kind,
                "ver": ver,
                "state": "downloading",
                "got": len(data),
                "size": size,
                "reason": None,
            }
        self.status()
        if hashlib.sha256(data).hexdigest() != args["sha256"]:
            self.ota = {**self.ota, "state": "failed", "reason": "artifact hash mismatch"}
            self.status()
            return
        if kind == "model":
            modelfile.decode(data, self.key)  # the loader's check: signed with this device's key
        self.boot += 1  # the switch reboots into the new version
        self.switched = True
        self.ota = {**self.ota, "state": "pending"}
        self.status()
        time.sleep(0.2)
        if self.fail_with:
            self.boot += 1
            self.switched = False
            self.ota = {**self.ota, "state": "rolled_back", "reason": self.fail_with}
        else:
            self.prev_vers = dict(self.vers)
            self.vers[kind] = ver
            self.behaviour = self.after
            self.ota = {**self.ota, "state": "confirmed"}
        self.status()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    work = tmp_path_factory.mktemp("rollout")
    db = f"sqlite:///{work}/fleet.db"
    secrets, bdir = work / "secrets", work / "broker"
    with Registry.open(db, secrets, bdir) as reg:
        for d in IDS:
            reg.add(d, "sim", ["all6"])
        reg.add("dev-off", "sim")  # registered, never connected
    broker = Mosquitto(data_dir=bdir, password_file=bdir / PASSWORD_FILE, acl_file=bdir / "acl").start()
    pw = {n: (secrets / f"{n}.secret").read_text().split("\n")[0] for n in [*IDS, "collector", "operator"]}
    store = open_storage(db)
    col = Collector(f"mqtt://collector@127.0.0.1:{broker.port}", store, client_id="collector", batch_ms=10,
                    password=pw["collector"])  # fmt: skip
    col.start()
    nodes = {d: ScriptedNode(d, pw[d], (secrets / f"{d}.key").read_bytes(), broker.port) for d in IDS}
    conn = ro.Connection(db=db, broker=f"mqtt://operator@127.0.0.1:{broker.port}", password=pw["operator"],
                         secrets_dir=str(secrets), broker_dir=str(bdir))  # fmt: skip
    time.sleep(2.0)  # the previous model's events: the gate's "before"
    try:
        yield {"db": db, "work": work, "nodes": nodes, "conn": conn, "broker": broker, "collector": col, "pw": pw}
    finally:
        for n in nodes.values():
            n.close()
        col.stop()
        store.close()
        broker.stop()


def _model(fl, version: int) -> str:
    p = fl["work"] / f"model-v{version}.efm"
    p.write_bytes(modelfile.resign(MODEL.read_bytes(), b"s" * 32, model_version=version))
    return str(p)


def _reset(fl, after=mixed, fail_with=None) -> None:
    for n in fl["nodes"].values():
        n.after, n.fail_with, n.silent = after, fail_with, False


class Log:
    """Hooks.say: collects lines; `crash_on` raises once at the first line containing it (a host crash there)."""

    def __init__(self, crash_on: str | None = None, then=None) -> None:
        self.lines: list[str] = []
        self.crash_on, self.then = crash_on, then

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self.crash_on and self.crash_on in line:
            self.crash_on = None
            if self.then is None:
                raise RuntimeError("host crashed")
            self.then()


def _hooks(log: Log) -> ro.Hooks:
    return ro.Hooks(say=log, progress_every_s=0.5, poll_s=0.1)


def _opts(path: str, **kw) -> ro.RolloutOptions:
    base = {"target": "group:all6", "stages": "34%,100%", "soak_s": 1.5, "confirm_s": 10, "wait_s": 20, "seed": 7,
            "gate": ro.GateSettings(baseline_s=60), "offer_timeout_s": 3}  # fmt: skip
    return ro.RolloutOptions(artifact=path, **{**base, **kw})


def _retained_chunks(fl) -> list[str]:
    got: list[str] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="operator-check", protocol=mqtt.MQTTv311)
    c.username_pw_set("operator", fl["pw"]["operator"])
    c.on_message = lambda cl, u, m: got.append(m.topic) if m.retain and m.payload else None
    c.connect("127.0.0.1", fl["broker"].port)
    c.loop_start()
    c.subscribe(f"{P}/ota/#", qos=1)
    time.sleep(0.5)
    c.loop_stop()
    c.disconnect()
    return got


def test_a_good_model_rolls_out_through_every_stage(fleet) -> None:
    _reset(fleet)
    log = Log()
    res = ro.start_rollout(_opts(_model(fleet, 2)), fleet["conn"], _hooks(log))
    assert res.state == ro.DONE, "\n".join(log.lines)
    assert [g.passed for g in res.gates] == [True, True]
    drift = next(c for c in res.gates[0].checks if c.name == "drift")
    assert drift.value is not None and drift.value < 0.5, drift  # compared against the previous model's events
    for n in fleet["nodes"].values():
        assert len(n.offers) == 1 and n.vers["model"] == 2 and n.ota["state"] == "confirmed"
    with Registry.open(fleet["db"], create=False) as reg:
        rs = ro.RolloutStore(reg.store)
        assert {d.state for d in rs.devices(res.id)} == {"confirmed"}
        assert [len(s) for s in rs.get(res.id).stages] == [3, 3]
        assert all(reg.get(d).deployed["ota"]["model"]["ver"] == 2 for d in IDS)
    assert _retained_chunks(fleet) == []  # removed when each stage was in
    assert any("soaking" in line for line in log.lines) and any("gate drift" in line for line in log.lines)
    # the same version again (--version 2: without it the host would number it 3, one above the registry's):
    # every node refuses it (not above the running one); the first stage fails
    log2 = Log()
    again = ro.start_rollout(_opts(_model(fleet, 2), version=2), fleet["conn"], _hooks(log2))
    assert again.state == ro.HALTED and not again.gates[0].passed
    assert any("version 2 is not above the running 2" in line for line in log2.lines), log2.lines


def test_a_degenerate_model_is_stopped_at_the_first_stage_and_rolled_back(fleet, capsys) -> None:
    """Through the CLI: exit status 1, the stage's devices back on the previous model, the others never offered."""
    _reset(fleet, after=degenerate)
    before = {d: len(n.offers) for d, n in fleet["nodes"].items()}
    c = fleet["conn"]
    pwfile = fleet["work"] / "operator.pw"
    pwfile.write_text(c.password + "\n")
    rc = main(["rollout", "start", _model(fleet, 5), "--to", "group:all6", "--stages", "30%,100%", "--soak", "1.5s",
               "--confirm-s", "10", "--wait", "20s", "--gate-baseline", "1m", "--seed", "3", "--db", c.db,
               "--secrets-dir", c.secrets_dir, "--broker-dir", c.broker_dir, "--broker", c.broker,
               "--password-file", str(pwfile)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "gate drift      FAIL" in out and "halted" in out, out
    offered = [d for d, n in fleet["nodes"].items() if len(n.offers) > before[d]]
    assert len(offered) == 2  # the first stage only
    for d, n in fleet["nodes"].items():
        assert n.vers["model"] == 2  # the stage rolled back, the rest never got it
        assert n.rollbacks == (1 if d in offered else 0)
    rid = out.split("rollout ", 1)[1].split(":", 1)[0]
    rc = main(["rollout", "status", rid, "--db", c.db, "--secrets-dir", c.secrets_dir, "--broker-dir", c.broker_dir])
    status = capsys.readouterr().out
    assert rc == 0 and f"rollout {rid}  halted (stage 1 gate failed: drift)" in status
    rows = [line.split() for line in status.splitlines() if line[:1].isdigit()]
    assert rows[0][:7] == ["1", "2", "2", "0", "0", "0", "2"] and rows[0][7] == "FAIL", status
    assert rows[1][:7] == ["2", "4", "0", "0", "0", "0", "0"], status
    assert _retained_chunks(fleet) == []


def test_a_node_rolling_back_by_itself_halts_the_rollout(fleet) -> None:
    _reset(fleet, fail_with="boot loop")
    log = Log()
    res = ro.start_rollout(_opts(_model(fleet, 6), stages="20%,100%"), fleet["conn"], _hooks(log))
    assert res.state == ro.HALTED and "ota" in res.reason
    ota_check = next(c for c in res.gates[0].checks if c.name == "ota")
    assert not ota_check.passed and "rolled_back" in ota_check.detail
    assert not any("soaking" in line for line in log.lines)  # failed updates go straight to the gate
    assert sum(1 for n in fleet["nodes"].values() if n.ota and n.ota.get("ver") == 6) == 2


def test_offline_and_stuck_devices_time_out_and_halt(fleet) -> None:
    """A device that never acks the offer (offline) and one that acks and then never reports: both time out, with
    progress lines while the host waits; the gate fails on them."""
    _reset(fleet)
    log = Log()
    res = ro.start_rollout(_opts(_model(fleet, 20), target="dev-off", stages="100%"), fleet["conn"], _hooks(log))
    assert res.state == ro.HALTED and "timeout" in next(c for c in res.gates[0].checks if c.name == "ota").detail
    stuck = fleet["nodes"]["dev-5"]
    stuck.silent = True
    log = Log()
    t0 = time.monotonic()
    res = ro.start_rollout(
        _opts(_model(fleet, 21), target="dev-5", stages="100%", wait_s=2.5), fleet["conn"], _hooks(log)
    )
    assert res.state == ro.HALTED and time.monotonic() - t0 < 20
    assert any(line.strip() == "stage 1: 1 offered" for line in log.lines), log.lines  # progress while waiting
    with Registry.open(fleet["db"], create=False) as reg:
        dev = ro.RolloutStore(reg.store).devices(res.id)[0]
    # the gate sent ota_rollback to it too (it may have switched meanwhile); it had nothing to go back to
    assert (dev.state, dev.reason) == ("rollback_failed", "no previous version"), dev
    assert any("dev-5: rollback error: no previous version" in line for line in log.lines), log.lines
    stuck.silent = False


def test_resume_after_a_host_crash_continues_where_it_stopped(fleet) -> None:
    """The host dies mid-soak, then mid-wait: the rollout goes on from the database, no device is offered twice."""
    _reset(fleet)
    before = {d: len(n.offers) for d, n in fleet["nodes"].items()}
    with pytest.raises(RuntimeError, match="host crashed"):
        ro.start_rollout(_opts(_model(fleet, 7)), fleet["conn"], _hooks(Log(crash_on="soaking")))
    with Registry.open(fleet["db"], create=False) as reg:
        rs = ro.RolloutStore(reg.store)
        row = rs.all_rollouts()[-1]
        assert (row.state, row.stage, row.phase) == (ro.RUNNING, 0, ro.SOAK)
        stage1 = row.stages[0]
        assert {d.state for d in rs.devices(row.id, 0)} == {"confirmed"}
    log = Log(crash_on="waiting up to")  # crash again in stage 2, after its offers went out
    with pytest.raises(RuntimeError):
        ro.resume_rollout(row.id, fleet["conn"], _hooks(log))
    assert "resuming at stage 1/2, step soak" in log.lines[0]
    log = Log()
    res = ro.resume_rollout(row.id, fleet["conn"], _hooks(log))
    assert res.state == ro.DONE, log.lines
    assert "resuming at stage 2/2, step wait" in log.lines[0]
    for d, n in fleet["nodes"].items():
        assert len(n.offers) == before[d] + 1 and n.vers["model"] == 7, d
    assert len(stage1) == 3
    with pytest.raises(EdgefleetError, match="is done: nothing to resume"):
        ro.resume_rollout(row.id, fleet["conn"], _hooks(Log()))


def test_pause_then_resume_and_abort(fleet) -> None:
    _reset(fleet)
    conn = fleet["conn"]
    holder: dict = {}

    def pause() -> None:
        with Registry.open(conn.db, create=False) as reg:
            holder["id"] = ro.RolloutStore(reg.store).all_rollouts()[-1].id
        ro.mark(holder["id"], conn, ro.PAUSED)

    res = ro.start_rollout(_opts(_model(fleet, 8)), conn, _hooks(Log(crash_on="soaking", then=pause)))
    assert res.state == ro.PAUSED and res.id == holder["id"]
    with pytest.raises(EdgefleetError, match="cannot pause"):
        ro.mark(res.id, conn, ro.PAUSED)
    done = ro.resume_rollout(res.id, conn, _hooks(Log()))
    assert done.state == ro.DONE

    def abort() -> None:
        with Registry.open(conn.db, create=False) as reg:
            rid = ro.RolloutStore(reg.store).all_rollouts()[-1].id
        ro.mark(rid, conn, ro.ABORTED)

    before = {d: len(n.offers) for d, n in fleet["nodes"].items()}
    res = ro.start_rollout(_opts(_model(fleet, 9)), conn, _hooks(Log(crash_on="soaking", then=abort)))
    assert res.state == ro.ABORTED
    assert sum(len(n.offers) - before[d] for d, n in fleet["nodes"].items()) == 3  # stage 2 never offered
    assert _retained_chunks(fleet) == []
    with pytest.raises(EdgefleetError, match="is aborted"):
        ro.resume_rollout(res.id, conn, _hooks(Log()))


def test_cli_errors_are_one_line_messages(fleet, tmp_path, capsys) -> None:
    c = fleet["conn"]
    where = ["--db", c.db, "--secrets-dir", c.secrets_dir, "--broker-dir", c.broker_dir]
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"broker": {"password": "hunter2"}}))
    cases = [
        (["rollout", "status", "r-nope", *where], "no rollout 'r-nope'"),
        (["rollout", "pause", "r-nope", *where], "no rollout 'r-nope'"),
        (["rollout", "start", str(cfg), "--to", "all", *where], "carries secrets (broker.password)"),
        (["rollout", "start", _model(fleet, 10), "--to", "all", "--stages", "50%,20%", *where], "cumulative"),
        (["rollout", "start", _model(fleet, 10), "--to", "nobody", *where], "'nobody' is not registered"),
        (["rollout", "start", _model(fleet, 10), "--to", "all", "--soak", "soon", *where], "not a duration"),
        (["rollout", "start", str(tmp_path / "missing.efm"), "--to", "all", *where], "cannot read artifact"),
        (["rollout", "status", "--db", f"sqlite:///{tmp_path}/none.db"], "no database at"),
        (["rollout", "start", _model(fleet, 10), "--to", "all", *where[:2], "--broker", "mqtt://operator:pw@h:1"],
         "password"),
    ]  # fmt: skip
    for argv, msg in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) <= 2, err
    rc = main(["rollout", "status", *where])
    assert rc == 0 and capsys.readouterr().out.startswith("ROLLOUT")
