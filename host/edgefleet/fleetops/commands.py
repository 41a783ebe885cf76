"""Commands to nodes: send one command to many devices over the operator's broker identity and wait for acks.

Why a command of its own beside the console's Commander: a script or an operator at a terminal needs one
answer per device and an exit status (0 only when every device answered ok), not a log of what was sent. The
acks come straight from the broker (`<prefix>/+/ack`, which the ACL lets the operator read), matched by command
id, so no collector or database needs to be running. docs/fleet.md "Commands"; messages in docs/protocol.md.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EdgefleetError
from ..wire import protocol

log = logging.getLogger(__name__)

ACTIONS = {"ping": "ping", "reboot": "reboot", "flush": "flush", "set-config": "set_config"}
DEFAULT_TIMEOUT_S = 10.0
OK, ERROR, TIMEOUT, NOT_SENT = "ok", "error", "timeout", "not sent"


@dataclass
class CmdResult:
    """One device's answer: ok, error (the node's error text), timeout (no ack in time) or not sent."""

    device: str
    cmd_id: str
    result: str
    detail: str = ""
    rtt_ms: float | None = None
    ack: dict | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` words as set_config args. VALUE is JSON when it parses as JSON (5, 0.2, true, null,
    {"env": 0.2}), else text; a dotted KEY sets inside a section (`rates.env=0.2` -> {"rates": {"env": 0.2}})."""
    if not pairs:
        raise EdgefleetError("set-config needs KEY=VALUE", hint="e.g. status_interval_s=30 or rates.env=0.5")
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise EdgefleetError(f"not KEY=VALUE: {pair!r}", hint="e.g. status_interval_s=30")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise EdgefleetError(f"{key}: {p} is set to a value and a section at once")
            node = nxt
        node[parts[-1]] = value
    return out


def command_body(action: str, settings: dict[str, Any] | None, cmd_id: str) -> dict:
    """The /cmd message for a CLI action (docs/protocol.md), checked by the protocol module."""
    cmd = ACTIONS.get(action)
    if cmd is None:
        raise EdgefleetError(f"unknown command {action!r}", hint="one of: " + ", ".join(ACTIONS))
    try:
        return protocol.command(cmd_id, cmd, settings if cmd == "set_config" else None)
    except protocol.ProtocolError as e:
        raise EdgefleetError(f"cannot send {action}: {e.reason}") from None


class _Waiter:
    """The MQTT client's side: connection result, subscription result, acks by command id and the devices' latest
    status (paho's thread). One round of commands at a time: `begin` installs its pending results."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pending: dict[str, CmdResult] = {}
        self.sent_at: dict[str, float] = {}
        self.status: dict[str, dict] = {}  # device -> its latest online status (validated)
        self.status_seen = threading.Condition()
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.refused: str | None = None
        self.sub_refused = False
        self.done = threading.Event()
        self.closing = False
        self.lost: str | None = None  # the connection ended while we waited (why)

    def begin(self, pending: dict[str, CmdResult]) -> None:
        with self.lock:
            self.pending = pending
            self.sent_at = {}
            self.done.clear()

    def on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and not self.closing:
            self.lost = str(reason_code)
            self.done.set()  # our subscription is gone with the session: waiting longer cannot help
            with self.status_seen:
                self.status_seen.notify_all()

    def on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
        self.connected.set()

    def on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.sub_refused = self.sub_refused or any(rc.is_failure for rc in reason_codes)
        self.subscribed.set()

    def on_message(self, client, userdata, msg) -> None:
        now = time.monotonic()
        try:
            device, kind = protocol.parse_topic(self.prefix, msg.topic)
            body = protocol.decode(msg.payload)
        except protocol.ProtocolError:
            return
        if kind == "status":
            self.on_status(device, body)
            return
        cid = body.get("id") if isinstance(body, dict) else None
        with self.lock:
            res = self.pending.get(cid) if isinstance(cid, str) else None
            if kind != "ack" or res is None or res.device != device or res.result != TIMEOUT:
                return  # another command's ack, a late duplicate, or something not ours
            t0 = self.sent_at.get(cid)
            res.rtt_ms = round((now - t0) * 1000, 1) if t0 is not None else None
            res.ack = body
            try:
                protocol.check_ack(body, device)
            except protocol.ProtocolError as e:
                res.result, res.detail = ERROR, f"malformed ack: {e.reason}"
            else:
                if body["ok"]:
                    res.result = OK
                    result = body.get("result")
                    res.detail = "" if result is None else json.dumps(result, separators=(",", ":"))
                else:
                    res.result, res.detail = ERROR, body["error"]
            self.check_done()

    def on_status(self, device: str, body: object) -> None:
        """Keep a device's latest online status (an offline will keeps the last online one: its ota state)."""
        if not isinstance(body, dict):
            return
        try:
            protocol.check_status(body, device)
        except protocol.ProtocolError as e:
            log.debug("ignoring a bad status from %s: %s", device, e.reason)
            return
        with self.status_seen:
            if body["state"] == "online":
                self.status[device] = body
            self.status_seen.notify_all()

    def check_done(self) -> None:
        """Every command sent and answered (call with the lock held)."""
        if len(self.sent_at) == len(self.pending) and all(r.result != TIMEOUT for r in self.pending.values()):
            self.done.set()


