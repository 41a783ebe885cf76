"""The HIL broker runs the fleet's secure configuration (docs/security.md), not an open test broker: the node
under test is checked against the same logins and ACL it meets in a real fleet."""

from __future__ import annotations

import json
import secrets
import time

import paho.mqtt.client as mqtt
import pytest

pytestmark = pytest.mark.hil


def connack_code(host: str, port: int, username: str | None = None, password: str | None = None) -> int:
    """Connect once (MQTT 3.1.1, as a node does) and return the CONNACK return code (0 = accepted)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{secrets.token_hex(3)}")
    if username is not None:
        c.username_pw_set(username, password)
    got: list = []
    c.on_connect = lambda cl, ud, flags, rc, props: got.append(rc)
    c.connect(host, port, keepalive=10)
    end = time.monotonic() + 10
    while not got and time.monotonic() < end:
        c.loop(0.1)
    c.disconnect()
    assert got, "no CONNACK within 10 s"
    return got[0].value


def test_hil_broker_refuses_strangers_and_confines_devices(hil_broker, collector):
    host, port = hil_broker.host, hil_broker.port
    # no login, or a wrong password: refused (5 = not authorised in MQTT 3.1.1)
    assert connack_code(host, port) != 0, "the HIL broker accepts anonymous clients"
    assert connack_code(host, port, "collector", "wrong-password") != 0
    password = hil_broker.add_device("hil-sec-a")
    hil_broker.add_device("hil-sec-b")
    assert connack_code(host, port, "hil-sec-a", password + "x") != 0
    assert connack_code(host, port, "hil-sec-a", password) == 0

    # device a publishes under b's id, on /cmd and /stored, then once on its own telemetry (allowed): the broker
    # handles one client's publishes in order, so when the last one reaches the collector identity's subscriber,
    # any of the others it had let through would have arrived before it
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hil-sec-a")
    dev.username_pw_set("hil-sec-a", password)
    dev.connect(host, port)
    dev.loop_start()
    forged = [
        ("edgefleet/hil-sec-b/telemetry", False),
        ("edgefleet/hil-sec-b/status", True),
        ("edgefleet/hil-sec-b/cmd", False),
        ("edgefleet/hil-sec-a/cmd", False),
        ("edgefleet/hil-sec-b/stored", False),
        ("edgefleet/hil-sec-a/stored", False),
    ]
    try:
        for topic, retain in forged:
            dev.publish(topic, json.dumps({"forged": topic}), qos=1, retain=retain).wait_for_publish(10)
        dev.publish("edgefleet/hil-sec-a/telemetry", b'{"own": true}', qos=1).wait_for_publish(10)
        collector.wait_for("/hil-sec-a/telemetry", timeout=10)
    finally:
        dev.loop_stop()
        dev.disconnect()
    # what the two devices' topics carried live (retained copies delivered at subscribe time are older
    # messages on a broker that outlives the test: an external one from --hil-config)
    got = [t for t, _, retained in collector.messages if not retained and t.split("/")[1] in ("hil-sec-a", "hil-sec-b")]
    assert got == ["edgefleet/hil-sec-a/telemetry"], f"the broker let a device publish elsewhere: {got}"
