"""The fleet broker config and process: starts on loopback, keeps queued QoS 1 messages across a restart."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.broker.mosquitto import MAX_QUEUED_MESSAGES, render_config


def test_config_is_fleet_sized(tmp_path) -> None:
    conf = render_config(1884, tmp_path)
    assert "listener 1884 127.0.0.1" in conf
    assert "persistence true" in conf
    assert f"max_queued_messages {MAX_QUEUED_MESSAGES}" in conf
    assert MAX_QUEUED_MESSAGES >= 20 * 2 * 600  # 10 minutes of the demo fleet


def _client(broker, cid: str, clean: bool) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean)
    c.connect(broker.host, broker.port)
    return c


def test_queued_messages_survive_broker_restart(mqtt_broker) -> None:
    got: list[bytes] = []
    sub = _client(mqtt_broker, "collector-test", clean=False)
    sub.on_message = lambda c, u, m: got.append(m.payload)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.loop_start()
    sub.subscribe("edgefleet/+/telemetry", qos=1)
    assert subscribed.wait(5)
    sub.disconnect()
    sub.loop_stop()
    pub = _client(mqtt_broker, "pub", clean=True)
    pub.loop_start()
    infos = [pub.publish("edgefleet/n1/telemetry", f"m{i}", qos=1) for i in range(50)]
    for info in infos:
        info.wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()
    mqtt_broker.restart()
    sub2 = _client(mqtt_broker, "collector-test", clean=False)
    sub2.on_message = lambda c, u, m: got.append(m.payload)
    sub2.loop_start()
    deadline = time.monotonic() + 10
    while len(got) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    sub2.disconnect()
    sub2.loop_stop()
    assert sorted(got, key=lambda p: int(p[1:])) == [f"m{i}".encode() for i in range(50)]