class OperatorLink:
    """One MQTT connection as an operator login, for everything a command or a rollout does: send commands and
    wait for their acks, publish (retained) messages, follow the devices' status.

    One connection, because the broker pins client ids to user names (`use_username_as_clientid`): a second
    connection with the same operator login would take the first one's session over."""

    def __init__(
        self,
        broker: str,
        password: str | None = None,
        prefix: str = protocol.DEFAULT_PREFIX,
        ca: str | None = None,
        connect_timeout_s: float = 10.0,
        watch_status: bool = False,
        tag: str = "cmd",
    ) -> None:
        from ..collect.collector import parse_broker_url

        self.url = parse_broker_url(broker)
        self.password = password if password is not None else self.url.password
        self.prefix = prefix
        self.ca = ca
        self.connect_timeout_s = connect_timeout_s
        self.watch_status = watch_status
        self.run = secrets.token_hex(3)
        self.tag = tag
        self.rounds = 0
        self.w = _Waiter(prefix)
        self.client = None

    @property
    def user(self) -> str:
        from ..broker.mosquitto import OPERATOR_USER

        return self.url.username or OPERATOR_USER

    @property
    def where(self) -> str:
        return f"{self.url.host}:{self.url.port}"

    def __enter__(self) -> OperatorLink:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        import ssl

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        url, w = self.url, self.w
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"edgefleet-{self.tag}-{self.run}", protocol=mqtt.MQTTv311
        )
        c.username_pw_set(self.user, self.password)
        c.max_queued_messages_set(0)
        if url.tls or self.ca:
            try:
                c.tls_set(ca_certs=self.ca, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise EdgefleetError(f"cannot set up TLS: {e}", hint="check --ca") from None
        c.on_connect, c.on_subscribe, c.on_message = w.on_connect, w.on_subscribe, w.on_message
        c.on_disconnect = w.on_disconnect
        try:
            c.connect(url.host, url.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            raise EdgefleetError(
                f"cannot connect to broker {self.where}: {e}", hint="is the broker running? check --broker"
            ) from None
        self.client = c
        c.loop_start()
        try:
            if not w.connected.wait(self.connect_timeout_s):
                raise EdgefleetError(f"broker {self.where} did not answer within {self.connect_timeout_s:.0f} s")
            if w.refused:
                raise EdgefleetError(
                    f"broker {self.where} refused the operator login: {w.refused}",
                    hint="check the user in --broker and the password (--password-file or $EDGEFLEET_BROKER_PASSWORD)",
                )
            topics = [(f"{self.prefix}/+/ack", 1)]
            if self.watch_status:
                topics.append((f"{self.prefix}/+/status", 1))
            c.subscribe(topics)
            if not w.subscribed.wait(self.connect_timeout_s) or w.sub_refused:
                raise EdgefleetError(
                    f"broker {self.where} did not let {self.user} read {' and '.join(t for t, _ in topics)}",
                    hint="commands need the operator identity (its ACL reads acks and status)",
                )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        c, self.client = self.client, None
        if c is None:
            return
        self.w.closing = True  # our own DISCONNECT is not a lost connection
        self.w.done.set()
        c.disconnect()
        c.loop_stop()

    def lost_detail(self) -> str | None:
        """Why waiting cannot help any more: the connection ended (with client ids pinned to user names, often a
        second program logged in as the same operator, which takes the session over: docs/fleet.md)."""
        if self.w.lost is None:
            return None
        return (
            f"connection to the broker lost ({self.w.lost}); another program logged in as {self.user}? "
            "give each one its own operator login"
        )

    def command(self, bodies: Sequence[tuple[str, str, dict | None]], timeout_s: float) -> list[CmdResult]:
        """Send one command per (device, cmd, args), QoS 1, never retained, and wait up to `timeout_s` after the
        last send for the acks. One result per entry, in order."""
        import paho.mqtt.client as mqtt

        if timeout_s <= 0:
            raise EdgefleetError(f"--timeout must be more than 0 s (got {timeout_s})")
        self.rounds += 1
        pending: dict[str, CmdResult] = {}
        out: list[tuple[str, bytes]] = []
        for i, (dev, cmd, args) in enumerate(bodies):
            cid = f"f-{self.run}-{self.rounds}-{i}"
            try:
                body = protocol.command(cid, cmd, args)
            except protocol.ProtocolError as e:
                raise EdgefleetError(f"cannot send {cmd}: {e.reason}") from None
            pending[cid] = CmdResult(dev, cid, TIMEOUT, "no ack")
            out.append((protocol.topic(self.prefix, dev, "cmd"), protocol.encode(body)))
        w = self.w
        w.begin(pending)
        for (topic, payload), cid in zip(out, pending, strict=True):
            with w.lock:
                w.sent_at[cid] = time.monotonic()
            info = self.client.publish(topic, payload, qos=1, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                with w.lock:
                    pending[cid].result, pending[cid].detail = NOT_SENT, mqtt.error_string(info.rc)
        log.info("sent %d command(s); waiting up to %.1f s for acks", len(pending), timeout_s)
        with w.lock:
            w.check_done()
        w.done.wait(timeout_s)
        with w.lock:
            lost = self.lost_detail()
            if lost is not None:
                for r in pending.values():
                    if r.result == TIMEOUT:
                        r.detail = lost
            return [CmdResult(**r.as_dict()) for r in pending.values()]

    def publish(self, items: Sequence[tuple[str, bytes]], retain: bool, timeout_s: float = 60.0) -> None:
        """Publish QoS 1 and wait until the broker acknowledged every message (retained chunks must be in the
        broker before an offer names them)."""
        import paho.mqtt.client as mqtt

        infos = []
        for topic, payload in items:
            info = self.client.publish(topic, payload, qos=1, retain=retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise EdgefleetError(f"cannot publish to {topic}: {mqtt.error_string(info.rc)}")
            infos.append(info)
        deadline = time.monotonic() + timeout_s
        for info in infos:
            while not info.is_published():
                lost = self.lost_detail()
                if lost is not None:
                    raise EdgefleetError(lost)
                if time.monotonic() > deadline:
                    raise EdgefleetError(
                        f"broker {self.where} did not acknowledge {len(infos)} message(s) within {timeout_s:.0f} s",
                        hint=f"may {self.user} write there? (the operator's ACL writes {self.prefix}/ota/#)",
                    )
                time.sleep(0.01)

    def statuses(self) -> dict[str, dict]:
        """The latest online status of each device seen (retained ones arrive at subscription)."""
        with self.w.status_seen:
            return dict(self.w.status)

    def wait_status(self, timeout_s: float) -> None:
        """Block until any status arrives or `timeout_s` passes (a poll loop's sleep that wakes on news)."""
        with self.w.status_seen:
            self.w.status_seen.wait(timeout_s)


def send_commands(
    broker: str,
    devices: Sequence[str],
    action: str,
    settings: dict[str, Any] | None = None,
    password: str | None = None,
    prefix: str = protocol.DEFAULT_PREFIX,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    ca: str | None = None,
    connect_timeout_s: float = 10.0,
) -> list[CmdResult]:
    """Send `action` to every device (QoS 1, never retained) as the operator of `broker` (mqtt[s]://[user@]host:
    port; user defaults to `operator`) and wait up to `timeout_s` after the last send for their acks. One result
    per device, in the order given; a device that did not answer in time is a timeout."""
    if timeout_s <= 0:
        raise EdgefleetError(f"--timeout must be more than 0 s (got {timeout_s})")
    body = command_body(action, settings, "check")  # a bad action or settings fail before connecting
    cmd, args = body["cmd"], body.get("args")
    with OperatorLink(broker, password, prefix, ca, connect_timeout_s) as link:
        results = link.command([(dev, cmd, args) for dev in devices], timeout_s)
    log.info("sent %s to %d device(s)", action, len(results))
    return results


def render_results(results: Sequence[CmdResult]) -> str:
    """The per-device table `fleet cmd` prints, with a summary line."""
    rows = [("DEVICE", "RESULT", "RTT_MS", "DETAIL")]
    for r in results:
        detail = r.detail if len(r.detail) <= 80 else r.detail[:77] + "..."
        rows.append((r.device, r.result, "-" if r.rtt_ms is None else f"{r.rtt_ms:.0f}", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join([*(row[i].ljust(widths[i]) for i in range(3)), row[3]]).rstrip() for row in rows]
    counts = {k: sum(1 for r in results if r.result == k) for k in (OK, ERROR, TIMEOUT, NOT_SENT)}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n or k == OK)
    lines.append(f"{len(results)} device(s): {summary}")
    return "\n".join(lines)


def all_ok(results: Sequence[CmdResult]) -> bool:
    return bool(results) and all(r.result == OK for r in results)
