"""Lifetime node counters (issue 14 item 7): counters restart at every boot; the storage keeps the last counters of
each (device, log, boot) and `fleet status` / the console sum them, with `logged` taken from the flash log's seq
and balanced against the records stored. Idempotent under redelivery, reordering and two writers; an older database
is backfilled from its status history. The last test runs a real simulated node that reboots."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
import time

import paho.mqtt.client as mqtt
from netnode_harness import wait_until
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.cli import main
from edgefleet.collect.collector import Collector
from edgefleet.collect.fleet import device_summary
from edgefleet.collect.storage import Batch, open_storage
from edgefleet.console.data import fleet_rows
from edgefleet.sim.simulate import Fleet, power_cut_loss

_wait = functools.partial(wait_until, every=0.3)  # the shared poll loop, at this file's pace

LOG = "a1b2c3d4"


def _status(boot: int, seq: int, logged: int, published: int, uptime: int, dropped: int = 0) -> str:
    return json.dumps(
        {"v": 2, "dev": "n1", "log": LOG, "state": "online", "ts": 1764180000000 + uptime, "fw": "0.1.0",
         "board": "sim", "model": None, "uptime_s": uptime, "heap_free": 50000, "boot": boot, "seq": seq,
         "safe_mode": False, "error": None,
         "counters": {"sampled": 2 * logged, "rejected": 0, "logged": logged, "dropped": dropped,
                      "published": published, "reconnects": 0, "corrupt": 0, "stored": published, "resends": 0,
                      "stored_bad": 0, "acked": seq},
         "e_buffer": 1.0, "r_noise": 0.0}
    )  # fmt: skip


def _reading(seq: int) -> tuple:
    return ("n1", LOG, seq, 1000 + seq, "env", 0, '{"temperature": 21.5}', 5000 + seq)


# boot 1 logs seq 1..20 (two statuses), boot 2 logs 21..25; boot 3 starts at 31: 26..30 were logged by boot 2 after
# its last status (a power cut), and its first status says seq 34 with 4 logged.
BOOT1 = [_status(1, 10, 10, 8, 10), _status(1, 20, 20, 20, 20)]
BOOT2 = [_status(2, 25, 5, 5, 5)]
BOOT3 = [_status(3, 34, 4, 1, 4)]


def _write_statuses(s, bodies: list[str], t0: int = 1000) -> None:
    for i, body in enumerate(bodies):
        s.write(Batch(statuses=[("n1", t0 + i, "online", True, body)], seen={"n1": t0 + i}))


def _lifetime(s) -> dict:
    (row,) = s.fleet()
    return device_summary(row)["lifetime"]


def test_lifetime_sums_boots_and_balances_logged_with_records(db_url, capsys) -> None:
    s = open_storage(db_url)
    try:
        s.write(Batch(readings={"n1": [_reading(q) for q in range(1, 26)]}, seen={"n1": 900}))
        _write_statuses(s, BOOT1 + BOOT2)
        lt = _lifetime(s)
        assert lt["boots"] == 2 and lt["counters"]["logged"] == 25 == lt["records"]
        assert (lt["counters"]["published"], lt["counters"]["sampled"], lt["logged_counted"]) == (25, 50, 25)
        assert lt["balance"] == "logged = records"
        # redelivered and out-of-order statuses (an old one of boot 1 after boot 2's) change nothing
        _write_statuses(s, [BOOT1[0], BOOT2[0], BOOT1[1], BOOT1[0]], t0=2000)
        assert _lifetime(s) == lt
        # boot 3 after a power cut: 26..30 were logged after boot 2's last status; its seq still counts them
        _write_statuses(s, BOOT3, t0=3000)
        lt = _lifetime(s)
        assert (lt["boots"], lt["counters"]["logged"], lt["logged_counted"]) == (3, 34, 29)
        assert lt["logged_after_last_status"] == 5 and lt["not_yet_stored"] == 9
        assert lt["balance"] == "logged 34 = records 25 + 9 not yet stored"
        # the node republishes 26..34 from flash, except 28 (the RAM batch a power cut lost)
        s.write(Batch(readings={"n1": [_reading(q) for q in range(26, 35) if q != 28]}, seen={"n1": 4000}))
        lt = _lifetime(s)
        assert (lt["records"], lt["missing"], lt["lost"], lt["not_yet_stored"]) == (33, 1, 1, 0)
        assert lt["balance"] == "logged 34 = records 33 + 1 lost (power cut, corrupt sector, or still in flight)"
    finally:
        s.close()
    assert main(["fleet", "status", "--db", db_url]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("n1 "))
    assert " 34 " in line and "logged 34 = records 33 + 1 lost" in line, out
    assert "counted up to its last status" in out
    assert main(["fleet", "status", "--db", db_url, "--json"]) == 0
    (dev,) = json.loads(capsys.readouterr().out)["devices"]
    assert dev["lifetime"]["counters"]["logged"] == 34 and dev["counters"]["logged"] == 4  # lifetime vs this boot
    s = open_storage(db_url)
    try:  # the console's rows come from the same function
        (crow,) = fleet_rows(s)
        assert crow["lifetime"] == dev["lifetime"] and crow["logged"] == 34
    finally:
        s.close()


def test_two_writers_and_a_backfilled_old_database_agree(db_url) -> None:
    """Two collectors (two connections) write the same statuses at once, in opposite orders: one row per boot, the
    same lifetime. A database of schema v2 (no boot_counters) gets them from its status history when opened."""
    s1, s2 = open_storage(db_url), open_storage(db_url)
    try:
        bodies = BOOT1 + BOOT2 + BOOT3
        threads = [
            threading.Thread(target=_write_statuses, args=(s1, bodies)),
            threading.Thread(target=_write_statuses, args=(s2, bodies[::-1], 5000)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        lt = _lifetime(s1)
        assert (lt["boots"], lt["counters"]["logged"], lt["counters"]["published"]) == (3, 34, 26)
        s1.execute("DROP TABLE boot_counters")
        s1.execute("DELETE FROM schema_version WHERE version = 3")
        s1.conn.commit()
    finally:
        s1.close()
        s2.close()
    s = open_storage(db_url)
    try:
        assert s.schema_version() == 3
        assert _lifetime(s) == lt
    finally:
        s.close()


def _summary(db: str) -> dict | None:
    s = open_storage(db, create=False)
    try:
        rows = s.fleet()
    finally:
        s.close()
    return device_summary(rows[0]) if rows else None


OFF = {"env": 0, "imu": 0, "soil": 0, "air": 0}


@contextlib.contextmanager
def _node(mqtt_broker, tmp_path, status_interval_s: int = 1):
    """One sim node logging env at 5 Hz, the collector on SQLite, and a function sending it a command."""
    db = f"sqlite:///{tmp_path}/fleet.db"
    store = open_storage(db)
    collector = Collector(mqtt_broker.url, store, client_id="lifetime-collector", batch_ms=10)
    fleet = Fleet(
        tmp_path / "w", 1, broker=mqtt_broker, status_interval_s=status_interval_s, config={"rates": {**OFF, "env": 5}}
    )
    op = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lifetime-op")

    def cmd(cid: str, name: str, args: dict | None = None) -> None:
        body = {"v": 1, "id": cid, "cmd": name, **({"args": args} if args else {})}
        op.publish("edgefleet/node-001/cmd", json.dumps(body), qos=1).wait_for_publish(5)

    try:
        collector.start()
        fleet.start()
        op.connect(mqtt_broker.host, mqtt_broker.port)
        op.loop_start()
        yield db, fleet, cmd
    finally:
        op.loop_stop()
        fleet.close()
        collector.stop()
        store.close()


def _logging(db: str, boot: int, n: int) -> dict:
    return _wait(lambda: (d := _summary(db)) and d["boot"] == boot and d["counters"].get("logged", 0) >= n and d,
                 40, f"boot {boot} logging")  # fmt: skip


def _settled(db: str) -> dict:
    """Sampling is off: wait until the node's stored mark reaches the last record in the database and nothing the
    node numbered is left unstored."""

    def done():
        d = _summary(db)
        if not d or d["counters"].get("acked") != d["max_seq"] or d["lifetime"]["not_yet_stored"]:
            return None
        return d

    return _wait(done, 40, "every record stored and acked")


def test_node_reboot_keeps_lifetime_counters_growing_and_logged_equals_stored(mqtt_broker, tmp_path, capsys) -> None:
    """A real sim node against mosquitto and the collector: its counters restart at the `reboot` command, the
    lifetime ones keep growing; once it stops sampling, lifetime logged equals the records stored."""
    with _node(mqtt_broker, tmp_path) as (db, _fleet, cmd):
        d1 = _logging(db, 1, 10)
        cmd("r1", "reboot")
        d2 = _logging(db, 2, 3)
        lt1, lt2 = d1["lifetime"], d2["lifetime"]
        # this boot's counter restarted; the lifetime one is boot 1's last counters plus this boot's
        assert d2["counters"]["logged"] < lt1["counters"]["logged"]
        assert lt2["boots"] == 2 and lt2["counters"]["logged"] >= lt1["counters"]["logged"] + d2["counters"]["logged"]
        for c in ("sampled", "published", "stored"):
            assert lt2["counters"][c] > d2["counters"][c], (c, lt2, d2["counters"])
        cmd("s1", "set_config", {"rates": OFF})
        d = _settled(db)
        lt = d["lifetime"]
        assert lt["counters"]["logged"] == lt["records"] == d["records"] >= lt2["counters"]["logged"], lt
        assert lt["logged_counted"] <= lt["counters"]["logged"] and lt["balance"] == "logged = records", lt
    assert main(["fleet", "status", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "logged = records" in next(x for x in out.splitlines() if x.startswith("node-001 ")), out


def _freeze_after_a_record_past_the_last_status(db: str, pid: int) -> None:
    """SIGSTOP the node at a moment when the database holds a record it logged after its latest status (retrying
    until it does), so the SIGKILL that follows certainly cuts a boot with records its counters never reported."""
    for _ in range(40):
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.5)  # what the node had sent lands in the database
        d = _summary(db)
        if d and d["lifetime"]["logged_after_last_status"] > 0:
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.3)
    raise AssertionError("the node never had a record stored past its latest status")


def test_power_cut_counts_what_the_log_numbered_and_names_what_was_lost(mqtt_broker, tmp_path) -> None:
    """A power cut (SIGKILL) ends a boot without a last status: the boots' counters summed miss what it logged
    after its last status, lifetime logged (the log's seq) does not, and the balance names every record not
    stored (at most the RAM batch a power cut loses)."""
    with _node(mqtt_broker, tmp_path, status_interval_s=2) as (db, fleet, cmd):
        _logging(db, 1, 5)
        _freeze_after_a_record_past_the_last_status(db, fleet.nodes[0].pid)
        fleet.kill(0)
        fleet.restart(0)
        _logging(db, 2, 3)
        cmd("s1", "set_config", {"rates": OFF})
        d = _settled(db)
    lt = d["lifetime"]
    assert lt["boots"] == 2 and lt["records"] == d["records"]
    assert lt["counters"]["logged"] == lt["records"] + lt["lost"] and lt["lost"] <= power_cut_loss(), lt
    # boot 1's last counters miss what it logged after its last status; the log's seq counts it
    assert lt["logged_counted"] < lt["counters"]["logged"], lt
    assert lt["logged_after_last_status"] == lt["counters"]["logged"] - lt["logged_counted"], lt
    assert lt["balance"] == ("logged = records" if not lt["lost"] else
                             f"logged {lt['counters']['logged']} = records {lt['records']} + {lt['lost']} lost "
                             "(power cut, corrupt sector, or still in flight)"), lt  # fmt: skip
