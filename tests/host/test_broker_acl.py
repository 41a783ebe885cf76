"""Per-device credentials and ACLs on a real mosquitto: a node publishes only under its own id and reads only its
own /cmd; the collector (user `collector`, MQTT 5 shared subscription) reads everything."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.broker import Mosquitto, render_acl


def _login(broker: Mosquitto, user: str, password: str, v5: bool = False) -> mqtt.Client:
    proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-c", protocol=proto)
    c.username_pw_set(user, password)
    connected = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: connected.set() if not rc.is_failure else None
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert connected.wait(5), f"{user} could not log in"
    return c


def test_per_device_acl(tmp_path) -> None:
    pw = tmp_path / "passwd"
    for i, (user, secret) in enumerate([("collector", "c-secret"), ("node-1", "n1-secret"), ("node-2", "n2-secret")]):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(pw), user, secret], check=True)
    acl = tmp_path / "acl"
    acl.write_text(render_acl("edgefleet", "collector"))
    with Mosquitto(data_dir=tmp_path / "m", password_file=pw, acl_file=acl) as broker:
        got: list[str] = []
        col = _login(broker, "collector", "c-secret", v5=True)
        col.on_message = lambda c, u, m: got.append(m.topic)
        col.subscribe("$share/g/edgefleet/#", qos=1)
        n1 = _login(broker, "node-1", "n1-secret")
        cmds: list[str] = []
        n1.on_message = lambda c, u, m: cmds.append(m.topic)
        n1.subscribe([("edgefleet/node-1/cmd", 1), ("edgefleet/node-2/cmd", 1)])
        time.sleep(0.3)
        for topic in ("edgefleet/node-1/telemetry", "edgefleet/node-2/telemetry", "edgefleet/node-1/cmd"):
            n1.publish(topic, b"{}", qos=1).wait_for_publish(5)
        col.publish("edgefleet/node-1/cmd", b"{}", qos=1).wait_for_publish(5)
        col.publish("edgefleet/node-2/cmd", b"{}", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while (len(got) < 3 or len(cmds) < 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        for c in (col, n1):
            c.disconnect()
            c.loop_stop()
        # node-1's telemetry arrives; its attempts on node-2's topic and on a /cmd topic are refused.
        assert sorted(got) == ["edgefleet/node-1/cmd", "edgefleet/node-1/telemetry", "edgefleet/node-2/cmd"]
        assert cmds == ["edgefleet/node-1/cmd"]  # node-1 reads its own commands only
        # A wrong password is refused.
        bad = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="intruder")
        bad.username_pw_set("node-2", "wrong")
        result: list = []
        bad.on_connect = lambda cl, u, f, rc, p: result.append(rc.is_failure)
        bad.connect(broker.host, broker.port)
        bad.loop_start()
        deadline = time.monotonic() + 5
        while not result and time.monotonic() < deadline:
            time.sleep(0.05)
        bad.loop_stop()
        assert result == [True]
        # The collector with a wrong password: one clear error, exit 2, no endless retry.
        r = subprocess.run(
            [sys.executable, "-m", "edgefleet.cli", "collect", "--db", f"sqlite:///{tmp_path}/f.db",
             "--broker", f"mqtt://collector:wrong@127.0.0.1:{broker.port}", "--client-id", "c-bad"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 2 and "refused the connection" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_broker_cli_refuses_acl_without_logins(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "edgefleet.cli", "broker", "--acl", "--port", "0"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "--acl needs --password-file" in r.stderr
