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
    """The MQTT client's side: connection result, subscription result and acks by command id (paho's thread)."""

    def __init__(self, prefix: str, pending: dict[str, CmdResult]) -> None:
        self.prefix = prefix
        self.pending = pending
        self.sent_at: dict[str, float] = {}
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.refused: str | None = None
        self.sub_refused = False
        self.done = threading.Event()
        self.lost: str | None = None  # the connection ended while we waited (why)

    def on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and not self.done.is_set():
            self.lost = str(reason_code)
            self.done.set()  # our subscription is gone with the session: waiting longer cannot help

    def on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
        self.connected.set()

    def on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.sub_refused = any(rc.is_failure for rc in reason_codes)
        self.subscribed.set()

    def on_message(self, client, userdata, msg) -> None:
        now = time.monotonic()
        try:
            device, kind = protocol.parse_topic(self.prefix, msg.topic)
            body = protocol.decode(msg.payload)
        except protocol.ProtocolError:
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

    def check_done(self) -> None:
        """Every command sent and answered (call with the lock held)."""
        if len(self.sent_at) == len(self.pending) and all(r.result != TIMEOUT for r in self.pending.values()):
            self.done.set()


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
    import ssl

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from ..broker.mosquitto import OPERATOR_USER
    from ..collect.collector import parse_broker_url

    url = parse_broker_url(broker)
    if timeout_s <= 0:
        raise EdgefleetError(f"--timeout must be more than 0 s (got {timeout_s})")
    run = secrets.token_hex(3)
    pending: dict[str, CmdResult] = {}
    bodies: list[tuple[str, bytes]] = []
    for i, dev in enumerate(devices):
        cid = f"f-{run}-{i}"
        body = command_body(action, settings, cid)
        pending[cid] = CmdResult(dev, cid, TIMEOUT, "no ack")
        bodies.append((protocol.topic(prefix, dev, "cmd"), protocol.encode(body)))
    w = _Waiter(prefix, pending)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgefleet-cmd-{run}", protocol=mqtt.MQTTv311)
    c.username_pw_set(url.username or OPERATOR_USER, password if password is not None else url.password)
    if url.tls or ca:
        try:
            c.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError, ValueError) as e:
            raise EdgefleetError(f"cannot set up TLS: {e}", hint="check --ca") from None
    c.on_connect, c.on_subscribe, c.on_message = w.on_connect, w.on_subscribe, w.on_message
    c.on_disconnect = w.on_disconnect
    where = f"{url.host}:{url.port}"
    try:
        c.connect(url.host, url.port, keepalive=30)
    except (OSError, ssl.SSLError) as e:
        raise EdgefleetError(
            f"cannot connect to broker {where}: {e}", hint="is the broker running? check --broker"
        ) from None
    c.loop_start()
    try:
        if not w.connected.wait(connect_timeout_s):
            raise EdgefleetError(f"broker {where} did not answer within {connect_timeout_s:.0f} s")
        if w.refused:
            raise EdgefleetError(
                f"broker {where} refused the operator login: {w.refused}",
                hint="check the user in --broker and the password (--password-file or $EDGEFLEET_BROKER_PASSWORD)",
            )
        c.subscribe(f"{prefix}/+/ack", qos=1)
        if not w.subscribed.wait(connect_timeout_s) or w.sub_refused:
            raise EdgefleetError(
                f"broker {where} did not let {url.username or OPERATOR_USER} read {prefix}/+/ack",
                hint="commands need the operator identity (its ACL reads acks)",
            )
        for (topic, payload), cid in zip(bodies, pending, strict=True):
            with w.lock:
                w.sent_at[cid] = time.monotonic()
            info = c.publish(topic, payload, qos=1, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                with w.lock:
                    pending[cid].result, pending[cid].detail = NOT_SENT, mqtt.error_string(info.rc)
        log.info("sent %s to %d device(s); waiting up to %.1f s for acks", action, len(pending), timeout_s)
        with w.lock:
            w.check_done()
        w.done.wait(timeout_s)
    finally:
        w.done.set()  # our own DISCONNECT is not a lost connection
        c.disconnect()
        c.loop_stop()
    with w.lock:
        if w.lost is not None:
            # With client ids pinned to user names, a second program logged in as the same operator takes the
            # session over (docs/fleet.md): say so instead of reporting silent devices.
            user = url.username or OPERATOR_USER
            for r in pending.values():
                if r.result == TIMEOUT:
                    r.detail = (
                        f"connection to the broker lost ({w.lost}); another program logged in as {user}? "
                        "give each one its own operator login"
                    )
        return [CmdResult(**r.as_dict()) for r in pending.values()]


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
