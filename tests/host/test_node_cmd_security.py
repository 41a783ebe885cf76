"""Commands cannot be replayed or pile up (issue 10 item 6), on the real node firmware (MicroPython unix port at
the board's heap) and a real mosquitto: a retained /cmd is ignored (a retained `reboot` would boot-loop the
node), a command id is run once, a burst of commands is bounded, and a packet larger than the node's receive
limit is skipped without a MemoryError and without losing the connection."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from netnode_harness import NetNode, Subscriber, wait_until


@pytest.fixture
def sub(mqtt_broker):
    s = Subscriber(mqtt_broker.host, mqtt_broker.port, "c1")
    yield s
    s.close()


@pytest.fixture
def node(tmp_path: Path, mqtt_broker):
    n = NetNode(tmp_path, "c1", mqtt_broker.url, rate_hz=2)
    yield n
    n.kill()


def _publish(mqtt_broker, payloads: list[bytes], retain: bool = False, qos: int = 1) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-cmd-sec")
    c.connect(mqtt_broker.host, mqtt_broker.port)
    c.loop_start()
    for p in payloads:
        c.publish("edgefleet/c1/cmd", p, qos=qos, retain=retain).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def _acks(sub: Subscriber, cid: str) -> list[dict]:
    return [m for m, _ in sub.topic("ack") if m.get("id") == cid]


def test_retained_replayed_and_oversized_commands(node, sub, mqtt_broker):
    _publish(mqtt_broker, [b'{"v":1,"id":"r-1","cmd":"reboot"}'], retain=True)  # waits for every subscriber
    try:
        node.start()
        wait_until(lambda: sub.topic("status"), 15, "status")
        time.sleep(1.0)
        assert node.proc.poll() is None, "a retained reboot rebooted the node:\n" + node.output()[-2000:]
        assert _acks(sub, "r-1") == [] and "ignored a retained message" in node.output()
        # the same id twice (a QoS 1 redelivery or a replay) runs once
        _publish(mqtt_broker, [b'{"v":1,"id":"d-1","cmd":"ping"}', b'{"v":1,"id":"d-1","cmd":"ping"}'])
        wait_until(lambda: _acks(sub, "d-1"), 15, "ack d-1")
        time.sleep(1.0)
        assert len(_acks(sub, "d-1")) == 1 and "id d-1 already handled" in node.output()
        # a 120 KB packet: more than the node's free heap; skipped, counted, the connection kept
        connects = node.output().count("mqtt: connected")
        _publish(mqtt_broker, [b"{" + b" " * 120_000 + b"}"])
        wait_until(lambda: "dropped a 1200" in node.output(), 15, "oversized packet skipped")
        _publish(mqtt_broker, [b'{"v":1,"id":"d-2","cmd":"ping"}'])
        wait_until(lambda: _acks(sub, "d-2"), 15, "ack d-2")
        assert node.output().count("mqtt: connected") == connects, node.output()[-2000:]
        assert "MemoryError" not in node.output()
        # a burst of commands: each one is acked or dropped as busy, none piles up
        _publish(mqtt_broker, [b'{"v":1,"id":"b-%d","cmd":"ping"}' % i for i in range(30)], qos=0)
        time.sleep(3.0)
        acked = sum(1 for i in range(30) if _acks(sub, f"b-{i}"))
        dropped = node.output().count("one dropped")
        assert acked + dropped == 30 and acked >= 1, (acked, dropped)
        assert node.proc.poll() is None
    finally:
        _publish(mqtt_broker, [b""], retain=True)  # clear the retained message for other tests
