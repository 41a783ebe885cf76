"""Over-the-air updates, the host's side (issue 13 item 3) against a real mosquitto run on the registry's files:
artifacts loaded and checked (a config with a secret refused), each device's model copy and offer signed with its
own key, chunks published retained by the operator, fetched back byte for byte by a device's login (the ACL lets
it read, not write), removed at the end, and ignored by a real collector (acked and counted, no dead letter)."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import struct
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.broker.mosquitto import Mosquitto, render_acl
from edgefleet.collect.collector import Collector
from edgefleet.collect.storage import open_storage
from edgefleet.errors import EdgefleetError
from edgefleet.fleetops import ota
from edgefleet.fleetops.commands import OperatorLink
from edgefleet.fleetops.devices import PASSWORD_FILE, Registry
from edgefleet.model import modelfile
from edgefleet.wire import ota as wire_ota

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "basicmotions-rf" / "model.efm"
IDS = ["node-1", "node-2"]


def _model(tmp_path: Path, version: int = 3) -> Path:
    p = tmp_path / f"model-v{version}.efm"
    p.write_bytes(modelfile.resign(MODEL.read_bytes(), b"s" * 32, model_version=version))
    return p


@pytest.fixture
def fleet(tmp_path):
    """Two registered devices and a broker on the registry's password file and ACL."""
    db = f"sqlite:///{tmp_path}/fleet.db"
    secrets, bdir = tmp_path / "secrets", tmp_path / "broker"
    with Registry.open(db, secrets, bdir) as reg:
        for d in IDS:
            reg.add(d, "sim")
    broker = Mosquitto(data_dir=bdir, password_file=bdir / PASSWORD_FILE, acl_file=bdir / "acl").start()
    try:
        yield {"db": db, "secrets": secrets, "bdir": bdir, "broker": broker}
    finally:
        broker.stop()


def _pw(fl, name: str) -> str:
    return (fl["secrets"] / f"{name}.secret").read_text().split("\n")[0]


def _client(fl, user: str) -> tuple[mqtt.Client, dict]:
    """A paho client logged in as `user`, collecting the messages it receives by topic."""
    got: dict[str, list[bytes]] = {}
    ev = {"connected": threading.Event(), "got": got, "lock": threading.Lock()}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv311)
    c.username_pw_set(user, _pw(fl, user))

    def on_connect(client, userdata, flags, rc, props):
        assert not rc.is_failure, rc
        ev["connected"].set()

    def on_message(client, userdata, msg):
        with ev["lock"]:
            got.setdefault(msg.topic, []).append(bytes(msg.payload))

    c.on_connect, c.on_message = on_connect, on_message
    c.connect("127.0.0.1", fl["broker"].port)
    c.loop_start()
    assert ev["connected"].wait(5)
    return c, ev


