"""Scale-out: readings/s committed to PostgreSQL by 1, 2, 3 collectors, on mosquitto (`$share` group, MQTT 5) and
on a 3-node RabbitMQ cluster (AMQP, one quorum queue), each against the broker's own delivery rate to a plain
consumer of the same messages in the same run.

Per broker and collector count N (1, 2, 3): first the baseline, the same publishing with only a plain consumer
(paho MQTT 5 QoS 1 on mosquitto; on RabbitMQ a pika consumer with acks on a quorum queue of its own, the
collectors' kind of queue), timed to the last message received; then N collectors (`edgefleet collect`
processes: a `$share` group on mosquitto, competing consumers of the quorum queue on RabbitMQ) on a fresh
PostgreSQL database: --msgs telemetry messages of --per-msg readings are published at QoS 1 by one publisher
per device (protocol-level, the node's real payload and per-device seq), and the time from the first publish
to the last COMMIT gives readings/s. Each N's ratio is against the baseline measured just before it on the same
broker (the machine's load from other work drifts within a run). Every reading must be stored (the table's
key makes each one row); each collector's share of the messages (from its "stopped: N messages" log line)
shows that the work was split.
mosquitto runs the secure configuration `edgefleet broker` writes (password file, the fleet ACL, one user per
collector and per device); RabbitMQ the 3-node cluster of rabbitmq.py with its per-device users.
Everything shares this machine's cores (publishers, broker, collectors, PostgreSQL), so the ratio matters more
than the absolute figure; see docs/scale.md.

    PYTHONPATH=host .venv/bin/python bench/scale.py [--broker both|mosquitto|rabbitmq] [--msgs 3000] [--per-msg 10]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HOST = Path(__file__).resolve().parents[1] / "host"
sys.path.insert(0, str(HOST))

from edgefleet import procs  # noqa: E402
from edgefleet.broker.mosquitto import Mosquitto, render_acl, write_password_file  # noqa: E402
from edgefleet.sim.fleetsim import telemetry_payload  # noqa: E402
from edgefleet.sim.postgres import PostgresCluster  # noqa: E402
from edgefleet.wire import protocol  # noqa: E402

DEVICES = [f"dev-{i:03d}" for i in range(4)]
COLLECTORS = [f"collector-{i}" for i in range(3)]  # mosquitto: one user per collector (client id = user name)
PW = {"collector": "bench-collector", "bench": "bench-admin", **{c: f"{c}-pw" for c in COLLECTORS},
      **{d: f"{d}-pw" for d in DEVICES}}  # fmt: skip


class Pub:
    """QoS 1 publisher with at most `inflight` unacknowledged messages (and a login, which RabbitMQ needs)."""

    def __init__(self, port: int, dev: str, users: bool, inflight: int = 100) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.sem = threading.Semaphore(inflight)
        self.inflight = inflight
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{dev}-{time.monotonic_ns()}")
        if users:
            self.c.username_pw_set(dev, PW[dev])
        self.c.max_inflight_messages_set(inflight)
        self.c.on_publish = lambda *a: self.sem.release()
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        if not self.sem.acquire(timeout=60):
            raise SystemExit("publisher stalled")
        self.c.publish(topic, payload, qos=1)

    def close(self) -> None:
        for _ in range(self.inflight):
            self.sem.acquire(timeout=60)
        self.c.disconnect()
        self.c.loop_stop()


def publish_all(port: int, msgs: int, per_msg: int, users: bool) -> float:
    """One publisher thread per device; returns the monotonic time publishing started."""
    per_dev = msgs // len(DEVICES)

    def one(dev: str) -> None:
        p = Pub(port, dev, users)
        for k in range(per_dev):
            p.publish(protocol.topic("edgefleet", dev, "telemetry"), telemetry_payload(dev, 1 + k * per_msg, per_msg))
        p.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(d,)) for d in DEVICES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return t0


def stored_count(db: str) -> int:
    import psycopg

    try:
        with psycopg.connect(db) as conn:
            return conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    except psycopg.errors.UndefinedTable:
        return 0


def start_collectors(n: int, broker: str, db: str, logdir: Path, group: str | None) -> list[subprocess.Popen]:
    """`broker` may hold `{user}`: each collector then logs in as collector-<i> (mosquitto pins the client id to
    the user name, so collectors sharing one user would take each other's session over)."""
    out = []
    for i in range(n):
        user = COLLECTORS[i] if "{user}" in broker else "collector"
        env = dict(os.environ, PYTHONPATH=str(HOST), EDGEFLEET_BROKER_PASSWORD=PW[user])
        argv = [sys.executable, "-m", "edgefleet.cli", "collect", "--broker", broker.format(user=user), "--db", db,
                "--client-id", f"scale-c{i}"] + (["--group", group] if group else [])  # fmt: skip
        log = (logdir / f"c{i}.log").open("ab")
        out.append(procs.spawn(argv, name=f"collector-{i}", env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
        deadline = time.monotonic() + 30
        while b"collecting" not in (logdir / f"c{i}.log").read_bytes():
            if time.monotonic() > deadline or out[-1].poll() is not None:
                raise SystemExit((logdir / f"c{i}.log").read_text())
            time.sleep(0.1)
    return out


def shares(logdir: Path, n: int) -> list[int]:
    """Messages each collector handled, from its last "stopped: N messages" line."""
    out = []
    for i in range(n):
        found = re.findall(r"stopped: (\d+) messages", (logdir / f"c{i}.log").read_text())
        out.append(int(found[-1]) if found else -1)
    return out


def timed_collect(n, broker_url, mqtt_port, pg, args, logdir, group, users) -> tuple[float, list[int]]:
    db = pg.new_database()
    cols = start_collectors(n, broker_url, db, logdir, group)
    try:
        want = (args.msgs // len(DEVICES)) * len(DEVICES) * args.per_msg
        t0 = publish_all(mqtt_port, args.msgs, args.per_msg, users)
        deadline = time.monotonic() + 120
        while (got := stored_count(db)) < want:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {got} of {want} readings stored")
            time.sleep(0.05)
        rate = want / (time.monotonic() - t0)
    finally:
        for c in cols:
            c.send_signal(signal.SIGINT)
        for c in cols:
            c.wait(60)
    if (got := stored_count(db)) != want:
        raise SystemExit(f"{got} readings stored, {want} published")
    return rate, shares(logdir, n)


def mqtt_baseline(port: int, args, users: bool) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    want = (args.msgs // len(DEVICES)) * len(DEVICES)
    got = [0]
    done = threading.Event()
    ready = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench", protocol=mqtt.MQTTv5)
    c.username_pw_set("bench", PW["bench"])

    def on_msg(*a):
        got[0] += 1
        if got[0] >= want:
            done.set()

    c.on_message = on_msg
    c.on_subscribe = lambda *a: ready.set()
    c.connect("127.0.0.1", port)
    c.subscribe("edgefleet/+/telemetry", qos=1)
    c.loop_start()
    ready.wait(10)
    t0 = publish_all(port, args.msgs, args.per_msg, users)
    done.wait(120)
    rate = got[0] * args.per_msg / (time.monotonic() - t0)
    c.loop_stop()
    c.disconnect()
    return rate


def amqp_baseline(cluster, mqtt_port: int, args) -> float:
    import pika

    want = (args.msgs // len(DEVICES)) * len(DEVICES)
    params = pika.ConnectionParameters("127.0.0.1", cluster.nodes[0].amqp_port,
                                       credentials=pika.PlainCredentials("bench", PW["bench"]))  # fmt: skip
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    # the same kind of queue the collectors read (durable, quorum: replicated on 3 nodes), not a transient one
    q = "bench-plain"
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_bind(q, "amq.topic", routing_key="edgefleet.*.telemetry")
    ch.basic_qos(prefetch_count=1000)
    got = [0]

    def on_msg(channel, method, props, body):
        got[0] += 1
        if got[0] % 100 == 0 or got[0] >= want:
            channel.basic_ack(method.delivery_tag, multiple=True)

    ch.basic_consume(q, on_msg)
    t = threading.Thread(target=publish_all, args=(mqtt_port, args.msgs, args.per_msg, True))
    t0 = time.monotonic()
    t.start()
    deadline = t0 + 120
    while got[0] < want and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    rate = got[0] * args.per_msg / (time.monotonic() - t0)
    t.join()
    ch.queue_delete(q)
    conn.close()
    return rate


Row = tuple[int, float, float, list[int]]  # collectors, plain consumer rate, collectors' rate, shares


def secure_mosquitto(work: Path, name: str) -> Mosquitto:
    """The configuration `edgefleet broker` writes: logins, client id = user name, the fleet ACL (the plain
    consumer `bench` gets the collectors' read rights)."""
    d = work / name
    d.mkdir()
    pw = write_password_file({u: p for u, p in PW.items() if u != "collector"}, d / "passwd")
    (d / "acl").write_text(render_acl("edgefleet", collector_user=[*COLLECTORS, "bench"]))
    return Mosquitto(data_dir=d, password_file=pw, acl_file=d / "acl")


def run_mosquitto(pg, args, work: Path) -> list[Row]:
    rows = []
    for n in args.collectors:
        with secure_mosquitto(work, f"mq-{n}") as b:
            base = mqtt_baseline(b.port, args, users=True)
            d = work / f"mq-logs-{n}"
            d.mkdir()
            url = f"mqtt://{{user}}@127.0.0.1:{b.port}"
            rows.append((n, base, *timed_collect(n, url, b.port, pg, args, d, f"g{n}", users=True)))
    return rows


def run_rabbitmq(pg, args, work: Path) -> list[Row]:
    from edgefleet.broker.rabbitmq import QUEUE, RabbitCluster

    rows = []
    cluster = RabbitCluster(3, root=work / "rmq")
    try:
        print("starting a 3-node RabbitMQ cluster (~60 s) ...", flush=True)
        cluster.start(users={u: p for u, p in PW.items() if u not in COLLECTORS})
        n0 = cluster.nodes[0]
        cluster.ctl(n0, "set_permissions", "-p", "/", "bench", ".*", ".*", ".*")
        cluster.ctl(n0, "set_topic_permissions", "-p", "/", "bench", "amq.topic", ".*", ".*")
        port = cluster.mqtt_ports[0]
        for n in args.collectors:
            base = amqp_baseline(cluster, port, args)
            cluster.ctl(n0, "purge_queue", QUEUE, check=False)
            d = work / f"rmq-logs-{n}"
            d.mkdir()
            url = cluster.amqp_url_for("collector")
            rows.append((n, base, *timed_collect(n, url, port, pg, args, d, None, users=True)))
    finally:
        cluster.stop()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", choices=("both", "mosquitto", "rabbitmq"), default="both")
    ap.add_argument("--msgs", type=int, default=3000, help="telemetry messages per run (default: %(default)s)")
    ap.add_argument("--per-msg", type=int, default=10, help="readings per message (default: %(default)s)")
    ap.add_argument("--collectors", type=int, nargs="+", default=[1, 2, 3], choices=(1, 2, 3),
                    help="collector counts to measure (default: 1 2 3)")  # fmt: skip
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))  # stop brokers, collectors, PostgreSQL on the way out
    work = Path(tempfile.mkdtemp(prefix="edgefleet-scale-"))
    pg = PostgresCluster().start()
    try:
        kinds = ("mosquitto", "rabbitmq") if args.broker == "both" else (args.broker,)
        for kind in kinds:
            rows = run_mosquitto(pg, args, work) if kind == "mosquitto" else run_rabbitmq(pg, args, work)
            print(f"\n{kind}: {args.msgs} messages x {args.per_msg} readings, PostgreSQL (readings/s)")
            print("  collectors  plain consumer  collectors  ratio  messages per collector")
            for n, base, rate, share in rows:
                print(f"  {n:10d}  {base:14.0f}  {rate:10.0f}  {rate / base:4.2f}x  {share}")
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
