"""Scale-out: readings/s committed to PostgreSQL by 1, 2, 3 collectors, on mosquitto (`$share` group, MQTT 5) and
on a 3-node RabbitMQ cluster (AMQP, one quorum queue), each against the broker's own delivery rate to a plain
consumer of the same messages in the same run.

Per broker and collector count: the collectors (`edgefleet collect` processes) are started on a fresh
database, --msgs telemetry messages of --per-msg readings are published at QoS 1 by one publisher per device
(protocol-level, the node's real payload and per-device seq), and the time from the first publish to the last
COMMIT gives readings/s. The baseline is the same publishing with only a plain consumer (paho MQTT 5 QoS 1 on
mosquitto; on RabbitMQ a pika consumer with acks on a quorum queue of its own, the collectors' kind of queue),
timed to the last message received.
Everything shares this machine's cores (publishers, broker, collectors, PostgreSQL), so the ratio matters more
than the absolute figure; see docs/scale.md.

    PYTHONPATH=host .venv/bin/python bench/scale.py [--broker both|mosquitto|rabbitmq] [--msgs 3000] [--per-msg 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HOST = Path(__file__).resolve().parents[1] / "host"
sys.path.insert(0, str(HOST))

from edgefleet import protocol  # noqa: E402
from edgefleet.broker import Mosquitto  # noqa: E402
from edgefleet.testing.fleetsim import telemetry_payload  # noqa: E402
from edgefleet.testing.postgres import PostgresCluster  # noqa: E402

DEVICES = [f"dev-{i:03d}" for i in range(4)]
PW = {"collector": "bench-collector", "bench": "bench-admin", **{d: f"{d}-pw" for d in DEVICES}}


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
    env = dict(os.environ, PYTHONPATH=str(HOST), EDGEFLEET_BROKER_PASSWORD=PW["collector"])
    out = []
    for i in range(n):
        argv = [sys.executable, "-m", "edgefleet.cli", "collect", "--broker", broker, "--db", db,
                "--client-id", f"scale-c{i}"] + (["--group", group] if group else [])  # fmt: skip
        log = (logdir / f"c{i}.log").open("ab")
        out.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 30
        while b"collecting" not in (logdir / f"c{i}.log").read_bytes():
            if time.monotonic() > deadline or out[-1].poll() is not None:
                raise SystemExit((logdir / f"c{i}.log").read_text())
            time.sleep(0.1)
    return out


def timed_collect(n, broker_url, mqtt_port, pg, args, logdir, group, users) -> float:
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
        return want / (time.monotonic() - t0)
    finally:
        for c in cols:
            c.send_signal(signal.SIGINT)
        for c in cols:
            c.wait(60)


def mqtt_baseline(port: int, args, users: bool) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    want = (args.msgs // len(DEVICES)) * len(DEVICES)
    got = [0]
    done = threading.Event()
    ready = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plain", protocol=mqtt.MQTTv5)

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


def run_mosquitto(pg, args, work: Path) -> list[tuple[str, float]]:
    rows = []
    with Mosquitto(data_dir=work / "mq-base") as b:
        rows.append(("plain consumer", mqtt_baseline(b.port, args, users=False)))
    for n in args.collectors:
        with Mosquitto(data_dir=work / f"mq-{n}") as b:
            d = work / f"mq-logs-{n}"
            d.mkdir()
            rows.append((f"{n} collector(s)", timed_collect(n, b.url, b.port, pg, args, d, f"g{n}", users=False)))
    return rows


def run_rabbitmq(pg, args, work: Path) -> list[tuple[str, float]]:
    from edgefleet.rabbitmq import QUEUE, RabbitCluster

    rows = []
    cluster = RabbitCluster(3, root=work / "rmq")
    try:
        print("starting a 3-node RabbitMQ cluster (~45 s) ...", flush=True)
        cluster.start(users=PW)
        n0 = cluster.nodes[0]
        cluster.ctl(n0, "set_permissions", "-p", "/", "bench", ".*", ".*", ".*")
        cluster.ctl(n0, "set_topic_permissions", "-p", "/", "bench", "amq.topic", ".*", ".*")
        port = cluster.mqtt_ports[0]
        rows.append(("plain consumer", amqp_baseline(cluster, port, args)))
        for n in args.collectors:
            cluster.ctl(n0, "purge_queue", QUEUE, check=False)
            d = work / f"rmq-logs-{n}"
            d.mkdir()
            rows.append((f"{n} collector(s)", timed_collect(n, cluster.amqp_url_for("collector"), port, pg, args, d,
                                                            None, users=True)))  # fmt: skip
    finally:
        cluster.stop()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", choices=("both", "mosquitto", "rabbitmq"), default="both")
    ap.add_argument("--msgs", type=int, default=3000, help="telemetry messages per run (default: %(default)s)")
    ap.add_argument("--per-msg", type=int, default=10, help="readings per message (default: %(default)s)")
    ap.add_argument("--collectors", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgefleet-scale-"))
    pg = PostgresCluster().start()
    try:
        kinds = ("mosquitto", "rabbitmq") if args.broker == "both" else (args.broker,)
        for kind in kinds:
            rows = run_mosquitto(pg, args, work) if kind == "mosquitto" else run_rabbitmq(pg, args, work)
            base = rows[0][1]
            print(f"\n{kind}: {args.msgs} messages x {args.per_msg} readings, PostgreSQL")
            for name, rate in rows:
                print(f"  {name:16s} {rate:9.0f} readings/s   {rate / base:5.2f} x plain consumer")
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
