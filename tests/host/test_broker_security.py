"""The broker secure by default (issue 10 item 4), on a real mosquitto with real TLS: client ids pinned to user
names (no session takeover), a message size limit, the CLI refusing an open broker on the network, the PKI's
certificates, and TLS verification on both the collector side (paho) and the node (MicroPython's ssl at the
board's heap): wrong CA, wrong host name and an expired certificate each refused with a clear message."""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.board.boards import load_board
from edgefleet.broker import pki
from edgefleet.broker.mosquitto import MESSAGE_SIZE_LIMIT, Mosquitto
from edgefleet.runtime import find_micropython, micropython_env, unix_heap_bytes
from edgefleet.sim.simulate import Fleet

DEVICES = ["node-1", "node-2"]


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """A broker in the secure configuration simulate and the demo use: logins, ACL, TLS listener."""
    work = tmp_path_factory.mktemp("secure")
    broker = Fleet.secure_broker(work, DEVICES, tls=True).start()
    creds = json.loads((work / "credentials.json").read_text())
    yield broker, creds, work
    broker.stop()


class Client:
    """A paho client that records its connect result, disconnects and messages."""

    def __init__(self, broker: Mosquitto, user: str, password: str, client_id: str, v5: bool = False, **tls):
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
        self.c.username_pw_set(user, password)
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.refused: list = []
        self.got: list[tuple[str, bytes]] = []
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda cl, u, f, rc, p: self.disconnected.set()
        self.c.on_message = lambda cl, u, m: self.got.append((m.topic, m.payload))
        port = broker.port
        if tls:
            self.c.tls_set(ca_certs=str(tls["ca"]))
            port = broker.tls_port
        self.c.connect(tls.get("host", broker.host), port)
        self.c.loop_start()

    def _on_connect(self, cl, u, flags, rc, props) -> None:
        if rc.is_failure:
            self.refused.append(str(rc))
        else:
            self.connected.set()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_a_device_cannot_take_over_the_collectors_session(secure) -> None:
    """A device logging in with the collector's client id gets its own user name as client id: the collector
    stays connected and keeps receiving (before: mosquitto disconnected it and dropped its queued messages)."""
    broker, creds, _ = secure
    col = Client(broker, "collector", creds["collector"], "edgefleet-collector-x", v5=True)
    assert col.connected.wait(5)
    col.c.subscribe("edgefleet/#", qos=1)
    time.sleep(0.3)
    thief = Client(broker, "node-1", creds["node-1"], "edgefleet-collector-x")
    assert thief.connected.wait(5)
    time.sleep(1.0)
    assert not col.disconnected.is_set(), "the device took over the collector's session"
    thief.c.publish("edgefleet/node-1/telemetry", b"{}", qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 5
    while not col.got and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [t for t, _ in col.got] == ["edgefleet/node-1/telemetry"]
    thief.close()
    col.close()


def test_message_size_limit(secure) -> None:
    broker, creds, _ = secure
    col = Client(broker, "collector", creds["collector"], "c-size", v5=True)
    assert col.connected.wait(5)
    col.c.subscribe("edgefleet/#", qos=1)
    time.sleep(0.3)
    node = Client(broker, "node-2", creds["node-2"], "node-2")
    assert node.connected.wait(5)
    node.c.publish("edgefleet/node-2/telemetry", b"x" * (MESSAGE_SIZE_LIMIT + 1), qos=1)
    node.c.publish("edgefleet/node-2/event", b"small", qos=1)
    deadline = time.monotonic() + 5
    while not col.got and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert [(t, len(p)) for t, p in col.got] == [("edgefleet/node-2/event", 5)]
    node.close()
    col.close()


def test_broker_cli_refuses_anonymous_on_the_network() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "broker", "--host", "0.0.0.0", "--allow-anonymous"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "--allow-anonymous refused on 0.0.0.0" in r.stderr and "Traceback" not in r.stderr


def test_pki_keys_are_private_from_creation(tmp_path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "broker", "pki", "--out", str(tmp_path / "tls"), "--hosts",
         "mqtt.lan,192.168.1.10"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    from cryptography import x509

    for name, mode in (("ca.key", 0o600), ("server.key", 0o600)):
        assert stat.S_IMODE((tmp_path / "tls" / name).stat().st_mode) == mode
    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.lan"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.168.1.10"]


@pytest.fixture(scope="module")
def bad_tls(tmp_path_factory, secure):
    """A foreign CA, and a broker whose certificate expired yesterday."""
    work = tmp_path_factory.mktemp("badtls")
    other = pki.create(work / "other", ["localhost", "127.0.0.1"])
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    expired = pki.create(work / "expired", ["localhost", "127.0.0.1"], days=1, not_before=past)
    broker, _creds, swork = secure
    old = Mosquitto(data_dir=work / "b", password_file=broker.password_file, acl_file=broker.acl_file, tls=expired)
    only_name = pki.create(work / "name", ["localhost"])  # reached as 127.0.0.1: a host name mismatch
    named = Mosquitto(data_dir=work / "nb", password_file=broker.password_file, acl_file=broker.acl_file,
                      tls=only_name)  # fmt: skip
    old.start()
    named.start()
    yield {"other_ca": other.ca_cert, "expired": old, "expired_ca": expired.ca_cert, "ca": swork / "tls" / "ca.pem",
           "named": named, "named_ca": only_name.ca_cert}  # fmt: skip
    old.stop()
    named.stop()


def _paho_tls(broker: Mosquitto, creds: dict, ca: Path, host: str) -> str:
    try:
        c = Client(broker, "node-1", creds["node-1"], "node-1", ca=ca, host=host)
    except Exception as e:  # the error is what the test checks
        return f"{type(e).__name__}: {e}"
    ok = c.connected.wait(5)
    c.close()
    return "connected" if ok else f"refused {c.refused}"


def test_collector_side_tls_verification(secure, bad_tls) -> None:
    broker, creds, _ = secure
    assert _paho_tls(broker, creds, bad_tls["ca"], "localhost") == "connected"
    assert "certificate verify failed: self-signed certificate in certificate chain" in _paho_tls(
        broker, creds, bad_tls["other_ca"], "localhost"
    )
    assert "IP address mismatch" in _paho_tls(bad_tls["named"], creds, bad_tls["named_ca"], "127.0.0.1")
    assert "certificate has expired" in _paho_tls(bad_tls["expired"], creds, bad_tls["expired_ca"], "localhost")


NODE_TLS = """
import asyncio
from node.mqtt import MQTTClient
async def one(url, ca):
    c = MQTTClient("node-1", url, username="node-1", password=PW, ca=ca, connect_timeout_s=10)
    try:
        await c._connect()
        r = "connected"
        await c.disconnect()
    except Exception as e:
        r = str(e)
    print("CASE", r)
for url, ca in CASES:
    asyncio.run(one(url, ca))
try:
    MQTTClient("node-1", "mqtts://localhost:8883")
except ValueError as e:
    print("CASE", e)
"""


def test_node_tls_verification_on_micropython(secure, bad_tls, tmp_path) -> None:
    """The node's MQTT client over MicroPython's ssl (mbedtls) at the board's heap plus the TLS allowance."""
    broker, creds, _ = secure
    ca, other, exp = str(bad_tls["ca"]), str(bad_tls["other_ca"]), bad_tls["expired"]
    cases = [
        (f"mqtts://localhost:{broker.tls_port}", ca),
        (f"mqtts://localhost:{broker.tls_port}", other),
        (f"mqtts://127.0.0.1:{broker.tls_port}", str(bad_tls["expired_ca"])),  # right name, foreign CA
        (f"mqtts://localhost:{exp.tls_port}", str(bad_tls["expired_ca"])),
        (f"mqtts://localhost:{broker.port}", ca),  # TLS to the plain port
    ]
    cases.append((f"mqtts://127.0.0.1:{bad_tls['named'].tls_port}", str(bad_tls["named_ca"])))  # name mismatch
    script = tmp_path / "tls_cases.py"
    script.write_text(f"PW = {creds['node-1']!r}\nCASES = {cases!r}\n" + NODE_TLS)
    heap = unix_heap_bytes(load_board("esp32-devkitc").heap_bytes, tls=True)
    r = subprocess.run([find_micropython(), "-X", f"heapsize={heap}", str(script)], env=micropython_env(),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    got = [ln[5:] for ln in r.stdout.splitlines() if ln.startswith("CASE ")]
    assert len(got) == 7, r.stdout + r.stderr
    assert got[0] == "connected"
    assert "not correctly signed by the trusted CA" in got[1] and got[1].startswith("TLS: the certificate of")
    assert "not correctly signed by the trusted CA" in got[2]
    assert "validity has expired" in got[3]
    assert "is this port a TLS listener?" in got[4]
    assert "Common Name (CN) does not match" in got[5]
    assert got[6].startswith("broker.ca: required for mqtts://")
