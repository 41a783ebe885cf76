"""Running network-side nodes (tests/firmware/netnode.py on the MicroPython unix port) and watching what they
publish with a paho-mqtt subscriber on the same real mosquitto. Shared by the node network tests."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet import procs
from edgefleet.board.boards import load_board
from edgefleet.board.node import REBOOT_EXIT
from edgefleet.runtime import find_micropython, micropython_env, unix_heap_bytes

HERE = Path(__file__).parent
HELPER = HERE.parent / "firmware" / "netnode.py"  # MicroPython, beside the firmware tests
SIM = load_board("sim")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
LOG_ID = re.compile(r"^[0-9a-f]{8}$")
EVENT_KINDS = {"class", "anomaly", "forecast", "fault"}


class NetNode:
    """One node process; restartable on the same flash image, like a board after a reset or power cut."""

    def __init__(
        self,
        workdir: Path,
        dev: str,
        url: str,
        rate_hz: float = 20,
        flush_bytes: int = 256,
        flush_s: float = 0.5,
        event_every: int = 0,
    ) -> None:
        # The one heap policy (runtime.unix_heap_bytes): the board's heap plus the sim machinery (this node
        # runs the simulated flash, not the simulated sensors) and, over TLS, the mbedtls buffers the unix port
        # takes from the MicroPython heap; scaled on a 64-bit interpreter.
        self.heap = unix_heap_bytes(SIM.heap_bytes, sim_machinery=True, tls=url.startswith("mqtts://"))
        self.image = workdir / f"{dev}.img"
        self.dev = dev
        self.url = url
        self.args = [str(x) for x in (rate_hz, flush_bytes, flush_s, event_every)]
        self.out = workdir / f"{dev}.log"
        self.proc: subprocess.Popen | None = None
        self.starts: list[tuple[int, int]] = []  # (seq, acked) the log mounted with, per start
        self.label: str | None = None  # the label of the node's event records (default "high")

    def argv(self) -> list[str]:
        return [
            find_micropython(),
            "-X",
            f"heapsize={self.heap}",
            str(HELPER),
            str(SIM.path),
            str(self.image),
            self.dev,
            self.url,
            *self.args,
        ]

    def start(self) -> NetNode:
        n_before = self._banner_count()
        with self.out.open("a") as f:
            self.proc = procs.spawn(  # dies with the test process, even a SIGKILLed one
                self.argv(),
                env=micropython_env(
                    extra_path=[HELPER.parent], **({"NETNODE_LABEL": self.label} if self.label else {})
                ),
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: self._banner_count() > n_before or self.proc.poll() is not None, 20, "node start")
        assert self.proc.poll() is None, self.output()[-3000:]
        m = re.findall(r"netnode: \S+ seq=(\d+) acked=(\d+)", self.output())[-1]
        self.starts.append((int(m[0]), int(m[1])))
        return self

    def _banner_count(self) -> int:
        return self.output().count("netnode: ") if self.out.exists() else 0

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int:
        """Ctrl-C: the node closes its log cleanly."""
        if not self.proc:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def wait_exit(self, timeout: float) -> int:
        assert self.proc
        return self.proc.wait(timeout)


class Subscriber:
    """A persistent-session QoS 1 subscriber to everything a device publishes, with reconnects."""

    def __init__(self, host: str, port: int, dev: str, prefix: str = "edgefleet", ack_stored: bool = True) -> None:
        self.dev = dev
        self.prefix = prefix
        # Stand-in for the collector's end-to-end acks: answer each telemetry/event message with a `stored`
        # message for its seqs (docs/protocol.md), as a collector does after its COMMIT. Off: the node gets none.
        self.ack_stored = ack_stored
        self.stored_sent = 0
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{dev}", clean_session=False, protocol=mqtt.MQTTv311
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        wait_until(lambda: self.client.is_connected(), 10, "subscriber connect")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(f"{self.prefix}/{self.dev}/#", qos=1)

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
        if self.ack_stored and (msg.topic.endswith("/telemetry") or msg.topic.endswith("/event")):
            body = json.loads(msg.payload)
            seqs = [r["seq"] for r in body["recs"]]
            ack = {"v": 2, "log": body.get("log", ""), "ranges": [[min(seqs), max(seqs)]]}
            client.publish(f"{self.prefix}/{self.dev}/stored", json.dumps(ack), qos=1)
            self.stored_sent += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def topic(self, leaf: str) -> list[tuple[dict, bool]]:
        with self.lock:
            msgs = list(self.messages)
        return [(json.loads(p), r) for t, p, r in msgs if t == f"{self.prefix}/{self.dev}/{leaf}"]

    def records(self) -> tuple[dict[int, dict], list[int]]:
        """(seq -> record, seqs in order of first arrival); a redelivered seq must carry the same record."""
        by_seq: dict[int, dict] = {}
        order: list[int] = []
        for leaf in ("telemetry", "event"):
            for msg, _ in self.topic(leaf):
                check_records_message(msg, self.dev, leaf)
        with self.lock:
            msgs = list(self.messages)
        for t, p, _ in msgs:
            if t.endswith("/telemetry") or t.endswith("/event"):
                for rec in json.loads(p)["recs"]:
                    seq = rec["seq"]
                    if seq in by_seq:
                        assert by_seq[seq] == rec, f"seq {seq} reused: {by_seq[seq]} vs {rec}"
                    else:
                        by_seq[seq] = rec
                        order.append(seq)
        return by_seq, order

    def max_seq(self) -> int:
        by_seq, _ = self.records()
        return max(by_seq, default=0)


def check_records_message(msg: dict, dev: str, leaf: str) -> None:
    """docs/protocol.md: telemetry and event payloads (checked field by field)."""
    assert msg["v"] == 2 and msg["dev"] == dev and LOG_ID.match(msg["log"]), msg
    recs = msg["recs"]
    assert isinstance(recs, list) and 1 <= len(recs) <= 500
    seqs = [r["seq"] for r in recs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    for r in recs:
        assert isinstance(r["seq"], int) and r["seq"] >= 1
        assert isinstance(r["ts"], int) and isinstance(r["flags"], int) and 0 <= r["flags"] < 8
        if leaf == "telemetry":
            assert NAME.match(r["sensor"]), r
            assert 1 <= len(r["vals"]) <= 16
            for k, v in r["vals"].items():
                assert NAME.match(k) and isinstance(v, int | float) and math.isfinite(v), r
        else:
            assert r["kind"] in EVENT_KINDS and isinstance(r["label"], str) and len(r["label"]) <= 32, r
            assert isinstance(r["score"], int | float) and math.isfinite(r["score"])
            assert r["model"] is None or isinstance(r["model"], str)
            assert r["action"] is None or isinstance(r["action"], str)


def check_status(msg: dict, dev: str) -> None:
    """docs/protocol.md: an online status has every field."""
    assert msg["v"] == 2 and msg["dev"] == dev and msg["state"] == "online" and LOG_ID.match(msg["log"]), msg
    for k in ("ts", "uptime_s", "heap_free", "boot", "seq"):
        assert isinstance(msg[k], int), (k, msg)
    for k in ("fw", "board"):
        assert isinstance(msg[k], str), (k, msg)
    assert msg["model"] is None or isinstance(msg["model"], str)
    assert isinstance(msg["safe_mode"], bool)
    assert msg["error"] is None or isinstance(msg["error"], str)
    c = msg["counters"]
    for k in ("sampled", "rejected", "logged", "dropped", "published", "reconnects", "corrupt", "stored", "acked"):
        assert isinstance(c[k], int) and c[k] >= 0, (k, c)
    for k in ("e_buffer", "r_noise"):
        assert isinstance(msg[k], int | float) and math.isfinite(msg[k]), (k, msg)


def wait_until(cond: Callable[[], Any], timeout: float, what: str | Callable[[], str], every: float = 0.05) -> Any:
    """Poll `cond` every `every` s until it is truthy and return that value; else fail naming `what` (a text,
    or a function giving one at the moment of the failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")


def gaps(seqs: set[int], upto: int) -> list[tuple[int, int]]:
    """Missing runs (first, length) in 1..upto."""
    out: list[tuple[int, int]] = []
    s = 1
    while s <= upto:
        if s not in seqs:
            start = s
            while s <= upto and s not in seqs:
                s += 1
            out.append((start, s - start))
        s += 1
    return out


__all__ = ["REBOOT_EXIT", "NetNode", "Subscriber", "check_records_message", "check_status", "gaps", "wait_until"]
