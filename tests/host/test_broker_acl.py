"""Per-device credentials and ACLs on a real mosquitto: a node publishes only under its own id and reads only its
own /cmd and /stored; the collector (user `collector`, MQTT 5 shared subscription) reads everything and is the
only writer of /stored; only the operator writes /cmd (COMMON.md's ACL, docs/security.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.broker.mosquitto import Mosquitto, render_acl, write_password_file


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
    users = [("collector", "c-secret"), ("operator", "o-secret"), ("node-1", "n1-secret"), ("node-2", "n2-secret")]
    write_password_file(dict(users), pw)
    acl = tmp_path / "acl"
    acl.write_text(render_acl("edgefleet", "collector", "operator"))
    with Mosquitto(data_dir=tmp_path / "m", password_file=pw, acl_file=acl) as broker:
        got: list[str] = []
        col = _login(broker, "collector", "c-secret", v5=True)
        col.on_message = lambda c, u, m: got.append(m.topic)
        col.subscribe("$share/g/edgefleet/#", qos=1)
        n1 = _login(broker, "node-1", "n1-secret")
        cmds: list[str] = []
        n1.on_message = lambda c, u, m: cmds.append(m.topic)
        n1.subscribe([(f"edgefleet/{d}/{k}", 1) for d in ("node-1", "node-2") for k in ("cmd", "stored")])
        op = _login(broker, "operator", "o-secret")
        time.sleep(0.3)
        for topic in ("edgefleet/node-1/telemetry", "edgefleet/node-2/telemetry", "edgefleet/node-1/cmd",
                      "edgefleet/node-1/stored", "edgefleet/node-2/stored"):  # fmt: skip
            n1.publish(topic, b"{}", qos=1).wait_for_publish(5)
        col.publish("edgefleet/node-1/cmd", b"{}", qos=1).wait_for_publish(5)  # a collector may not command
        col.publish("edgefleet/node-1/stored", b"{}", qos=1).wait_for_publish(5)
        col.publish("edgefleet/node-2/stored", b"{}", qos=1).wait_for_publish(5)
        op.publish("edgefleet/node-1/cmd", b"{}", qos=1).wait_for_publish(5)
        op.publish("edgefleet/node-2/cmd", b"{}", qos=1).wait_for_publish(5)
        op.publish("edgefleet/node-1/stored", b"{}", qos=1).wait_for_publish(5)  # an operator may not ack storage
        deadline = time.monotonic() + 5
        while (len(got) < 5 or len(cmds) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        for c in (col, n1, op):
            c.disconnect()
            c.loop_stop()
        # node-1's telemetry arrives; its attempts on node-2's topic, on /cmd and on /stored are refused; only the
        # operator's commands and the collector's storage acks get through.
        assert sorted(got) == ["edgefleet/node-1/cmd", "edgefleet/node-1/stored", "edgefleet/node-1/telemetry",
                               "edgefleet/node-2/cmd", "edgefleet/node-2/stored"], got  # fmt: skip
        assert sorted(cmds) == ["edgefleet/node-1/cmd", "edgefleet/node-1/stored"]  # node-1 reads only its own
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
             "--broker", f"mqtt://collector@127.0.0.1:{broker.port}", "--client-id", "c-bad"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "EDGEFLEET_BROKER_PASSWORD": "wrong"},
        )  # fmt: skip
        assert r.returncode == 2 and "refused the connection" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_broker_cli_refuses_to_run_without_logins(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "edgefleet.cli", "broker", "--acl", "--port", "0"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "needs logins: --password-file" in r.stderr
