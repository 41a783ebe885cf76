"""The collector's paho subclass: same messages, same acknowledgements as the stock client, on a real mosquitto."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.collect import mqttfast


def test_shared_table_properties_unpack_like_paho():
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("k", "v")
    props.MessageExpiryInterval = 60
    props.ContentType = "application/json"
    buf = props.pack() + b"rest"
    ours, n = mqttfast.SharedTableProperties(PacketTypes.PUBLISH).unpack(buf)
    theirs, m = Properties(PacketTypes.PUBLISH).unpack(buf)
    assert n == m == len(buf) - 4
    assert ours.json() == theirs.json() == props.json()
    empty, n = mqttfast.SharedTableProperties(PacketTypes.PUBLISH).unpack(b"\x00payload")
    assert n == 1 and empty.isEmpty() and empty.json() == {}


def _subscriber(broker, client_id: str, got: list, done: threading.Event, want: int) -> mqttfast.FastClient:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    c = mqttfast.FastClient(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True)

    def on_message(client, userdata, msg):
        got.append((msg.topic, msg.payload, msg.mid, msg.properties.json()))
        if len(got) >= want:
            done.set()

    c.on_message = on_message
    c.on_connect = lambda client, *a: client.subscribe("fast/#", qos=1)
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    c.loop_start()
    return c


@pytest.mark.skipif(not mqttfast.FAST_IO, reason="installed paho-mqtt lacks the private I/O methods")
def test_fast_client_receives_everything_and_ack_many_acknowledges(mqtt_broker):
    n = 3000  # many packets per recv(): the buffer must hand every one, split or whole, to paho
    got: list = []
    done = threading.Event()
    sub = _subscriber(mqtt_broker, "fast-sub", got, done, n)
    time.sleep(0.5)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fast-pub", protocol=mqtt.MQTTv5)
    pub.connect(mqtt_broker.host, mqtt_broker.port)
    pub.loop_start()
    with_props = Properties(PacketTypes.PUBLISH)
    with_props.UserProperty = ("k", "v")
    infos = [
        pub.publish(
            f"fast/{i % 7}",
            bytes([i % 251]) * (1 + i * 37 % 3000),
            qos=1,
            properties=with_props if i % 100 == 0 else None,
        )
        for i in range(n)
    ]
    acked = 0
    deadline = time.monotonic() + 30
    while not done.is_set() and time.monotonic() < deadline:  # the broker holds back what is past its in-flight limit
        upto = len(got)
        sub.ack_many([mid for _, _, mid, _ in got[acked:upto]])
        acked = upto
        time.sleep(0.01)
    for info in infos:
        info.wait_for_publish(30)
    assert done.is_set(), f"received {len(got)} of {n}"
    assert [p for _, p, _, _ in got] == [bytes([i % 251]) * (1 + i * 37 % 3000) for i in range(n)]
    assert all(props == {"UserProperty": [("k", "v")]} for _, _, _, props in got[::100])
    sub.ack_many([mid for _, _, mid, _ in got[acked:]])
    time.sleep(0.5)
    sub.disconnect()
    sub.loop_stop()
    # Same session again: acknowledged messages are not redelivered.
    again: list = []
    sub = _subscriber(mqtt_broker, "fast-sub", again, threading.Event(), 1)
    time.sleep(1.5)
    sub.disconnect()
    sub.loop_stop()
    pub.disconnect()
    pub.loop_stop()
    assert again == []


@pytest.mark.skipif(not mqttfast.FAST_IO, reason="installed paho-mqtt lacks the private I/O methods")
def test_unacknowledged_messages_are_redelivered(mqtt_broker):
    got: list = []
    done = threading.Event()
    sub = _subscriber(mqtt_broker, "fast-sub2", got, done, 50)
    time.sleep(0.5)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fast-pub2", protocol=mqtt.MQTTv5)
    pub.connect(mqtt_broker.host, mqtt_broker.port)
    pub.loop_start()
    for i in range(50):
        pub.publish(f"fast/x{i}", b"p", qos=1).wait_for_publish(10)
    assert done.wait(10)
    sub.ack_many([mid for _, _, mid, _ in got[:20]])
    time.sleep(0.5)
    sub.disconnect()
    sub.loop_stop()
    again: list = []
    done2 = threading.Event()
    sub = _subscriber(mqtt_broker, "fast-sub2", again, done2, 30)
    assert done2.wait(10), f"redelivered {len(again)} of 30"
    time.sleep(0.5)
    sub.disconnect()
    sub.loop_stop()
    pub.disconnect()
    pub.loop_stop()
    assert sorted(t for t, _, _, _ in again) == sorted(f"fast/x{i}" for i in range(20, 50))


@pytest.mark.skipif(not mqttfast.FAST_IO, reason="installed paho-mqtt lacks the private I/O methods")
def test_topic_callbacks_still_route(mqtt_broker):
    """The direct on_message path is only taken while no per-topic callback exists."""
    got: list = []
    special: list = []
    done = threading.Event()
    sub = _subscriber(mqtt_broker, "fast-sub3", got, done, 2)
    sub.message_callback_add("fast/special", lambda client, userdata, msg: special.append(msg.payload))
    time.sleep(0.5)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fast-pub3", protocol=mqtt.MQTTv5)
    pub.connect(mqtt_broker.host, mqtt_broker.port)
    pub.loop_start()
    for t, p in (("fast/a", b"1"), ("fast/special", b"2"), ("fast/b", b"3")):
        pub.publish(t, p, qos=1).wait_for_publish(10)
    assert done.wait(10)
    time.sleep(0.3)
    sub.disconnect()
    sub.loop_stop()
    pub.disconnect()
    pub.loop_stop()
    assert [(t, p) for t, p, _, _ in got] == [("fast/a", b"1"), ("fast/b", b"3")]
    assert special == [b"2"]
