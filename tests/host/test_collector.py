"""The collector end to end: real mosquitto, the collector as a subprocess (`python -m edgefleet.cli collect`),
SQLite and a real PostgreSQL (every test runs on both through the `db_url` fixture)."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgefleet.collect.storage import open_storage
from edgefleet.collect.storage.base import DEAD_LETTER_CAP
from edgefleet.sim.fleetsim import Publisher, reading, telemetry_payload
from edgefleet.wire import protocol

ROOT = Path(__file__).resolve().parents[2]
PER_MSG = 20  # readings per message: a node's 2 KB batch holds about this many env readings


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "host") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *args], env=_env(), capture_output=True, text=True, timeout=120
    )


class CollectorProc:
    """`edgefleet collect` as a child process, with its log in a file."""

    def __init__(self, broker, db_url: str, log: Path, client_id: str = "collector-1", *extra: str) -> None:
        self.argv = [
            sys.executable, "-m", "edgefleet.cli", "collect", "--broker", broker.url, "--db", db_url,
            "--client-id", client_id, *extra,
        ]  # fmt: skip
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> CollectorProc:
        before = self.log.read_bytes().count(b"connected to") if self.log.exists() else 0
        f = self.log.open("ab")
        self.proc = subprocess.Popen(self.argv, env=_env(), stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while self.log.read_bytes().count(b"connected to") <= before:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "collector did not connect"
            time.sleep(0.05)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(60)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def collector(mqtt_broker, db_url, tmp_path):
    procs: list[CollectorProc] = []

    def make(client_id: str = "collector-1", *extra: str) -> CollectorProc:
        c = CollectorProc(mqtt_broker, db_url, tmp_path / f"{client_id}.log", client_id, *extra)
        procs.append(c)
        return c

    yield make
    for c in procs:
        if c.alive():
            c.proc.kill()
            c.proc.wait()


def wait_count(db_url: str, table: str, want: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        store = open_storage(db_url)
        try:
            counts = store.counts()
        finally:
            store.close()
        if counts[table] >= want or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def publish_run(
    pub: Publisher, devices: list[str], n_readings: int, progress: list[int] | None = None, duration_s: float = 0
) -> int:
    """Publish n_readings per device list in PER_MSG batches, round robin; seq starts at 1 per device.
    `duration_s` paces the run to take at least that long."""
    msgs = n_readings // PER_MSG // len(devices)
    t0 = time.monotonic()
    for i in range(msgs):
        for d in devices:
            pub.publish(f"edgefleet/{d}/telemetry", telemetry_payload(d, 1 + i * PER_MSG, PER_MSG))
        if progress is not None:
            progress[0] = (i + 1) * PER_MSG * len(devices)
        if duration_s:
            delay = t0 + (i + 1) * duration_s / msgs - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return msgs * PER_MSG * len(devices)


def assert_exactly_once(db_url: str, devices: list[str], per_device: int) -> None:
    store = open_storage(db_url)
    try:
        assert store.counts()["readings"] == per_device * len(devices)
        rows = {r.device: r for r in store.fleet()}
        for d in devices:
            r = rows[d]
            assert (r.records, r.min_seq, r.max_seq, r.missing) == (per_device, 1, per_device, 0)
        # The stored values are those sent (checked on a sample).
        sample = {(d, s): v for d, s, _, _, _, v in store.iter_readings(devices=[devices[0]])}
        assert sample[(devices[0], 77)] == reading(77, 0)["vals"]
    finally:
        store.close()


@pytest.mark.slow
def test_kill9_three_times_loses_nothing(mqtt_broker, db_url, collector) -> None:
    """100,000 readings; the collector is killed with SIGKILL three times mid-run and restarted."""
    devices = [f"node-{i}" for i in range(4)]
    total = 100_000
    c = collector("collector-1").start()
    pub = Publisher(mqtt_broker.host, mqtt_broker.port, "pub-kill", inflight=200)
    progress = [0]
    # Paced over 8 s: the collector drains a restart's backlog faster than a restart takes, so an unpaced run
    # could end before the third kill and the test would no longer kill mid-run.
    t = threading.Thread(target=publish_run, args=(pub, devices, total, progress, 8.0))
    t.start()
    rng = random.Random(4)
    stored_at_kill = []
    for frac in (0.2, 0.45, 0.7):
        while progress[0] < total * frac and t.is_alive():
            time.sleep(0.01)
        # Let this incarnation commit something first, so each kill lands mid-stream, not before the first batch.
        wait_count(db_url, "readings", (stored_at_kill[-1] if stored_at_kill else 0) + 1)
        time.sleep(rng.uniform(0, 0.05))  # any moment: mid-batch, mid-commit, mid-ack
        c.kill9()
        stored_at_kill.append(wait_count(db_url, "readings", 0)["readings"])
        time.sleep(0.3)  # the broker queues for the persistent session meanwhile
        c.start()
    t.join()
    pub.drain()
    pub.close()
    # The kills happened mid-run: something stored, not everything.
    assert len(stored_at_kill) == 3 and all(0 < n < total for n in stored_at_kill), stored_at_kill
    counts = wait_count(db_url, "readings", total)
    assert counts["readings"] == total, counts
    assert counts["dead_letter"] == 0
    assert_exactly_once(db_url, devices, total // len(devices))
    assert c.stop() == -signal.SIGINT  # drained, then died by the SIGINT it got (shell: 130)
    assert "session present: True" in c.log.read_text()


def test_broker_restart_mid_run(mqtt_broker, db_url, collector) -> None:
    devices = ["n1", "n2"]
    c = collector("collector-1").start()
    pub = Publisher(mqtt_broker.host, mqtt_broker.port, "pub-restart", inflight=100)
    publish_run(pub, devices, 4000)
    pub.drain()
    mqtt_broker.restart()
    # Second half: same devices, later seqs; publish as soon as the publisher has reconnected.
    for i in range(100, 200):
        for d in devices:
            pub.publish(f"edgefleet/{d}/telemetry", telemetry_payload(d, 1 + i * PER_MSG, PER_MSG))
    pub.drain()
    pub.close()
    counts = wait_count(db_url, "readings", 8000)
    assert counts["readings"] == 8000, counts
    assert_exactly_once(db_url, devices, 4000)
    assert c.alive()
    assert "disconnected from broker" in c.log.read_text()


def _garbage(rng: random.Random) -> list[tuple[str, bytes, str]]:
    """(topic, payload, expected reason) for every kind of bad input the collector must survive."""
    good_rec = {"seq": 1, "ts": 1, "sensor": "env", "flags": 0, "vals": {"t": 1.0}}
    items = [
        ("edgefleet/bad1/telemetry", rng.randbytes(300), None),  # random bytes: not UTF-8 or not JSON
        # over the collector's 64 KiB limit, under the broker's message_size_limit (larger never reaches the collector)
        ("edgefleet/bad1/telemetry", b"x" * (100 * 1024), "payload too large"),
        ("edgefleet/bad1/bogus", b"{}", "unknown topic"),
        ("edgefleet/bad1/a/telemetry", b"{}", "unknown topic"),
        ("edgefleet/bad dev/telemetry", b"{}", "bad device id"),
        ("edgefleet/bad1/telemetry", b'{"v":1,"dev":"bad1","recs":[{"seq":"1"}]}', "rec 0: bad seq"),
        ("edgefleet/bad1/telemetry", protocol.encode({"v": 1, "dev": "other", "recs": [good_rec]}),
         "dev does not match topic"),
        ("edgefleet/bad1/telemetry", protocol.encode({"v": 9, "dev": "bad1", "recs": [good_rec]}), "unknown version"),
        ("edgefleet/bad1/telemetry", b'{"v":1,"dev":"bad1","recs":[{"seq":1,"ts":1,"sensor":"env","flags":0,'
         b'"vals":{"t":NaN}}]}', "non-finite number"),
        ("edgefleet/bad1/telemetry", b'{"v":1,"dev":"bad1","recs":[{"seq":1,"ts":1,"sensor":"env","flags":0,'
         b'"vals":{"t":1e999}}]}', "rec 0: bad value for 't'"),
        ("edgefleet/bad1/status", b'{"v":1,"dev":"bad1","state":"online"}', "missing ts"),
        ("edgefleet/bad1/event", b'{"v":1,"dev":"bad1","recs":[{"seq":1}]}', "rec 0: bad ts"),
        ("edgefleet/bad1/ack", b'{"v":1,"dev":"bad1","id":"x","ok":"yes"}', "bad ok"),
        ("edgefleet/bad1/telemetry", b"", "malformed JSON"),
        ("edgefleet/bad1/telemetry", b'"just a string"', "not a JSON object"),
    ]  # fmt: skip
    return items


def test_garbage_barrage_while_valid_traffic_flows(mqtt_broker, db_url, collector) -> None:
    c = collector("collector-1").start()
    good = Publisher(mqtt_broker.host, mqtt_broker.port, "pub-good", inflight=100)
    bad = Publisher(mqtt_broker.host, mqtt_broker.port, "pub-bad", inflight=20)
    rng = random.Random(7)
    t = threading.Thread(target=publish_run, args=(good, ["g1", "g2"], 20_000))
    t.start()
    sent_bad = []
    for _ in range(3):
        for topic, payload, reason in _garbage(rng):
            bad.publish(topic, payload)
            sent_bad.append((topic, reason))
    t.join()
    good.drain()
    bad.drain()
    good.close()
    bad.close()
    counts = wait_count(db_url, "dead_letter", len(sent_bad))
    counts = wait_count(db_url, "readings", 20_000)
    assert counts["readings"] == 20_000
    assert counts["dead_letter"] == len(sent_bad)
    assert c.alive(), c.log.read_text()[-3000:]
    store = open_storage(db_url)
    try:
        dead = store.dead_letters()
        assert_exactly_once(db_url, ["g1", "g2"], 10_000)
    finally:
        store.close()
    got = sorted((topic, reason) for _, topic, reason, _, _ in dead)
    for topic, reason in sorted(sent_bad, key=lambda x: x[1] is None):  # random bytes (any reason) last
        match = [g for g in got if g[0] == topic and (reason is None or g[1] == reason)]
        assert match, (topic, reason, got)
        got.remove(match[0])
    assert all(len(p) <= DEAD_LETTER_CAP and size >= len(p) for _, _, _, size, p in dead)
    assert any(size == 100 * 1024 for _, _, _, size, _ in dead)
    assert "dead letter: payload too large" in c.log.read_text()


def test_two_collectors_share_the_load(mqtt_broker, db_url, collector) -> None:
    """--group: two collectors on one broker split the traffic; every record is stored exactly once."""
    c1 = collector("collector-a", "--group", "fleet").start()
    c2 = collector("collector-b", "--group", "fleet").start()
    pub = Publisher(mqtt_broker.host, mqtt_broker.port, "pub-group", inflight=100)
    devices = ["s1", "s2", "s3"]
    publish_run(pub, devices, 30_000)
    pub.drain()
    pub.close()
    counts = wait_count(db_url, "readings", 30_000)
    assert counts["readings"] == 30_000
    assert_exactly_once(db_url, devices, 10_000)
    assert c1.stop() == -signal.SIGINT and c2.stop() == -signal.SIGINT
    stored = []
    for c in (c1, c2):
        m = re.search(r"stopped: (\d+) messages, (\d+) records stored, (\d+) duplicates", c.log.read_text())
        assert m, c.log.read_text()[-2000:]
        stored.append(int(m.group(2)))
        assert int(m.group(3)) == 0
    assert sum(stored) == 30_000
    assert min(stored) > 0, stored  # both members did work


def _status(device: str, seq: int, **counters: int) -> bytes:
    return protocol.encode(
        {"v": 1, "dev": device, "state": "online", "ts": 1764180000000, "fw": "0.1.0", "board": "sim",
         "model": None, "uptime_s": 5, "heap_free": 60000, "boot": 2, "seq": seq, "safe_mode": False,
         "error": None, "counters": {"sampled": 100, "logged": 50, "dropped": 3, "published": 40, **counters},
         "e_buffer": 0.8, "r_noise": 0.0}
    )  # fmt: skip


def test_gaps_duplicates_out_of_order_and_fleet_status(mqtt_broker, db_url, collector) -> None:
    c = collector("collector-1").start()
    pub = Publisher(mqtt_broker.host, mqtt_broker.port, "gap-pub")
    seqs = [*range(15, 21), *range(1, 11), 30, 5, 6]  # out of order, a redelivery of 5 and 6, gaps 11-14, 21-29
    for s in seqs:
        pub.publish("edgefleet/gappy/telemetry", protocol.encode(protocol.telemetry("gappy", [reading(s, s)])))
    ev = {"seq": 31, "ts": 31, "flags": 0, "kind": "class", "label": "running", "score": 0.9, "model": "m1",
          "action": "relay:on"}  # fmt: skip
    pub.publish("edgefleet/gappy/event", protocol.encode(protocol.events("gappy", [ev])))
    # An event reusing a reading's seq is the same record id: stored once, counted as duplicate.
    pub.publish("edgefleet/gappy/event", protocol.encode(protocol.events("gappy", [{**ev, "seq": 30}])))
    pub.publish("edgefleet/gappy/status", _status("gappy", 31), retain=True)
    pub.publish("edgefleet/gappy/ack", b'{"v":1,"dev":"gappy","id":"c-1","ok":true,"result":{}}')
    pub.drain()
    pub.close()
    wait_count(db_url, "acks", 1)
    counts = wait_count(db_url, "events", 1)
    assert (counts["readings"], counts["events"], counts["status_history"]) == (17, 1, 1)
    r = _cli("fleet", "status", "--db", db_url, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    (dev,) = data["devices"]
    assert dev["device"] == "gappy"
    assert dev["gaps"] == [[11, 14], [21, 29]]
    assert dev["missing"] == 13
    assert (dev["records"], dev["min_seq"], dev["max_seq"], dev["duplicates"]) == (18, 1, 31, 3)
    assert dev["state"] == "online"
    assert dev["status"]["counters"]["dropped"] == 3
    table = _cli("fleet", "status", "--db", db_url)
    assert table.returncode == 0
    assert re.search(
        r"gappy\s+online\s+\S+ \S+\s+18\s+1 \(\w{8}\)\s+\S+ \S+\s+1-31\s+13\s+11-14,21-29\s+0\s+3", table.stdout
    ), table.stdout
    assert "1 devices, 1 online, 13 records missing upstream" in table.stdout
    assert c.alive()


def test_fleet_status_offline_via_last_will(mqtt_broker, db_url, collector) -> None:
    c = collector("collector-1").start()
    node = Publisher(mqtt_broker.host, mqtt_broker.port, "node-lwt", will_device="lwt1")
    node.publish("edgefleet/lwt1/status", _status("lwt1", 0), retain=True)
    node.drain()
    wait_count(db_url, "status_history", 1)
    assert json.loads(_cli("fleet", "status", "--db", db_url, "--json").stdout)["devices"][0]["state"] == "online"
    node.close(clean=False)  # the connection drops without DISCONNECT: the broker publishes the last will
    wait_count(db_url, "status_history", 2, timeout=30)
    (dev,) = json.loads(_cli("fleet", "status", "--db", db_url, "--json").stdout)["devices"]
    assert dev["state"] == "offline"
    assert dev["status"]["counters"]["logged"] == 50  # the last online status is kept beside the offline state
    assert "lwt1" in _cli("fleet", "status", "--db", db_url).stdout
    c.proc.send_signal(signal.SIGTERM)  # like Ctrl-C: flush, disconnect, then die by the signal (shell: 143)
    assert c.proc.wait(30) == -signal.SIGTERM
    assert "stopped: " in c.log.read_text()


def test_export_round_trip(mqtt_broker, db_url, collector, tmp_path) -> None:
    c = collector("collector-1").start()
    pub = Publisher(mqtt_broker.host, mqtt_broker.port, "exp-pub")
    sent = []
    for d in ("b-node", "a-node"):
        recs = []
        for s in range(1, 31):
            if s % 3 == 0:
                rec = {"seq": s, "ts": 1000 * s, "sensor": "imu", "flags": 1,
                       "vals": {"ax": s / 7, "ay": -0.1, "az": 0.98, "gx": 1e-7, "gy": 0, "gz": 123456.789}}  # fmt: skip
            else:
                rec = reading(s, 1000 * s)
            recs.append(rec)
            sent.append((d, rec))
        random.Random(1).shuffle(recs)
        for i in range(0, 30, 7):
            pub.publish(f"edgefleet/{d}/telemetry", protocol.encode(protocol.telemetry(d, recs[i : i + 7])))
    pub.drain()
    pub.close()
    wait_count(db_url, "readings", 60)
    c.stop()
    out = tmp_path / "data.csv"
    r = _cli("-q", "export", "--db", db_url, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "exported 60 readings" in r.stdout
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    header = out.read_text().splitlines()[0].split(",")
    assert header[:6] == ["device", "seq", "ts_ms", "sensor", "flags", "label"]
    assert header[6] == "rate_hz" and set(header[7:]) == {
        "temperature",
        "humidity",
        "pressure",
        "ax",
        "ay",
        "az",
        "gx",
        "gy",
        "gz",
    }
    assert [(r["device"], int(r["seq"])) for r in rows] == sorted((d, rec["seq"]) for d, rec in sent)
    by_key = {(d, rec["seq"]): rec for d, rec in sent}
    for row in rows:
        rec = by_key[(row["device"], int(row["seq"]))]
        assert (int(row["ts_ms"]), row["sensor"], int(row["flags"]), row["label"]) == (
            rec["ts"], rec["sensor"], rec["flags"], "")  # fmt: skip
        for ch in header[7:]:
            if ch in rec["vals"]:
                assert float(row[ch]) == rec["vals"][ch]  # exact: floats round-trip through repr
            else:
                assert row[ch] == ""
    # Filters: device, sensor, time window [since, until).
    out2 = tmp_path / "imu.csv"
    r = _cli("-q", "export", "--db", db_url, "--out", str(out2), "--device", "a-node", "--sensor", "imu",
             "--since", "3000", "--until", "1970-01-01T00:00:15")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows2 = list(csv.DictReader(out2.open()))
    assert [int(r["seq"]) for r in rows2] == [3, 6, 9, 12]
    assert out2.read_text().splitlines()[0] == "device,seq,ts_ms,sensor,flags,label,rate_hz,ax,ay,az,gx,gy,gz"
    assert [r["rate_hz"] for r in rows2][1:] == ["0.3333"] * 3  # seqs 3, 6, 9, 12 of imu: ts steps of 3 s


def test_cli_errors_are_messages_not_tracebacks(tmp_path) -> None:
    for argv in (
        ["collect", "--db", "mysql://x"],
        ["collect", "--db", f"sqlite:///{tmp_path}/f.db", "--broker", "http://x"],
        ["collect", "--db", f"sqlite:///{tmp_path}/f.db", "--broker", "mqtt://127.0.0.1:1"],
        ["fleet", "status", "--db", f"sqlite:///{tmp_path}/nodir/f.db"],
        ["export", "--db", f"sqlite:///{tmp_path}/f.db", "--out", str(tmp_path / "o.csv"), "--since", "yesterday"],
    ):
        r = _cli(*argv)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert "error:" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI."""
    p = {n: d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "client.key",
                            "client.csr", "client.pem", "ext.cnf")}  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edgefleet-test-ca",
             "-keyout", str(p["ca.key"]), "-out", str(p["ca.pem"]))  # fmt: skip
    p["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "collector")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(p[f"{name}.key"]),
                 "-out", str(p[f"{name}.csr"]))  # fmt: skip
        _openssl("x509", "-req", "-in", str(p[f"{name}.csr"]), "-CA", str(p["ca.pem"]), "-CAkey", str(p["ca.key"]),
                 "-CAcreateserial", "-days", "2", "-out", str(p[f"{name}.pem"]), "-extfile", str(p["ext.cnf"]))  # fmt: skip
    return p