def _fetch(c: mqtt.Client, ev: dict, topic: str, timeout: float = 3.0) -> bytes | None:
    """What a node does per chunk: SUBSCRIBE to its topic, take the retained message, UNSUBSCRIBE."""
    with ev["lock"]:
        ev["got"].pop(topic, None)
    c.subscribe(topic, qos=1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ev["lock"]:
            if ev["got"].get(topic):
                payload = ev["got"][topic][0]
                break
        time.sleep(0.02)
    else:
        payload = None
    c.unsubscribe(topic)
    time.sleep(0.05)
    return payload


def test_acl_lets_devices_read_chunks_and_only_operators_write_them() -> None:
    acl = render_acl("edgefleet", "collector", "operator")
    assert "user operator\ntopic write edgefleet/+/cmd" in acl  # the existing lines stay
    assert "topic readwrite edgefleet/ota/#" in acl.split("user operator", 1)[1].split("\n\n")[0]
    assert "pattern read edgefleet/ota/#" in acl
    assert "pattern write edgefleet/ota" not in acl and "pattern readwrite edgefleet/ota" not in acl


def test_chunks_round_trip_through_the_broker_to_a_device_login(fleet, tmp_path) -> None:
    """The operator publishes node-1's model copy retained; node-1's login fetches every chunk back byte for byte
    (CRC checked as the node does), cannot overwrite one, and after the clear finds none."""
    with Registry.open(fleet["db"], fleet["secrets"], fleet["bdir"]) as reg:
        art = ota.load_artifact(_model(tmp_path), registry=reg)
        key = ota.device_key(reg, "node-1")
    assert art.kind == "model" and art.version == 3
    o = ota.make_offer(art, "node-1", key, chunk=256, confirm_s=30)
    # the copy is signed with node-1's key: its loader verifies it; the offer's MAC is the contract's text
    assert modelfile.decode(o.data, key).model_version == 3 and o.data != art.data
    text = f"efota1|node-1|model|3|{len(o.data)}|{hashlib.sha256(o.data).hexdigest()}|256|30".encode()
    assert o.args["mac"] == hmac.new(key, text, hashlib.sha256).hexdigest()
    assert o.args["art"] == hashlib.sha256(o.data).hexdigest()[:16]
    n = wire_ota.n_chunks(len(o.data), 256)
    assert n >= 3

    url = f"mqtt://operator@127.0.0.1:{fleet['broker'].port}"
    with OperatorLink(url, _pw(fleet, "operator"), tag="test") as link:
        sender = ota.Sender(link, "edgefleet")
        sent = sender.publish_chunks([o, o])  # the same art twice: published once
        assert sent == len(o.data) + 4 * n
        dev, ev = _client(fleet, "node-1")
        try:
            data = b""
            for i in range(n):
                payload = _fetch(dev, ev, wire_ota.chunk_topic("edgefleet", o.art, i))
                assert payload is not None, f"chunk {i} not readable by node-1"
                (crc,) = struct.unpack(">I", payload[:4])
                assert crc == binascii.crc32(payload[4:]) & 0xFFFFFFFF
                data += payload[4:]
            assert data == o.data
            # a device cannot write a chunk: mosquitto drops the publish, the retained chunk stays the operator's
            topic0 = wire_ota.chunk_topic("edgefleet", o.art, 0)
            dev.publish(topic0, b"evil", qos=1, retain=True).wait_for_publish(3)
            time.sleep(0.2)
            assert _fetch(dev, ev, topic0) == wire_ota.chunk_payload(o.data, 0, 256)
            sender.clear_chunks([(o.offer.size, o.offer.sha256, o.offer.chunk)])
            for i in (0, n // 2, n - 1):
                assert _fetch(dev, ev, wire_ota.chunk_topic("edgefleet", o.art, i), timeout=0.5) is None
            # a device login cannot read another device's commands, still
            assert _fetch(dev, ev, "edgefleet/node-2/cmd", timeout=0.3) is None
        finally:
            dev.loop_stop()
            dev.disconnect()


def test_collector_ignores_chunks(fleet, tmp_path) -> None:
    """A real collector on the prefix receives the retained chunks: acked and counted, not dead letters."""
    with Registry.open(fleet["db"], fleet["secrets"], fleet["bdir"]) as reg:
        art = ota.load_artifact(_model(tmp_path, 4), registry=reg)
        o = ota.make_offer(art, "node-2", ota.device_key(reg, "node-2"), chunk=2048)
    store = open_storage(f"sqlite:///{tmp_path}/collect.db")
    url = f"mqtt://collector@127.0.0.1:{fleet['broker'].port}"
    col = Collector(url, store, client_id="collector", batch_ms=10, password=_pw(fleet, "collector"))
    col.start()
    try:
        link_url = f"mqtt://operator@127.0.0.1:{fleet['broker'].port}"
        with OperatorLink(link_url, _pw(fleet, "operator"), tag="test") as link:
            sender = ota.Sender(link, "edgefleet")
            sender.publish_chunks([o])
            n = wire_ota.n_chunks(len(o.data), 2048)
            deadline = time.monotonic() + 10
            while col.stats.ignored < n and time.monotonic() < deadline:
                time.sleep(0.05)
            sender.clear_chunks([(o.offer.size, o.offer.sha256, o.offer.chunk)])
            time.sleep(0.3)
        assert col.stats.ignored >= n and col.stats.dead == 0
        assert store.counts()["dead_letter"] == 0
    finally:
        col.stop()
        store.close()


def test_artifacts_are_checked(tmp_path, fleet) -> None:
    with Registry.open(fleet["db"], fleet["secrets"], fleet["bdir"]) as reg:
        cfg = tmp_path / "cfg.json"
        for secret in ({"broker": {"password": "x"}}, {"wifi": {"password": "x"}}, {"model_key": "ab"},
                       {"device_id": "n"}, {"broker": {"username": "u"}}):  # fmt: skip
            cfg.write_text(json.dumps({"status_interval_s": 30, **secret}))
            with pytest.raises(EdgefleetError, match="carries secrets"):
                ota.load_artifact(cfg, registry=reg)
        cfg.write_text(json.dumps({"status_interval_s": 30, "broker": {"host": "mqtt.lan"}}))
        a = ota.load_artifact(cfg, registry=reg)
        assert (a.kind, a.version) == ("config", 1)  # nothing recorded yet
        reg.record_ota("node-1", "config", {"ver": 4, "sha256": a.sha256})
        reg.record_ota("node-1", "code", {"ver": 9, "sha256": a.sha256})
        assert ota.load_artifact(cfg, registry=reg).version == 5
        assert ota.load_artifact(cfg, version=2, registry=reg).version == 2
        assert reg.get("node-1").deployed["ota"]["config"]["ver"] == 4  # record_ota keeps the other kinds
        # one config for every device: the same bytes and chunk set, a MAC per device
        k1, k2 = ota.device_key(reg, "node-1"), ota.device_key(reg, "node-2")
        o1, o2 = ota.make_offer(a, "node-1", k1), ota.make_offer(a, "node-2", k2)
        assert o1.data == o2.data == a.data and o1.art == o2.art and o1.args["mac"] != o2.args["mac"]
        with pytest.raises(EdgefleetError, match="not model"):
            ota.load_artifact(cfg, kind="model", registry=reg)
        with pytest.raises(EdgefleetError, match="needs --version"):
            ota.load_artifact(cfg)
        code = tmp_path / "code.efcb"
        code.write_bytes(wire_ota.bundle({"node/app.mpy": b"\x4d\x06" + bytes(50)}))
        assert ota.load_artifact(code, registry=reg).version == 10
        code.write_bytes(code.read_bytes() + b"x")
        with pytest.raises(EdgefleetError, match="trailing bytes"):
            ota.load_artifact(code, registry=reg)
        junk = tmp_path / "junk.bin"
        junk.write_bytes(b"\x00\x01garbage")
        with pytest.raises(EdgefleetError, match="not an artifact"):
            ota.load_artifact(junk, registry=reg)
        v0 = tmp_path / "v0.efm"
        v0.write_bytes(modelfile.resign(MODEL.read_bytes(), b"s" * 32, model_version=0))
        # a model straight from `train` (version 0) gets one above what the registry records; --version sets it
        auto = ota.load_artifact(v0, registry=reg)
        assert auto.version == ota.highest_recorded(reg, "model") + 1 == modelfile.decode(auto.data).model_version
        with pytest.raises(EdgefleetError, match="no registry"):
            ota.load_artifact(v0)
        nine = ota.load_artifact(_model(tmp_path, 3), version=9, registry=reg)
        assert nine.version == 9 == modelfile.decode(nine.data).model_version
        (tmp_path / "mdir").mkdir()
        (tmp_path / "mdir" / "model.efm").write_bytes(v0.read_bytes())
        assert ota.load_artifact(tmp_path / "mdir", version=9, registry=reg).data == nine.data  # a model directory
        (fleet["secrets"] / "node-2.key").write_bytes(b"k" * 32)
        with pytest.raises(EdgefleetError, match="not node-2's registered model key"):
            ota.device_key(reg, "node-2")
