"""Home Assistant MQTT discovery for the fleet (`edgefleet homeassistant`).

A bridge on the broker: it reads the nodes' telemetry, events and status, and publishes, retained under the
discovery prefix (default `homeassistant`), one HA device per node with
- a `sensor` per channel (device_class, unit_of_measurement, state_class from CHANNELS),
- a `sensor` with the model's last class and a `binary_sensor` (device_class problem) for anomaly events,
each with availability from the node's own status topic (`<prefix>/<dev>/status`, value_json.state). States are
republished, retained, under `<state prefix>/<dev>/...` because a node's telemetry message is a batch of records
that an HA template cannot pick one sensor's last value from. Unique ids are `edgefleet_<dev>_<entity>`:
the same after any restart. `remove(device)` publishes an empty retained config for each of the device's
entities (the documented way to delete them from HA) and clears its retained states.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..errors import EdgefleetError
from ..wire import protocol

log = logging.getLogger(__name__)

DEFAULT_DISCOVERY = "homeassistant"
DEFAULT_STATE_PREFIX = "edgefleet-ha"
ANOMALY_OFF_S = 60

# channel -> (device_class or None, unit): the node's units (firmware/node/hw drivers; docs/sensors.md)
CHANNELS: dict[str, tuple[str | None, str | None]] = {
    "temperature": ("temperature", "°C"),
    "humidity": ("humidity", "%"),
    "pressure": ("atmospheric_pressure", "hPa"),
    "ax": (None, "g"),
    "ay": (None, "g"),
    "az": (None, "g"),
    "gx": (None, "°/s"),
    "gy": (None, "°/s"),
    "gz": (None, "°/s"),
}
ID_RE = re.compile(r"[^a-zA-Z0-9_-]")


def _oid(s: str) -> str:
    return ID_RE.sub("_", s)


@dataclass
class DeviceInfo:
    fw: str | None = None
    board: str | None = None
    model: str | None = None


class Discovery:
    """Builds the discovery topics and payloads (pure functions of the device and channel names)."""

    def __init__(self, prefix: str = protocol.DEFAULT_PREFIX, discovery: str = DEFAULT_DISCOVERY,
                 state_prefix: str = DEFAULT_STATE_PREFIX) -> None:  # fmt: skip
        self.prefix, self.discovery, self.state_prefix = prefix, discovery, state_prefix

    def node_id(self, dev: str) -> str:
        return f"edgefleet_{_oid(dev)}"

    def topic(self, component: str, dev: str, obj: str) -> str:
        return f"{self.discovery}/{component}/{self.node_id(dev)}/{_oid(obj)}/config"

    def state_topic(self, dev: str, what: str) -> str:
        return f"{self.state_prefix}/{dev}/{what}"

    def _common(self, dev: str, obj: str, name: str, info: DeviceInfo) -> dict:
        device: dict[str, Any] = {"identifiers": [self.node_id(dev)], "name": dev, "manufacturer": "edgefleet",
                                  "model": info.board or "ESP32 sensor node"}  # fmt: skip
        if info.fw:
            device["sw_version"] = info.fw
        return {
            "name": name,
            "unique_id": f"{self.node_id(dev)}_{_oid(obj)}",
            "object_id": f"{self.node_id(dev)}_{_oid(obj)}",
            "availability_topic": protocol.topic(self.prefix, dev, "status"),
            "availability_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
            "origin": {"name": "edgefleet", "sw_version": __version__},
        }

    def channel(self, dev: str, sensor: str, ch: str, info: DeviceInfo) -> tuple[str, dict]:
        obj = f"{sensor}_{ch}"
        cfg = self._common(dev, obj, f"{sensor} {ch}", info)
        cls, unit = CHANNELS.get(ch, (None, None))
        if cls:
            cfg["device_class"] = cls
        if unit:
            cfg["unit_of_measurement"] = unit
        cfg["state_class"] = "measurement"
        cfg["state_topic"] = self.state_topic(dev, sensor)
        cfg["value_template"] = "{{ value_json." + ch + " }}"
        return self.topic("sensor", dev, obj), cfg

    def model_class(self, dev: str, info: DeviceInfo) -> tuple[str, dict]:
        cfg = self._common(dev, "class", "activity", info)
        cfg["state_topic"] = self.state_topic(dev, "class")
        cfg["icon"] = "mdi:tag"
        return self.topic("sensor", dev, "class"), cfg

    def anomaly(self, dev: str, info: DeviceInfo) -> tuple[str, dict]:
        cfg = self._common(dev, "anomaly", "anomaly", info)
        cfg["state_topic"] = self.state_topic(dev, "anomaly")
        cfg["device_class"] = "problem"
        cfg["payload_on"] = "ON"
        cfg["payload_off"] = "OFF"
        cfg["off_delay"] = ANOMALY_OFF_S
        return self.topic("binary_sensor", dev, "anomaly"), cfg


class HomeAssistantBridge:
    """Subscribes to the fleet's topics and keeps Home Assistant's discovery and states up to date."""

    def __init__(self, broker: str, prefix: str = protocol.DEFAULT_PREFIX, discovery: str = DEFAULT_DISCOVERY,
                 state_prefix: str = DEFAULT_STATE_PREFIX, client_id: str = "edgefleet-homeassistant") -> None:  # fmt: skip
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from ..wire.url import parse_broker_url

        self.d = Discovery(prefix, discovery, state_prefix)
        self.prefix = prefix
        self.url = parse_broker_url(broker)
        self.info: dict[str, DeviceInfo] = {}
        self.announced: dict[str, set[str]] = {}  # device -> config topics published
        self.removed: set[str] = set()  # removed in this run: not announced again while it still sends
        self._lock = threading.Lock()
        self._connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if self.url.username:
            c.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            c.tls_set()
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self.client = c

    # -- MQTT
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the Home Assistant bridge: %s", reason_code)
            return
        client.subscribe([(protocol.topic_filter(self.prefix, k), 1) for k in ("status", "telemetry", "event")])
        self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            m = protocol.parse(self.prefix, msg.topic, msg.payload)
        except protocol.ProtocolError as e:
            log.debug("ignored %s: %s", msg.topic, e.reason)
            return
        try:
            self.handle(m)
        except Exception:
            log.exception("Home Assistant bridge: %s", msg.topic)

    def _publish(self, topic: str, payload: Any, retain: bool = True) -> None:
        body = payload if isinstance(payload, str | bytes) else json.dumps(payload, ensure_ascii=False)
        self.client.publish(topic, body, qos=1, retain=retain)

    def _announce(self, dev: str, topic_cfg: tuple[str, dict]) -> None:
        topic, cfg = topic_cfg
        done = self.announced.setdefault(dev, set())
        if topic in done:
            return
        self._publish(topic, cfg)
        done.add(topic)
        log.info("Home Assistant: announced %s", topic)

    def handle(self, m: protocol.Message) -> None:
        dev = m.device
        if dev in self.removed:
            return
        with self._lock:
            info = self.info.setdefault(dev, DeviceInfo())
            if m.kind == "status":
                if m.body.get("state") == "online":
                    new = DeviceInfo(m.body.get("fw"), m.body.get("board"), m.body.get("model"))
                    if new != info:
                        self.info[dev] = new
                        self.announced.pop(dev, None)  # sw_version changed: publish the configs again
                return
            if m.kind == "telemetry":
                last: dict[str, dict] = {}
                for seq_ts_flags_sensor_vals in m.records:
                    _seq, _ts, _flags, sensor, vals = seq_ts_flags_sensor_vals
                    last.setdefault(sensor, {}).update(vals)
                for sensor, vals in last.items():
                    for ch in vals:
                        self._announce(dev, self.d.channel(dev, sensor, ch, info))
                    self._publish(self.d.state_topic(dev, sensor), vals)
            elif m.kind == "event":
                for _seq, _ts, _flags, kind, label, *_rest in m.records:
                    if kind == "class":
                        self._announce(dev, self.d.model_class(dev, info))
                        self._publish(self.d.state_topic(dev, "class"), label)
                    elif kind == "anomaly":
                        self._announce(dev, self.d.anomaly(dev, info))
                        self._publish(self.d.state_topic(dev, "anomaly"), "ON", retain=False)

    def start(self, timeout: float = 10) -> HomeAssistantBridge:
        try:
            self.client.connect(self.url.host, self.url.port, keepalive=30)
        except OSError as e:
            raise EdgefleetError(f"cannot connect to broker {self.url.host}:{self.url.port}: {e}") from None
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.stop()
            raise EdgefleetError(f"broker {self.url.host}:{self.url.port} gave no session in {timeout:.0f} s")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def remove(self, dev: str, wait_s: float = 1.0) -> list[str]:
        """Delete `dev` from Home Assistant: an empty retained payload on each of its discovery topics (those we
        announced and those retained on the broker from an earlier run), and its retained states cleared."""
        found: set[str] = set(self.announced.get(dev, set()))
        pattern = f"{self.d.discovery}/+/{self.d.node_id(dev)}/+/config"
        states: set[str] = set()

        def on_retained(client, userdata, msg) -> None:
            if msg.retain and msg.payload:
                (found if msg.topic.endswith("/config") else states).add(msg.topic)

        self.client.message_callback_add(pattern, on_retained)
        self.client.message_callback_add(f"{self.d.state_prefix}/{dev}/+", on_retained)
        self.client.subscribe([(pattern, 1), (f"{self.d.state_prefix}/{dev}/+", 1)])
        time.sleep(wait_s)  # retained messages arrive right after SUBACK
        self.client.unsubscribe([pattern, f"{self.d.state_prefix}/{dev}/+"])
        self.client.message_callback_remove(pattern)
        self.client.message_callback_remove(f"{self.d.state_prefix}/{dev}/+")
        infos = [self.client.publish(t, b"", qos=1, retain=True) for t in sorted(found | states)]
        for i in infos:
            i.wait_for_publish(5)
        with self._lock:
            self.announced.pop(dev, None)
            self.info.pop(dev, None)
            self.removed.add(dev)
        log.info("Home Assistant: removed %s (%d entities)", dev, len(found))
        return sorted(found)
