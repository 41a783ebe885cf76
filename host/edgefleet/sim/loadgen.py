"""A protocol-level fleet for load tests: thousands of MQTT 3.1.1 connections in one asyncio process, each a
device publishing the node's real telemetry (protocol v2: log id, per-device seq, env reading records) at a fixed
period with its own login on the secure broker configuration, and measuring end to end what a node would see:
every (device, log, seq) must be a row in the database, and the time from logging a record to receiving the
collector's `stored` ack that covers it.

The MQTT client is our own minimal 3.1.1 implementation over asyncio streams (CONNECT with login, SUBSCRIBE to
the device's own `stored`, PUBLISH at QoS 1, PUBACK both ways): one coroutine per device rather than a thread
(paho) per device, so the generator costs less than the broker and collector it loads. A device here never
republishes: anything the broker or collector drops shows as loss.

bench/loadgen.py searches the largest fleet one machine holds; tests/host/test_loadgen.py checks the measurement.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import re
import secrets
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import procs
from ..broker.mosquitto import Mosquitto, render_acl, write_password_file
from ..wire import protocol
from .fleetsim import reading
from .postgres import PostgresCluster

HOST = Path(__file__).resolve().parents[2]


@dataclass
class LoadSpec:
    """What each device does in a trial, and what runs against it."""

    period: float = 10.0  # s between a device's messages
    msgs: int = 3  # messages per device
    recs: int = 5  # reading records per message (a node at 1 Hz flushes ~6 env readings, 256 bytes, per batch)
    drain: float = 5.0  # s after its last publish a device waits for its acks
    collectors: int = 1  # `edgefleet collect` processes
    connect_concurrency: int = 200  # connects in flight
    settle: float = 0.0  # s between the last connect and the first publish (steady state, not the connect storm)
    collector_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))


PREFIX = protocol.DEFAULT_PREFIX
# Connections come from several loopback source addresses: one (source, broker address) pair has only the
# ephemeral port range (32768-60999 here, ~28k) of local ports.
SOURCES = [f"127.0.0.{i}" for i in range(1, 5)]

# ------------------------------------------------------------------------------------------- MQTT 3.1.1 codec


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def connect_packet(client_id: str, user: str, password: str, keepalive: int) -> bytes:
    flags = 0x80 | 0x40 | 0x02  # user name, password, clean session
    return _packet(0x10, _str("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive)
                   + _str(client_id) + _str(user) + _str(password))  # fmt: skip


def publish_packet(topic: str, payload: bytes, pid: int) -> bytes:
    return _packet(0x32, _str(topic) + struct.pack("!H", pid) + payload)


def subscribe_packet(topic: str, pid: int) -> bytes:
    return _packet(0x82, struct.pack("!H", pid) + _str(topic) + b"\x01")


def puback_packet(pid: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", pid)


class MqttError(Exception):
    pass


class Client:
    """One MQTT 3.1.1 connection: QoS 1 publishes awaited on their PUBACK, incoming QoS 0/1 messages handed to
    `on_message(topic, payload)` (acked at once)."""

    def __init__(self, on_message) -> None:
        self.on_message = on_message
        self._pid = 0
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader_task: asyncio.Task | None = None
        self.writer: asyncio.StreamWriter | None = None

    def _next_pid(self) -> int:
        self._pid = self._pid % 65535 + 1
        return self._pid

    async def connect(
        self, host: str, port: int, client_id: str, user: str, password: str, keepalive: int, source: str
    ) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        self.writer.write(connect_packet(client_id, user, password, keepalive))
        first, body = await self._read_packet()
        if first >> 4 != 2 or len(body) != 2 or body[1] != 0:
            raise MqttError(f"CONNACK refused: {body.hex()}")
        self._reader_task = asyncio.create_task(self._read_loop())

    async def _read_packet(self) -> tuple[int, bytes]:
        first = (await self.reader.readexactly(1))[0]
        mult, n = 1, 0
        while True:
            b = (await self.reader.readexactly(1))[0]
            n += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        return first, await self.reader.readexactly(n) if n else b""

    async def _read_loop(self) -> None:
        try:
            while True:
                first, body = await self._read_packet()
                kind = first >> 4
                if kind in (4, 9):  # PUBACK, SUBACK
                    fut = self._waiting.pop(struct.unpack_from("!H", body)[0], None)
                    if fut is not None and not fut.done():
                        fut.set_result(body[2:])
                elif kind == 3:  # PUBLISH to us
                    tlen = struct.unpack_from("!H", body)[0]
                    topic = body[2 : 2 + tlen].decode()
                    pos = 2 + tlen
                    if (first >> 1) & 3:
                        self.writer.write(puback_packet(struct.unpack_from("!H", body, pos)[0]))
                        pos += 2
                    self.on_message(topic, body[pos:])
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError) as e:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(MqttError(f"connection lost: {e!r}"))
            self._waiting.clear()

    async def _request(self, packet_for, timeout: float) -> bytes:
        pid = self._next_pid()
        fut = asyncio.get_running_loop().create_future()
        self._waiting[pid] = fut
        self.writer.write(packet_for(pid))
        return await asyncio.wait_for(fut, timeout)

    async def subscribe(self, topic: str, timeout: float = 30) -> None:
        granted = await self._request(lambda pid: subscribe_packet(topic, pid), timeout)
        if not granted or granted[0] == 0x80:
            raise MqttError(f"SUBSCRIBE {topic} refused")

    async def publish(self, topic: str, payload: bytes, timeout: float = 30) -> None:
        await self._request(lambda pid: publish_packet(topic, payload, pid), timeout)

    async def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.write(b"\xe0\x00")
                await self.writer.drain()
            except ConnectionError:
                pass
            self.writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()


# ------------------------------------------------------------------------------------------------- one device


@dataclass
class Device:
    name: str
    password: str
    log: str = field(default_factory=lambda: secrets.token_hex(4))
    seq: int = 0
    logged_ms: dict[int, float] = field(default_factory=dict)  # seq -> wall ms it was logged and published
    latency_ms: dict[int, float] = field(default_factory=dict)  # seq -> logged-to-stored
    error: str | None = None
    all_acked: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, topic: str, payload: bytes) -> None:
        """A `stored` ack: every seq it covers that we logged gets its latency (first ack wins)."""
        now = time.time() * 1000
        try:
            log, ranges = protocol.check_stored(json.loads(payload))
        except (ValueError, protocol.ProtocolError) as e:
            self.error = f"bad stored ack: {e}"
            return
        if log != self.log:
            return
        for a, b in ranges:
            for s in range(a, b + 1):
                t = self.logged_ms.get(s)
                if t is not None and s not in self.latency_ms:
                    self.latency_ms[s] = now - t
        if len(self.latency_ms) == len(self.logged_ms):
            self.all_acked.set()

    def message(self, recs: int) -> bytes:
        """`recs` env readings sampled 1 s apart, the newest now: a node's batch. Each record's latency runs from
        now (the batch is durable and published), not from its sample time (the node's batching is its own)."""
        now = int(time.time() * 1000)
        out = []
        for i in range(recs):
            self.seq += 1
            self.logged_ms[self.seq] = now
            out.append(reading(self.seq, now - (recs - 1 - i) * 1000))
        self.all_acked.clear()
        return protocol.encode(protocol.telemetry(self.name, out, log=self.log))


async def run_device(dev: Device, addr: tuple[str, int], source: str, go: Go, spec: LoadSpec, connect_sem: asyncio.Semaphore,
                     connected: list, failed: list) -> None:  # fmt: skip
    """Connect (bounded concurrency), subscribe to our `stored`, wait until every device is connected, then
    publish --msgs messages --period s apart starting at a random phase of the first period."""
    c = Client(dev.on_message)
    try:
        async with connect_sem:
            try:
                await asyncio.wait_for(c.connect(*addr, dev.name, dev.name, dev.password, 120, source), 60)
                await c.subscribe(protocol.topic(PREFIX, dev.name, "stored"))
            except BaseException:
                failed.append(dev.name)
                raise
        connected.append(dev.name)
        loop = asyncio.get_running_loop()
        await go.event.wait()  # steady state is measured, not the connect storm: publishing starts when all are in
        phase = go.at + random.random() * spec.period
        for k in range(spec.msgs):
            await asyncio.sleep(max(0.0, phase + k * spec.period - loop.time()))
            await c.publish(protocol.topic(PREFIX, dev.name, "telemetry"), dev.message(spec.recs))
        try:  # until every seq is acked, or --drain s after the last publish (then the rest count as not acked)
            await asyncio.wait_for(dev.all_acked.wait(), spec.drain)
        except TimeoutError:
            pass
    except (TimeoutError, OSError, MqttError) as e:
        dev.error = f"{type(e).__name__}: {e}"
    finally:
        await c.close()


# ------------------------------------------------------------------------------------------------ the brokers


class MosquittoTarget:
    """One mosquitto with logins and the fleet ACL (what `edgefleet broker` writes), restarted per trial."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.broker: Mosquitto | None = None

    def start(self, creds: dict[str, str], trial: int) -> None:
        d = self.work / f"mq-{trial}"
        d.mkdir(parents=True)
        pw = write_password_file(creds, d / "passwd")
        acl = d / "acl"
        acl.write_text(render_acl(PREFIX))
        self.broker = Mosquitto(data_dir=d, password_file=pw, acl_file=acl).start()

    def device_addr(self, i: int) -> tuple[str, int]:
        return ("127.0.0.1", self.broker.port)

    def collector_url(self) -> str:
        return f"mqtt://collector@127.0.0.1:{self.broker.port}"

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()


def rabbit_password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt(4) + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class RabbitTarget:
    """The 3-node cluster of rabbitmq.py, started once; devices spread over the three MQTT listeners (what the
    balancer in front does); device users imported in bulk with the same permissions as RabbitCluster.set_user
    (one rabbitmqctl call per user takes ~1 s: too slow for thousands)."""

    def __init__(self, work: Path) -> None:
        from edgefleet.broker.rabbitmq import RabbitCluster

        self.cluster = RabbitCluster(3, root=work / "rmq")
        self.users: set[str] = set()
        self.work = work

    def start(self, creds: dict[str, str], trial: int) -> None:
        from edgefleet.broker.rabbitmq import QUEUE

        if not self.users:
            print("starting a 3-node RabbitMQ cluster (~60 s) ...", flush=True)
            self.cluster.start(users={"collector": creds["collector"]})
            self.users.add("collector")
        self.import_devices({u: p for u, p in creds.items() if u not in self.users})
        self.cluster.ctl(self.cluster.nodes[0], "purge_queue", QUEUE, check=False)

    def import_devices(self, creds: dict[str, str]) -> None:
        from edgefleet.broker.rabbitmq import NODE_TOPICS_IN, NODE_TOPICS_OUT

        if not creds:
            return
        p, q = re.escape(PREFIX), "mqtt-subscription-.*"
        defs: dict = {"users": [], "permissions": [], "topic_permissions": []}
        for name, password in creds.items():
            d = re.escape(name.replace(".", "/"))
            defs["users"].append({"name": name, "password_hash": rabbit_password_hash(password),
                                  "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []})  # fmt: skip
            defs["permissions"].append({"user": name, "vhost": "/", "configure": f"^{q}",
                                        "write": f"^(amq\\.topic|{q})$", "read": f"^(amq\\.topic|{q})$"})  # fmt: skip
            defs["topic_permissions"].append({"user": name, "vhost": "/", "exchange": "amq.topic",
                                              "write": f"^{p}\\.{d}\\.({NODE_TOPICS_OUT})$",
                                              "read": f"^{p}\\.{d}\\.({NODE_TOPICS_IN})$"})  # fmt: skip
        path = self.work / "defs.json"
        path.write_text(json.dumps(defs))
        path.chmod(0o600)
        self.cluster.ctl(self.cluster.nodes[0], "import_definitions", str(path), timeout=300)
        path.unlink()
        self.users |= set(creds)

    def device_addr(self, i: int) -> tuple[str, int]:
        ports = self.cluster.mqtt_ports
        return ("127.0.0.1", ports[i % len(ports)])

    def collector_url(self) -> str:
        return self.cluster.amqp_url_for("collector")

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self.cluster.stop()


# ------------------------------------------------------------------------------------------------- one trial


def start_collectors(n: int, url: str, db: str, password: str, logdir: Path) -> list[subprocess.Popen]:
    env = dict(os.environ, PYTHONPATH=str(HOST), EDGEFLEET_BROKER_PASSWORD=password)
    out = []
    group = ["--group", "load"] if url.startswith("mqtt") and n > 1 else []
    for i in range(n):
        path = logdir / f"collector-{i}.log"
        argv = [sys.executable, "-m", "edgefleet.cli", "collect", "--broker", url, "--db", db,
                "--client-id", f"load-c{i}", *group]  # fmt: skip
        with path.open("ab") as log:
            out.append(procs.spawn(argv, name=f"collector-{i}", env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 30
        while b"collecting" not in path.read_bytes():
            if time.monotonic() > deadline or out[-1].poll() is not None:
                stop_collectors(out)
                raise SystemExit(f"collector did not start:\n{path.read_text()[-2000:]}")
            time.sleep(0.1)
    return out


def stop_collectors(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stored_rows(db: str) -> dict[tuple[str, str, int], int]:
    """(device, log, seq) -> received_ms (when the collector received the message) of every stored reading."""
    import psycopg

    try:
        with psycopg.connect(db) as conn:
            return {(d, lg, s): r for d, lg, s, r in conn.execute("SELECT device, log, seq, received_ms FROM readings")}
    except psycopg.errors.UndefinedTable:  # no collector ever committed (e.g. collectors=0, the sanity check)
        return {}


@dataclass
class Result:
    n: int
    connected: int
    logged: int
    stored: int
    lost: int
    acked: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    connect_s: float
    errors: list[str]
    cpu: dict[str, float]
    p99_to_collector_ms: float = float("nan")  # logged -> received by the collector
    p99_loop_lag_ms: float = float("nan")  # the generator's own event-loop delay: how late it sees an ack
    load: float = field(default_factory=lambda: os.getloadavg()[0])  # the machine's 1-min load at the end

    def ok(self, p99_ms: float) -> bool:
        """Zero loss in the database, every device connected, p99 under the bound (records not acked within the
        drain count as infinitely late)."""
        return self.connected == self.n and self.lost == 0 and self.p99_ms < p99_ms

    def line(self) -> str:
        return (f"N={self.n:6d}  connected {self.connected}/{self.n} in {self.connect_s:.1f} s  logged {self.logged}"
                f"  stored {self.stored}  lost {self.lost}  acked {self.acked}  latency p50 {self.p50_ms:.0f} ms"
                f"  p99 {self.p99_ms:.0f} ms  max {self.max_ms:.0f} ms\n      p99 logged->received by the collector"
                f" {self.p99_to_collector_ms:.0f} ms; generator loop lag p99 {self.p99_loop_lag_ms:.0f} ms;"
                f" load average {self.load:.1f};"
                " CPU while publishing (% of one core): "
                + "  ".join(f"{k} {v:.0f}" for k, v in self.cpu.items()))  # fmt: skip


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("inf")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _descendants() -> dict[int, str]:
    """pid -> comm of every process below this one (brokers, collectors, PostgreSQL and their children)."""
    parent: dict[int, int] = {}
    comm: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            parent[int(d.name)], comm[int(d.name)] = int(rest[1]), name
    me, out = os.getpid(), {}
    for pid in comm:
        p = pid
        while p > 1 and p != me:
            p = parent.get(p, 0)
        if p == me and pid != me:
            out[pid] = comm[pid]
    return out


def cpu_snapshot(collector_pids: set[int]) -> dict[int, tuple[str, float]]:
    """pid -> (component, CPU seconds so far) for the generator and everything it started."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid, comm in [(os.getpid(), "generator"), *_descendants().items()]:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if pid == os.getpid():
            group = "generator"
        elif pid in collector_pids:
            group = "collector"
        elif comm.startswith("postgres"):
            group = "postgresql"
        elif comm in ("runuser",):
            continue
        else:
            group = "broker"  # mosquitto, or RabbitMQ's Erlang VMs and their helpers
        out[pid] = (group, (int(f[11]) + int(f[12])) / tick)
    return out


def cpu_use(before: dict, after: dict, wall_s: float) -> dict[str, float]:
    """Per component: % of one core used between the snapshots (the machine has os.cpu_count() of them)."""
    use: dict[str, float] = {}
    for pid, (group, t) in after.items():
        use[group] = use.get(group, 0.0) + t - before.get(pid, (group, 0.0))[1]
    return {g: 100 * v / wall_s for g, v in sorted(use.items())}


@dataclass
class Go:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    at: float = 0.0


async def _lag(out: list[float]) -> None:
    """How late this process's event loop wakes (ms, every 50 ms): an ack read late inflates the latency."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.05)
        out.append((loop.time() - t - 0.05) * 1000)


async def drive(
    devices: list[Device], target, spec: LoadSpec, collector_pids: set[int]
) -> tuple[int, float, dict, float]:
    """Run every device; returns how many connected and subscribed, how long that took (s), the CPU use of
    each component while they published, and the p99 of the generator's event-loop lag then (ms)."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(spec.connect_concurrency)
    connected: list[str] = []
    failed: list[str] = []
    go = Go()
    t0 = loop.time()
    tasks = [asyncio.create_task(run_device(d, target.device_addr(i), SOURCES[i % len(SOURCES)], go, spec, sem, connected, failed))
             for i, d in enumerate(devices)]  # fmt: skip
    while len(connected) + len(failed) < len(devices):
        await asyncio.sleep(0.05)
    connect_s = loop.time() - t0
    await asyncio.sleep(spec.settle)
    go.at = loop.time()
    before = cpu_snapshot(collector_pids)
    lags: list[float] = []
    lag_task = asyncio.create_task(_lag(lags))
    go.event.set()
    await asyncio.gather(*tasks)
    lag_task.cancel()
    cpu = cpu_use(before, cpu_snapshot(collector_pids), loop.time() - go.at)
    return len(connected), connect_s, cpu, percentile(lags, 0.99)


_PASSWORDS: dict[str, str] = {}


def device_password(name: str) -> str:
    """A random password per device, the same for every trial of this process (RabbitMQ keeps its users)."""
    return _PASSWORDS.setdefault(name, secrets.token_urlsafe(12))


def trial(n: int, target, pg: PostgresCluster, spec: LoadSpec, work: Path, k: int) -> Result:
    creds = {"collector": spec.collector_password, **{f"ld-{i:05d}": device_password(f"ld-{i:05d}") for i in range(n)}}
    target.start(creds, k)
    db = pg.new_database()
    logdir = work / f"trial-{k}"
    logdir.mkdir()
    cols = start_collectors(spec.collectors, target.collector_url(), db, spec.collector_password, logdir)
    devices = [Device(u, p) for u, p in creds.items() if u != "collector"]
    try:
        connected, connect_s, cpu, lag = asyncio.run(drive(devices, target, spec, {c.pid for c in cols}))
    finally:
        stop_collectors(cols)
        target.stop()
    rows = stored_rows(db)
    keys = set(rows)
    logged = {(d.name, d.log, s) for d in devices for s in d.logged_ms}
    # where the time goes: logged -> the collector received it (broker + generator) vs the whole way to the ack
    to_collector = [rows[(d.name, d.log, s)] - t for d in devices for s, t in d.logged_ms.items()
                    if (d.name, d.log, s) in rows]  # fmt: skip
    lat = [v for d in devices for v in d.latency_ms.values()]
    acked = len(lat)
    lat_all = lat + [float("inf")] * (len(logged) - acked)
    errors = sorted({d.error for d in devices if d.error})
    return Result(n, connected, len(logged), len(keys & logged),
                  len(logged - keys), acked, percentile(lat, 0.5), percentile(lat_all, 0.99),
                  max(lat_all) if lat_all else float("inf"), connect_s, errors[:3], cpu,
                  percentile(to_collector, 0.99), lag)  # fmt: skip
