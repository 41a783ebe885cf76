"""A protocol-level node that keeps the node's end-to-end obligations (protocol v2), for cluster tests and the
scale benchmark: it logs records (seq 1, 2, ...) in memory as its flash log, publishes them at QoS 1, frees
them only when a `stored` ack covers them, and republishes what is not stored after `stored_timeout_s` and after
every reconnect. Each connect publishes a retained online status whose `reconnects` counter `fleet status` shows.

Not firmware: many of these run in one process (one paho thread each), which is what a load test needs.
"""

from __future__ import annotations

import json
import secrets
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..wire import protocol
from .fleetsim import online_status, reading


class ReliableNode:
    def __init__(
        self,
        device: str,
        host: str,
        port: int,
        password: str | None = None,
        prefix: str = protocol.DEFAULT_PREFIX,
        stored_timeout_s: float = 5.0,
    ) -> None:
        self.device, self.prefix = device, prefix
        self.log_id = secrets.token_hex(4)
        self.stored_timeout_s = stored_timeout_s
        self.logged: dict[int, float] = {}  # seq -> monotonic time it was logged (the "flash log")
        self.stored: dict[int, float] = {}  # seq -> monotonic time its `stored` ack arrived
        self.sent_at: dict[int, float] = {}
        self.reconnects = 0
        self.disconnects: list[tuple[float, str]] = []  # (monotonic time, reason) of every lost connection
        self.republished = 0
        self._connects = 0
        self._lock = threading.Lock()
        self._seq = 0
        self.connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device}-{self.log_id}", clean_session=True)
        if password is not None:
            c.username_pw_set(device, password)
        c.max_inflight_messages_set(100)
        c.reconnect_delay_set(0.2, 2)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        off = protocol.offline_status(device)
        c.will_set(protocol.topic(prefix, device, "status"), protocol.encode(off), qos=1, retain=True)
        self.client = c
        c.connect_async(host, port, keepalive=10)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        self._connects += 1
        self.reconnects = self._connects - 1
        client.subscribe(protocol.topic(self.prefix, self.device, "stored"), qos=1)
        status = online_status(
            self.device, self.log_id, seq=self._connects, counters={"logged": self._seq, "reconnects": self.reconnects}
        )
        client.publish(protocol.topic(self.prefix, self.device, "status"), protocol.encode(status), qos=1, retain=True)
        self.connected.set()
        if self._connects > 1:
            self.resend(force=True)  # after a reconnect: everything above the stored mark again

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.disconnects.append((round(time.monotonic(), 2), str(reason_code)))

    def _on_message(self, client, userdata, msg) -> None:
        try:
            log, ranges = protocol.check_stored(json.loads(msg.payload))
        except Exception:
            return
        if log != self.log_id:
            return
        now = time.monotonic()
        with self._lock:
            for a, b in ranges:
                for s in range(a, b + 1):
                    if s in self.logged and s not in self.stored:
                        self.stored[s] = now

    def log_and_publish(self, count: int = 1) -> None:
        """Log `count` new records and publish them in one telemetry message."""
        now = time.monotonic()
        with self._lock:
            first = self._seq + 1
            self._seq += count
            for s in range(first, self._seq + 1):
                self.logged[s] = now
        self._publish(list(range(first, first + count)))

    def _publish(self, seqs: list[int]) -> None:
        recs = [reading(s, 1_764_180_000_000 + s * 1000) for s in seqs]
        payload = protocol.encode(protocol.telemetry(self.device, recs, log=self.log_id))
        now = time.monotonic()
        for s in seqs:
            self.sent_at[s] = now
        self.client.publish(protocol.topic(self.prefix, self.device, "telemetry"), payload, qos=1)

    def resend(self, force: bool = False) -> int:
        """Republish the unstored records older than stored_timeout_s (all of them with force), 20 a message."""
        now = time.monotonic()
        with self._lock:
            due = [
                s
                for s in self.logged
                if s not in self.stored and (force or now - self.sent_at.get(s, 0) >= self.stored_timeout_s)
            ]
        for i in range(0, len(due), 20):
            self._publish(due[i : i + 20])
        self.republished += len(due)
        return len(due)

    def unstored(self) -> int:
        with self._lock:
            return len(self.logged) - len(self.stored)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
