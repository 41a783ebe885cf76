"""Publishers that speak the nodes' payload format, for collector tests and the benchmark.

A `Publisher` bounds its in-flight QoS 1 messages (paho silently dropped everything past 65,535 queued in our
measurement: packet ids are 16 bits), and records the publish time of each message for latency figures.
"""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..wire import protocol

ENV_CHANNELS = ("temperature", "humidity", "pressure")
LOG = "0a1b2c3d"  # the flash-log id the simulated nodes send (v2)

# Valid messages for tests and the benchmark are built here and in protocol's builders, never as JSON literals
# scattered over the tests, so that a protocol change touches one place.


def reading(seq: int, ts: int, sensor: str = "env") -> dict:
    return {
        "seq": seq,
        "ts": ts,
        "sensor": sensor,
        "flags": 0,
        "vals": {"temperature": 20.0 + (seq % 100) / 10, "humidity": 40.5 + seq % 7, "pressure": 1013.25},
    }


def event(seq: int, ts: int = 1_764_180_000_000, kind: str = "class", label: str = "walking", **kw) -> dict:
    rec = {"seq": seq, "ts": ts, "flags": 0, "kind": kind, "label": label, "score": 0.9, "model": "m1",
           "action": None, "sensor": None}  # fmt: skip
    rec.update(kw)
    return rec


def online_status(device: str, log: str | None = LOG, seq: int = 1, **kw) -> dict:
    body = {"v": protocol.VERSION, "dev": device, "state": "online", "ts": 1_764_180_000_000, "fw": "0.1.0",
            "board": "sim", "model": None, "uptime_s": 5, "heap_free": 60000, "boot": 1, "seq": seq,
            "safe_mode": False, "error": None, "counters": {"sampled": 10, "logged": 10}, "e_buffer": 1.0,
            "r_noise": 0.0}  # fmt: skip
    if log is None:
        body["v"] = 1
    else:
        body["log"] = log
    body.update(kw)
    return body


def ack(device: str, cid: str | None = "c-1", ok: bool = True, **kw) -> dict:
    body = {"v": protocol.VERSION, "dev": device, "id": cid, "ok": ok, "result": {}}
    if not ok:
        body["error"] = "failed"
    body.update(kw)
    return body


def telemetry_payload(
    device: str, first_seq: int, count: int, ts0: int = 1_764_180_000_000, log: str | None = LOG
) -> bytes:
    recs = [reading(s, ts0 + s * 100) for s in range(first_seq, first_seq + count)]
    return protocol.encode(protocol.telemetry(device, recs, log=log))


def event_payload(device: str, recs: list[dict], log: str | None = LOG) -> bytes:
    return protocol.encode(protocol.events(device, recs, log=log))


class Publisher:
    """One MQTT 3.1.1 client publishing at QoS 1 with at most `inflight` unacknowledged messages."""

    def __init__(self, host: str, port: int, client_id: str, inflight: int = 200, will_device: str | None = None):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self._sem = threading.BoundedSemaphore(inflight)
        self._acked = 0
        self.client.on_publish = self._on_publish
        if will_device:
            t = protocol.topic(protocol.DEFAULT_PREFIX, will_device, "status")
            self.client.will_set(t, protocol.encode(protocol.offline_status(will_device)), qos=1, retain=True)
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acked += 1
        self._sem.release()

    def publish(self, topic: str, payload: bytes, retain: bool = False, timeout: float = 60) -> None:
        if not self._sem.acquire(timeout=timeout):
            raise TimeoutError("publisher stalled: no PUBACK within timeout")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            self._sem.release()
            raise RuntimeError(f"publish failed: {info.rc}")

    def drain(self, timeout: float = 120) -> None:
        """Wait until every published message was acknowledged by the broker."""
        deadline = time.monotonic() + timeout
        for _ in range(self._sem._initial_value):  # type: ignore[attr-defined]
            if not self._sem.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError("publisher did not drain")
        for _ in range(self._sem._initial_value):  # type: ignore[attr-defined]
            self._sem.release()

    def close(self, clean: bool = True) -> None:
        if clean:
            self.client.disconnect()
        else:
            self.client.socket().close() if self.client.socket() else None
        self.client.loop_stop()


class StoredListener:
    """Listens as the nodes do to `<prefix>/+/stored` (MQTT 5, to see which collector sent each ack: the
    collector tags its `stored` messages with the user property `collector` = its client id)."""

    def __init__(self, host: str, port: int, prefix: str = protocol.DEFAULT_PREFIX) -> None:
        self.acks: list[tuple[str, str, list[tuple[int, int]], str | None, float]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"stored-listener-{id(self)}",
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect(host, port, keepalive=10)
        self.client.subscribe(protocol.topic_filter(prefix, "stored"), qos=1)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise TimeoutError("stored listener did not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        device = msg.topic.split("/")[-2]
        log, ranges = protocol.check_stored(json.loads(msg.payload))
        who = dict(getattr(msg.properties, "UserProperty", []) or []).get("collector")
        with self._lock:
            self.acks.append((device, log, ranges, who, time.monotonic()))

    def seqs(self, collector: str | None = None) -> dict[tuple[str, str], set[int]]:
        """(device, log) -> every seq acked (by `collector` only, if given)."""
        out: dict[tuple[str, str], set[int]] = {}
        with self._lock:
            for device, log, ranges, who, _t in self.acks:
                if collector is None or who == collector:
                    got = out.setdefault((device, log), set())
                    for a, b in ranges:
                        got.update(range(a, b + 1))
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