def test_tls_with_client_certificate(tmp_path, db_url) -> None:
    """mqtts:// with --ca/--cert/--key against a mosquitto listener that requires client certificates."""
    from edgefleet.broker.mosquitto import Mosquitto

    pki = _make_pki(tmp_path)
    broker = Mosquitto(data_dir=tmp_path / "tls-broker")
    with broker.conf.open("a") as f:  # TLS options apply to the config's (only) listener
        f.write(f"cafile {pki['ca.pem']}\ncertfile {pki['server.pem']}\nkeyfile {pki['server.key']}\n")
        f.write("require_certificate true\n")
    with broker:
        tls_url = f"mqtts://127.0.0.1:{broker.port}"
        base = ["collect", "--broker", tls_url, "--db", db_url, "--client-id", "tls-1", "--ca", str(pki["ca.pem"])]
        log = tmp_path / "tls.log"
        c = CollectorProc(broker, db_url, log)
        c.argv = [sys.executable, "-m", "edgefleet.cli", *base, "--cert", str(pki["client.pem"]),
                  "--key", str(pki["client.key"])]  # fmt: skip
        c.start()
        pub = mqtt_tls_publisher(broker.port, pki)
        pub.publish("edgefleet/tls-node/telemetry", telemetry_payload("tls-node", 1, 20), qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        assert wait_count(db_url, "readings", 20)["readings"] == 20
        assert c.stop() == -signal.SIGINT  # drained, then died by the SIGINT it got (shell: 130)
        # Without our CA the broker's certificate does not verify: a clear error, exit 2.
        r = _cli(*base[:-2], "--client-id", "tls-2")
        assert r.returncode == 2 and "certificate verify failed" in r.stderr and "Traceback" not in r.stderr, r.stderr
        # Our CA but no client certificate: the broker drops us after the handshake; no retrying forever.
        r = _cli(*base[:-2], "--client-id", "tls-3", "--ca", str(pki["ca.pem"]), "--connect-timeout", "3")
        assert r.returncode == 2 and "gave no session" in r.stderr and "Traceback" not in r.stderr, r.stderr


def mqtt_tls_publisher(port: int, pki: dict[str, Path]):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tls-pub")
    c.tls_set(ca_certs=str(pki["ca.pem"]), certfile=str(pki["client.pem"]), keyfile=str(pki["client.key"]))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c
