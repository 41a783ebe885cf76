"""Collector throughput: publishers -> mosquitto -> collector -> committed SQLite rows, against the raw receive
rate of `mosquitto_sub -q 1` on the same messages in the same run.

Publishers are CPython processes sending the nodes' telemetry format (--per-msg readings per message, QoS 1, at
most --pub-inflight unacknowledged each: paho silently loses messages past 65,535 queued). The collector is the
same `Collector` class `edgefleet collect` runs, in this process. Two modes (--mode both by default):

- live: the same messages go first to `mosquitto_sub -q 1` while the publishers send, then to the collector.
  Printed: readings/s, p50/p99 publish-to-commit latency. By default the publishers send as fast as they can
  (the latency then includes the backlog); with --rate R they pace themselves to R readings/s in total, which
  shows the latency of a collector that keeps up. --collectors N adds N-1 `edgefleet collect --group` processes.
- drain: both consumers' persistent sessions exist; the publishers send everything while both are offline; then
  mosquitto_sub, and after it the collector, resume their sessions alone and are timed until the backlog is
  received / committed. No publisher competes for the CPU while a consumer is timed.

    PYTHONPATH=host .venv/bin/python bench/collector.py [--mode both] [--readings 400000] [--per-msg 20]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HOST = Path(__file__).resolve().parents[1] / "host"
sys.path.insert(0, str(HOST))

from edgefleet.broker.mosquitto import Mosquitto  # noqa: E402
from edgefleet.collect.collector import Collector  # noqa: E402
from edgefleet.collect.storage import open_storage  # noqa: E402
from edgefleet.sim.fleetsim import Publisher, reading  # noqa: E402
from edgefleet.wire import protocol  # noqa: E402

KEY = 48  # the first bytes of a payload name it: device and first seq


def make_payloads(index: int, n_msgs: int, per_msg: int, devices: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n_msgs):
        dev = f"bench-{index:02d}-{i % devices:03d}"
        first = 1 + (i // devices) * per_msg
        recs = [reading(s, 1_764_180_000_000 + s * 10) for s in range(first, first + per_msg)]
        out.append(
            (protocol.topic(protocol.DEFAULT_PREFIX, dev, "telemetry"), protocol.encode(protocol.telemetry(dev, recs)))
        )
    return out


def publisher_proc(index, host, port, n_msgs, per_msg, devices, inflight, msg_rate, go, ready, results) -> None:
    payloads = make_payloads(index, n_msgs, per_msg, devices)
    pub = Publisher(host, port, f"bench-pub-{index}-{time.monotonic_ns()}", inflight=inflight)
    ready.put(index)
    go.wait()
    sent = []
    t0 = time.monotonic()
    for i, (topic, payload) in enumerate(payloads):
        if msg_rate:  # paced: message i is due at t0 + i / rate
            delay = t0 + i / msg_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        pub.publish(topic, payload)
        sent.append((payload[:KEY], time.monotonic_ns()))
    pub.drain()
    pub.close()
    results.put(sent)


def run_publishers(broker: Mosquitto, args: argparse.Namespace, n_msgs: int) -> tuple[mp.Event, list, mp.Queue]:
    ctx = mp.get_context("fork")
    go, ready, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(
            target=publisher_proc,
            args=(
                i,
                broker.host,
                broker.port,
                n_msgs,
                args.per_msg,
                args.devices,
                args.pub_inflight,
                args.rate / args.per_msg / args.publishers,
                go,
                ready,
                results,
            ),
        )
        for i in range(args.publishers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    return go, procs, results


def baseline(broker: Mosquitto, args: argparse.Namespace, n_msgs: int) -> float:
    """readings/s that mosquitto_sub -q 1 receives of the same traffic."""
    total_msgs = n_msgs * args.publishers
    go, procs, results = run_publishers(broker, args, n_msgs)
    sub = subprocess.Popen(
        [shutil.which("mosquitto_sub") or "mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
         "-t", "edgefleet/+/telemetry", "-C", str(total_msgs), "-i", "bench-sub"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)  # subscribed
    t0 = time.monotonic()
    go.set()
    sub.wait(600)
    elapsed = time.monotonic() - t0
    for _ in procs:
        results.get(timeout=120)
    for p in procs:
        p.join()
    return total_msgs * args.per_msg / elapsed


class BenchCollector(Collector):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.committed: dict[bytes, int] = {}
        self.done = threading.Event()
        self.want = 0

    def on_committed(self, items: list, committed_ms: int) -> None:
        now = time.monotonic_ns()
        for _, msg, _ in items:
            self.committed[msg.payload[:KEY]] = now
        if self.stats.stored >= self.want:
            self.done.set()


def _stored(db: str) -> int:
    store = open_storage(db)
    try:
        return store.counts()["readings"]
    finally:
        store.close()


def collect(broker: Mosquitto, args: argparse.Namespace, n_msgs: int, workdir: Path) -> dict:
    """One collector in this process (latency is measured on its messages); with --collectors N, N-1 more as
    `edgefleet collect --group` subprocesses on the same database, and completion is read from the database."""
    db = f"sqlite:///{workdir}/bench.db"
    store = open_storage(db)
    group = "bench" if args.collectors > 1 else None
    c = BenchCollector(
        broker.url, store, client_id="bench-collector", group=group, batch_max=args.batch, inflight=args.inflight
    )
    want = n_msgs * args.publishers * args.per_msg
    c.want = want
    extra = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgefleet.cli",
                "-q",
                "collect",
                "--broker",
                broker.url,
                "--db",
                db,
                "--group",
                "bench",
                "--client-id",
                f"bench-collector-{i}",
            ],
            env={**os.environ, "PYTHONPATH": str(HOST)},
        )
        for i in range(1, args.collectors)
    ]
    c.start()
    time.sleep(1.0 if extra else 0.5)
    go, procs, results = run_publishers(broker, args, n_msgs)
    t0, cpu0 = time.monotonic(), time.process_time()
    go.set()
    if extra:
        while _stored(db) < want and time.monotonic() - t0 < 600:
            time.sleep(0.05)
    else:
        c.done.wait(600)
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    sent = []
    for _ in procs:
        sent += results.get(timeout=120)
    for p in procs:
        p.join()
    c.stop()
    for p in extra:
        p.send_signal(signal.SIGINT)
        p.wait(60)
    counts = store.counts()
    dups = int(store.execute("SELECT sum(duplicates) FROM devices").fetchone()[0] or 0)
    store.close()
    lat = sorted((c.committed[k] - t) / 1e6 for k, t in sent if k in c.committed)
    return {
        "rate": want / elapsed,
        "stored": counts["readings"],
        "sent": want,
        "duplicates": dups,
        "dead": counts["dead_letter"],
        "p50": statistics.median(lat),
        "p99": lat[int(len(lat) * 0.99) - 1],
        "batches": c.stats.batches,
        "max_batch": c.stats.max_batch,
        "busy": c.stats.busy_s / elapsed,
        "cpu_us_per_msg": cpu / (c.stats.messages or 1) * 1e6,
        "writer_us_per_msg": c.stats.busy_cpu_s / (c.stats.messages or 1) * 1e6,
    }


def drain(broker: Mosquitto, args: argparse.Namespace, n_msgs: int, workdir: Path) -> dict:
    """Drain a backlog: the consumers' persistent sessions exist, the publishers send everything while the
    consumers are offline (the broker queues it), then each consumer is started alone and timed until it has
    received (baseline) or committed (collector) all of it. Nobody else needs CPU while a consumer is timed, so
    the two figures compare the consumers, not the share of the 2 cores the publishers leave them."""
    total_msgs = n_msgs * args.publishers
    want = total_msgs * args.per_msg
    sub_cmd = [shutil.which("mosquitto_sub") or "mosquitto_sub", "-h", broker.host, "-p", str(broker.port),
               "-q", "1", "-t", "edgefleet/+/telemetry", "-c", "-i", "bench-drain-sub"]  # fmt: skip
    if args.baseline_v5:
        sub_cmd += ["-V", "5", "-x", "3600"]
    db = f"sqlite:///{workdir}/drain.db"
    # 1. Create both persistent sessions and subscriptions, then go offline.
    subprocess.run([*sub_cmd, "-E"], check=True, timeout=30)
    store = open_storage(db)
    c = Collector(broker.url, store, client_id="bench-drain-collector", batch_max=args.batch, inflight=args.inflight)
    c.start()
    c._wait_first_session()
    time.sleep(0.5)  # SUBACK
    c.stop()
    # 2. Publish the backlog; Publisher.drain() returns when the broker has acknowledged (queued) every message.
    go, procs, results = run_publishers(broker, args, n_msgs)
    go.set()
    for _ in procs:
        results.get(timeout=300)
    for p in procs:
        p.join()
    # 3. Baseline: mosquitto_sub resumes its session and receives the backlog.
    t0 = time.monotonic()
    subprocess.run([*sub_cmd, "-C", str(total_msgs)], stdout=subprocess.DEVNULL, check=True, timeout=600)
    base = want / (time.monotonic() - t0)
    # 4. Collector: resumes its session, validates, writes, commits, acks.
    c = BenchCollector(
        broker.url, store, client_id="bench-drain-collector", batch_max=args.batch, inflight=args.inflight
    )
    c.want = want
    t0, cpu0 = time.monotonic(), time.process_time()
    c.start()
    c.done.wait(600)
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    c.stop()
    counts = store.counts()
    dups = int(store.execute("SELECT sum(duplicates) FROM devices").fetchone()[0] or 0)
    store.close()
    return {
        "base": base,
        "rate": want / elapsed,
        "stored": counts["readings"],
        "sent": want,
        "duplicates": dups,
        "dead": counts["dead_letter"],
        "batches": c.stats.batches,
        "max_batch": c.stats.max_batch,
        "busy": c.stats.busy_s / elapsed,
        "cpu_us_per_msg": cpu / (c.stats.messages or 1) * 1e6,
        "writer_us_per_msg": c.stats.busy_cpu_s / (c.stats.messages or 1) * 1e6,
    }


def print_live(args: argparse.Namespace, n_msgs: int, base: float, res: dict) -> None:
    pace = f"paced to {args.rate:,.0f} readings/s" if args.rate else "as fast as possible"
    print(f"== live: publishers and consumer run together ({pace})")
    print(f"baseline mosquitto_sub -q 1 : {base:10,.0f} readings/s received")
    print(
        f"collector(s) -> SQLite      : {res['rate']:10,.0f} readings/s committed by {args.collectors} process(es) "
        f"(in-process one: {res['batches']} transactions, largest {res['max_batch']} messages, "
        f"writer busy {res['busy']:.0%})"
    )
    print_cpu(res, "in-process collector, ")
    print(f"ratio collector / baseline  : {res['rate'] / base:10.2f}")
    print(f"publish-to-commit latency   : p50 {res['p50']:.1f} ms, p99 {res['p99']:.1f} ms")
    print_loss(res)


def print_drain(res: dict) -> None:
    print("== drain: the backlog queued in the broker while the consumer was offline, consumer alone on the CPU")
    print(f"baseline mosquitto_sub -q 1 : {res['base']:10,.0f} readings/s received")
    print(
        f"collector -> SQLite         : {res['rate']:10,.0f} readings/s committed "
        f"({res['batches']} transactions, largest {res['max_batch']} messages, writer busy {res['busy']:.0%})"
    )
    print_cpu(res)
    print(f"ratio collector / baseline  : {res['rate'] / res['base']:10.2f}")
    print_loss(res)


def print_cpu(res: dict, which: str = "") -> None:
    w = res["writer_us_per_msg"]
    print(
        f"collector CPU per message   : {res['cpu_us_per_msg']:10.0f} us ({which}all threads: writer thread {w:.0f} us "
        f"validating+storing, {res['cpu_us_per_msg'] - w:.0f} us MQTT thread and the rest)"
    )


def print_loss(res: dict) -> None:
    loss = res["sent"] - res["stored"]
    print(
        f"sent {res['sent']}, stored {res['stored']}, lost {loss}, duplicates {res['duplicates']}, dead {res['dead']}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("live", "drain", "both"), default="both", help="which benchmark(s) to run")
    ap.add_argument("--readings", type=int, default=400_000, help="readings per run (split over publishers)")
    ap.add_argument("--per-msg", type=int, default=20, help="readings per message (a node's 2 KB batch: ~20)")
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--devices", type=int, default=10, help="devices per publisher")
    ap.add_argument("--pub-inflight", type=int, default=500, help="max unacknowledged messages per publisher")
    ap.add_argument("--inflight", type=int, default=1000, help="collector's MQTT 5 receive maximum")
    ap.add_argument(
        "--rate", type=float, default=0, help="live: paced total readings/s (default 0: as fast as possible)"
    )
    ap.add_argument("--collectors", type=int, default=1, help="live: collector processes in one --group (default 1)")
    ap.add_argument("--batch", type=int, default=2000, help="collector's max messages per transaction")
    ap.add_argument("--baseline-v5", action="store_true", help="drain: mosquitto_sub speaks MQTT 5 (default 3.1.1)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n_msgs = args.readings // args.per_msg // args.publishers
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    lost = 0
    try:
        with Mosquitto(data_dir=workdir / "mosquitto") as broker:
            print(f"messages: {n_msgs * args.publishers} x {args.per_msg} readings from {args.publishers} publishers")
            if args.mode in ("live", "both"):
                base = baseline(broker, args, n_msgs)
                res = collect(broker, args, n_msgs, workdir)
                print_live(args, n_msgs, base, res)
                lost += res["sent"] - res["stored"]
            if args.mode in ("drain", "both"):
                res = drain(broker, args, n_msgs, workdir)
                print_drain(res)
                lost += res["sent"] - res["stored"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
