"""`edgefleet capture`: labelled full-rate data from chosen nodes for a while (the job of Edge Impulse's data
acquisition), landing through the collector like any other data.

A node logs every `log_every`-th reading of a sensor (IMU: every 10th, so an export holds 1 Hz rows of a 10 Hz
sensor). capture sends each node `set_config {"log_every": {SENSOR: 1}}` on its /cmd topic (as the operator),
waits for the acks, keeps it for the duration, sends the sensor's usual log_every back (also on Ctrl-C or an
error), and appends one row per node to a captures file: device,sensor,label,start_ms,end_ms. `edgefleet train
--labels FILE` keeps only those intervals of an export and labels them.
"""

from __future__ import annotations

import csv
import json
import logging
import queue
import re
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..board.firmware_shared import firmware_module
from ..errors import EdgefleetError
from ..wire import protocol
from ..wire.url import parse_broker_url

log = logging.getLogger(__name__)

CAPTURE_COLUMNS = ["device", "sensor", "label", "start_ms", "end_ms"]


def parse_duration(text: str) -> float:
    """'60s', '2m', '1h' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise EdgefleetError(f"bad duration {text!r}", hint="e.g. 60s, 2m, 1h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


@dataclass
class Capture:
    device: str
    sensor: str
    label: str
    start_ms: int
    end_ms: int


class Commander:
    """An MQTT client that sends /cmd to nodes and waits for their /ack by command id."""

    def __init__(self, broker: str, prefix: str, ca: str | None, cert: str | None, key: str | None) -> None:
        import paho.mqtt.client as mqtt

        u = parse_broker_url(broker)
        self.prefix = prefix
        self.acks: queue.SimpleQueue = queue.SimpleQueue()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgefleet-capture-{secrets.token_hex(3)}")
        if u.username:
            c.username_pw_set(u.username, u.password)
        if u.tls or ca or cert:
            try:
                c.tls_set(ca_certs=ca, certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise EdgefleetError(f"cannot set up TLS: {e}", hint="check --ca/--cert/--key") from None
        c.on_message = lambda _c, _u, msg: self.acks.put((msg.topic, msg.payload))
        try:
            c.connect(u.host, u.port)
        except OSError as e:
            raise EdgefleetError(f"cannot connect to the broker at {u.host}:{u.port}: {e}") from None
        c.loop_start()
        self.client = c

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def watch(self, devices: list[str]) -> None:
        for d in devices:
            self.client.subscribe(protocol.topic(self.prefix, d, "ack"), qos=1)
        time.sleep(0.2)  # SUBACK before the first command: an ack must not arrive before we listen

    def command(self, devices: list[str], cmd: str, args: dict, timeout: float) -> dict[str, dict]:
        """Send one command to each device; return each device's result, or raise naming who failed."""
        ids = {}
        for d in devices:
            cid = f"cap-{secrets.token_hex(4)}"
            ids[cid] = d
            body = {"v": 1, "id": cid, "cmd": cmd, "args": args}  # the node's /cmd format (commands.py: v 1)
            self.client.publish(protocol.topic(self.prefix, d, "cmd"), json.dumps(body), qos=1).wait_for_publish(10)
        results: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        while len(results) < len(ids):
            try:
                _topic, payload = self.acks.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                missing = sorted(set(ids.values()) - set(results))
                raise EdgefleetError(f"no ack for {cmd} from {', '.join(missing)} within {timeout:g} s",
                                     hint="is the node online (edgefleet fleet status) and the broker URL right?") from None  # fmt: skip
            try:
                ack = json.loads(payload)
            except ValueError:
                continue
            dev = ids.get(ack.get("id"))
            if dev is None:
                continue
            if not ack.get("ok"):
                raise EdgefleetError(f"{dev} refused {cmd}: {ack.get('error')}")
            results[dev] = ack.get("result") or {}
        return results


def default_log_every(sensor: str) -> int:
    return int(firmware_module("node/config.py").DEFAULTS["log_every"].get(sensor, 1))


def capture(broker: str, devices: list[str], sensor: str, label: str, seconds: float, out: Path,
            prefix: str = protocol.DEFAULT_PREFIX, restore_every: int | None = None, ca: str | None = None,
            cert: str | None = None, key: str | None = None, timeout: float = 15.0) -> list[Capture]:  # fmt: skip
    """Switch the devices' sensor to full-rate logging for `seconds`, switch back, record the intervals."""
    if not label or "," in label or "\n" in label:
        raise EdgefleetError(f"bad label {label!r}", hint="a non-empty label without commas")
    for d in devices:  # before any command goes out: a bad id has no topic (protocol.topic)
        if not protocol.DEVICE_RE.fullmatch(d):
            raise EdgefleetError(f"bad device id {d!r}", hint="1 to 32 of A-Z a-z 0-9 _ -")
    restore = default_log_every(sensor) if restore_every is None else restore_every
    cmd = Commander(broker, prefix, ca, cert, key)
    try:
        cmd.watch(devices)
        cmd.command(devices, "set_config", {"log_every": {sensor: 1}}, timeout)
        start = int(time.time() * 1000)
        log.info("capturing %s on %s as %r for %g s", sensor, ", ".join(devices), label, seconds)
        try:
            with tqdm(total=int(seconds), desc=f"capture {label}", unit="s", disable=None) as bar:
                end_at = time.monotonic() + seconds
                while (left := end_at - time.monotonic()) > 0:
                    time.sleep(min(1.0, left))
                    bar.n = int(seconds - max(0.0, end_at - time.monotonic()))
                    bar.refresh()
            end = int(time.time() * 1000)
        finally:
            cmd.command(devices, "set_config", {"log_every": {sensor: restore}}, timeout)
            log.info("%s back to logging every %d-th %s reading", ", ".join(devices), restore, sensor)
    finally:
        cmd.close()
    rows = [Capture(d, sensor, label, start, end) for d in devices]
    new = not out.exists()
    with out.open("a", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        if new:
            w.writerow(CAPTURE_COLUMNS)
        for r in rows:
            w.writerow([r.device, r.sensor, r.label, r.start_ms, r.end_ms])
    return rows


def read_captures(path: Path) -> list[Capture]:
    """The captures file capture appends to; a clear error for anything else."""
    if not path.is_file():
        raise EdgefleetError(f"no captures file {path}", hint="edgefleet capture ... writes captures.csv")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != CAPTURE_COLUMNS:
        raise EdgefleetError(f"{path}: not a captures file (header must be {','.join(CAPTURE_COLUMNS)})")
    out = []
    for i, r in enumerate(rows[1:], start=2):
        try:
            out.append(Capture(r[0], r[1], r[2], int(r[3]), int(r[4])))
        except (IndexError, ValueError) as e:
            raise EdgefleetError(f"{path}:{i}: bad row ({e})") from None
    return out
