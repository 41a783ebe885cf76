"""Alerts: rules from a TOML file evaluated against the collector's database; each alert is sent once when it
fires and once when it recovers, to a webhook (HTTP POST of JSON), an MQTT topic, or the log.

Rule kinds (docs/console.md, "Alerts"):
- offline:   the device's state is offline (last will) for at least `for_s` seconds
- seq_gap:   records missing upstream (seq gaps) exceed `max_missing` (recovers when late records fill them)
- safe_mode: the device's last online status says safe mode
- event:     an event of `event_kind` (class, anomaly, fault, forecast), optionally with `label`, arrived;
             recovers after `for_s` seconds (default 30) without another; a fault (action "begin") recovers
             at its "end" event (the sensor answers again)
- no_data:   no reading from `sensor` for `for_s` seconds from a device that is online

The engine reads only what is new since its last poll (a seq watermark per device), so a poll costs the same on a
day-old database as on a fresh one.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..collect.storage import Storage, open_storage
from ..collect.storage.base import now_ms
from ..errors import EdgefleetError
from . import data

log = logging.getLogger(__name__)

KINDS = ("offline", "seq_gap", "safe_mode", "event", "no_data")
SINK_TYPES = ("webhook", "mqtt", "log")


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    for_s: float = 0.0
    devices: str = "*"
    event_kind: str | None = None
    label: str | None = None
    sensor: str | None = None
    max_missing: int = 0
    sinks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sink:
    name: str
    type: str
    url: str | None = None
    topic: str | None = None
    broker: str | None = None


@dataclass
class Rules:
    rules: list[Rule]
    sinks: list[Sink]
    interval_s: float = 1.0


def _bad(path: Path, what: str) -> EdgefleetError:
    return EdgefleetError(f"{path}: {what}", hint="see docs/console.md, Alerts, for the rule file format")


def load_rules(path: Path | str) -> Rules:
    """Parse and check the whole rule file first: a typo is one clear error at start, not a silent non-alert."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise EdgefleetError(f"cannot read alert rules {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise _bad(path, f"not valid TOML: {e}") from None
    sinks = []
    for i, s in enumerate(doc.get("sink", [])):
        unknown = set(s) - {"name", "type", "url", "topic", "broker"}
        if unknown:
            raise _bad(path, f"sink {i + 1}: unknown keys {sorted(unknown)}")
        if s.get("type") not in SINK_TYPES:
            raise _bad(path, f"sink {i + 1}: type must be one of {', '.join(SINK_TYPES)}")
        if s["type"] == "webhook" and not str(s.get("url", "")).startswith(("http://", "https://")):
            raise _bad(path, f'sink {i + 1}: a webhook needs url = "http(s)://..."')
        if s["type"] == "mqtt" and not (s.get("topic") and s.get("broker")):
            raise _bad(path, f"sink {i + 1}: an mqtt sink needs topic and broker")
        sinks.append(Sink(name=str(s.get("name", f"sink{i + 1}")), type=s["type"], url=s.get("url"),
                          topic=s.get("topic"), broker=s.get("broker")))  # fmt: skip
    if not sinks:
        sinks = [Sink("log", "log")]
    names = {s.name for s in sinks}
    rules = []
    for i, r in enumerate(doc.get("rule", [])):
        unknown = set(r) - {f for f in Rule.__dataclass_fields__}
        if unknown:
            raise _bad(path, f"rule {i + 1}: unknown keys {sorted(unknown)}")
        if r.get("kind") not in KINDS:
            raise _bad(path, f"rule {i + 1}: kind must be one of {', '.join(KINDS)}")
        if r["kind"] == "no_data" and not r.get("sensor"):
            raise _bad(path, f'rule {i + 1}: no_data needs sensor = "NAME"')
        if r["kind"] == "event" and not r.get("event_kind"):
            raise _bad(path, f"rule {i + 1}: event needs event_kind (class, anomaly, fault, forecast)")
        sink_names = tuple(r.get("sinks", names))
        if set(sink_names) - names:
            raise _bad(path, f"rule {i + 1}: unknown sinks {sorted(set(sink_names) - names)}")
        for_s = float(r.get("for_s", 30.0 if r["kind"] == "event" else 0.0))
        rules.append(Rule(name=str(r.get("name", f"{r['kind']}-{i + 1}")), kind=r["kind"], for_s=for_s,
                          devices=str(r.get("devices", "*")), event_kind=r.get("event_kind"), label=r.get("label"),
                          sensor=r.get("sensor"), max_missing=int(r.get("max_missing", 0)),
                          sinks=sink_names))  # fmt: skip
    if not rules:
        raise _bad(path, "no [[rule]] in the file")
    return Rules(rules, sinks, float(doc.get("interval_s", 1.0)))


class Sender:
    """Delivers alert messages to the configured sinks; a failed delivery is logged as an error, never dropped
    silently."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = {s.name: s for s in sinks}
        self._mqtt: dict[str, Any] = {}

    def _mqtt_client(self, broker: str) -> Any:
        c = self._mqtt.get(broker)
        if c is None:
            import paho.mqtt.client as mqtt
            from paho.mqtt.enums import CallbackAPIVersion

            from ..wire.url import parse_broker_url

            u = parse_broker_url(broker)
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgefleet-alerts-{id(self):x}")
            if u.username:
                c.username_pw_set(u.username, u.password)
            if u.tls:
                c.tls_set()
            c.connect(u.host, u.port, keepalive=30)
            c.loop_start()
            self._mqtt[broker] = c
        return c

    def send(self, names: tuple[str, ...], msg: dict) -> None:
        body = json.dumps(msg).encode()
        for name in names:
            s = self.sinks[name]
            try:
                if s.type == "log":
                    log.warning("ALERT %s %s %s: %s", msg["state"], msg["alert"], msg["device"], msg["detail"])
                elif s.type == "webhook":
                    req = urllib.request.Request(
                        str(s.url), data=body, headers={"Content-Type": "application/json"}, method="POST"
                    )
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        resp.read()
                else:
                    info = self._mqtt_client(str(s.broker)).publish(str(s.topic), body, qos=1)
                    info.wait_for_publish(5)
            except (OSError, urllib.error.URLError, ValueError, RuntimeError) as e:
                log.error("alert %s for %s not delivered to %s (%s): %s", msg["alert"], msg["device"], name, s.type, e)

    def close(self) -> None:
        for c in self._mqtt.values():
            c.disconnect()
            c.loop_stop()


@dataclass
class _State:
    reading_seq: dict[str, tuple[str | None, int]] = field(default_factory=dict)  # device -> (log, seq)
    event_seq: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    last_rx: dict[tuple[str, str], int] = field(default_factory=dict)  # (device, sensor) -> received_ms
    last_event: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)  # (rule, dev) -> (ms, label)


class AlertEngine:
    """Evaluates the rules every `interval_s` and sends transitions (firing / resolved)."""

    def __init__(self, db: str | Storage, rules: Rules) -> None:
        self.db_url = db if isinstance(db, str) else None
        self._store = db if not isinstance(db, str) else None
        self.rules = rules
        self.sender = Sender(rules.sinks)
        self.active: dict[tuple[str, str], str] = {}  # (rule name, device) -> detail
        self.sent: list[dict] = []
        self._st = _State()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._primed = False

    # -- evaluation
    def _prime(self, store: Storage, devices: list[str]) -> None:
        """Start from now: events already stored do not fire; the newest reading per sensor is the baseline."""
        for dev in devices:
            self._st.event_seq[dev] = data.event_log(store, dev)
        self._primed = True

    def _new_data(self, store: Storage, dev: str) -> list[dict]:
        """Newest reading per sensor and the new events of `dev`, by (flash log, seq) watermark: a new log (board
        replaced, log erased) starts again at its first seq."""
        cur = data.current_log(store, dev)
        log, after = self._st.reading_seq.get(dev, (None, 0))
        if cur is not None and cur != log:
            log, after = cur, 0
        rows = store.execute(
            "SELECT sensor, max(received_ms), max(seq) FROM readings WHERE device = ? AND log = ? AND seq > ?"
            " GROUP BY sensor",
            (dev, log or "", after),
        ).fetchall()
        for sensor, rx, seq in rows:
            self._st.last_rx[(dev, sensor)] = max(int(rx), self._st.last_rx.get((dev, sensor), 0))
            after = max(after, int(seq))
        self._st.reading_seq[dev] = (log, after)
        ev_log, ev_after = self._st.event_seq.get(dev, (None, 0))
        cur_ev, _ = data.event_log(store, dev)
        if cur_ev is not None and cur_ev != ev_log:
            ev_log, ev_after = cur_ev, 0
        evs = data.events_after(store, dev, ev_log, ev_after)
        self._st.event_seq[dev] = (ev_log, evs[-1]["seq"] if evs else ev_after)
        return evs

    def evaluate(self, store: Storage, now: int | None = None) -> list[dict]:
        """One poll: returns the messages sent (also kept in `self.sent`)."""
        now = now_ms() if now is None else now
        rows = data.fleet_rows(store)
        if not self._primed:
            self._prime(store, [r["device"] for r in rows])
        active: dict[tuple[str, str], str] = {}
        for r in rows:
            dev = r["device"]
            if dev not in self._st.event_seq:
                self._st.event_seq[dev] = (None, 0)  # a device first seen after the start: all its events count
            evs = self._new_data(store, dev)
            for rule in self.rules.rules:
                if not fnmatch.fnmatchcase(dev, rule.devices):
                    continue
                detail = self._check(rule, r, evs, now)
                if detail is not None:
                    active[(rule.name, dev)] = detail
        out = []
        by_name = {r.name: r for r in self.rules.rules}
        for key, detail in active.items():
            if key not in self.active:
                out.append(self._emit(by_name[key[0]], key[1], "firing", detail, now))
        for key, detail in self.active.items():
            if key not in active:
                out.append(self._emit(by_name[key[0]], key[1], "resolved", detail, now))
        self.active = active
        return out

    def _check(self, rule: Rule, r: dict, evs: list[dict], now: int) -> str | None:
        dev = r["device"]
        if rule.kind == "offline":
            if r["state"] == "offline" and r["state_ms"] is not None and now - r["state_ms"] >= rule.for_s * 1000:
                return f"offline since {r['state_ms']} (last seen {r['last_seen_ms']})"
        elif rule.kind == "seq_gap":
            if r["missing"] > rule.max_missing:
                return f"{r['missing']} records missing upstream"
        elif rule.kind == "safe_mode":
            if r["safe_mode"]:
                return f"safe mode: {r['error'] or 'no error given'}"
        elif rule.kind == "event":
            key = (rule.name, dev)
            for e in evs:
                if e["kind"] != rule.event_kind or (rule.label is not None and e["label"] != rule.label):
                    continue
                if e["kind"] == "fault" and e["action"] == "end":  # the sensor answers again: recovered
                    self._st.last_event.pop(key, None)
                    continue
                # a fault lasts until its "end" event; other events for for_s seconds after the last one
                until = 2**62 if e["kind"] == "fault" else now + int(rule.for_s * 1000)
                where = f" on {e['sensor']}" if e["sensor"] else ""
                self._st.last_event[key] = (until, f"{e['kind']} {e['label']}{where} (seq {e['seq']})")
            last = self._st.last_event.get(key)
            if last and now < last[0]:
                return last[1]
        elif rule.kind == "no_data":
            rx = self._st.last_rx.get((dev, str(rule.sensor)))
            if rx is not None and r["state_ms"] is not None and r["uptime_s"] is not None:
                # booted again: silence counts from the boot, not from before the outage
                rx = max(rx, r["state_ms"] - int(r["uptime_s"]) * 1000)
            if rx is not None and r["state"] == "online" and now - rx >= rule.for_s * 1000:
                return f"no {rule.sensor} reading for {(now - rx) / 1000:.0f} s"
        return None

    def _emit(self, rule: Rule, dev: str, state: str, detail: str, now: int) -> dict:
        msg = {"alert": rule.name, "kind": rule.kind, "state": state, "device": dev, "detail": detail, "ts_ms": now}
        log.info("alert %s: %s on %s (%s)", state, rule.name, dev, detail)
        self.sender.send(rule.sinks, msg)
        self.sent.append(msg)
        return msg

    # -- running
    def run(self) -> None:
        store = self._store or open_storage(str(self.db_url))
        try:
            while not self._stop.is_set():
                try:
                    self.evaluate(store)
                finally:
                    store.conn.rollback()  # end the read transaction: the next poll sees new commits
                self._stop.wait(self.rules.interval_s)
        finally:
            if self._store is None:
                store.close()

    def start(self) -> AlertEngine:
        self._thread = threading.Thread(target=self._guarded, name="alerts", daemon=True)
        self._thread.start()
        return self

    def _guarded(self) -> None:
        try:
            self.run()
        except Exception:
            log.exception("the alert engine stopped")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        self.sender.close()
