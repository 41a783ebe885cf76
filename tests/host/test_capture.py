"""`edgefleet capture`: a real sim node (MicroPython unix port) logging IMU at 1 Hz (every 10th reading) is
switched to full rate over MQTT for a few seconds, labelled, switched back; the readings land through a real
collector in SQLite, are exported, and train's loader keeps the captured interval at 10 Hz with its label."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netnode_harness import Subscriber, wait_until

from edgefleet.collect.export import export_csv
from edgefleet.collect.storage import open_storage
from edgefleet.errors import EdgefleetError
from edgefleet.model import capture, datasets

ROOT = Path(__file__).resolve().parents[2]


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "host"))
    return subprocess.Popen([sys.executable, "-m", "edgefleet.cli", *argv], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _imu_rows(db: str) -> int:
    store = open_storage(db)
    try:
        return sum(1 for r in store.iter_readings(None, None, None, ["imu"]))
    finally:
        store.close()


def test_capture_full_rate_labelled_data_through_the_collector(tmp_path, mqtt_broker):
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    col = _start(
        ["collect", "--broker", mqtt_broker.url, "--db", db, "--client-id", "cap-collector"], tmp_path / "c.log"
    )
    sub = Subscriber(mqtt_broker.host, mqtt_broker.port, "cap-1")
    node = _start(["node", "--device-id", "cap-1", "--broker", mqtt_broker.url, "--flash", str(tmp_path / "f.img")],
                  tmp_path / "n.log")  # fmt: skip
    try:
        wait_until(lambda: any(m["state"] == "online" for m, _ in sub.topic("status")), 60, "the node online")
        wait_until(lambda: _imu_rows(db) >= 2, 60, "1 Hz imu rows in the database")
        captures = tmp_path / "captures.csv"
        rows = capture.capture(mqtt_broker.url, ["cap-1"], "imu", "walking", 5.0, captures)
        assert rows[0].end_ms - rows[0].start_ms >= 5000
        time.sleep(3)  # a few slow rows after the capture, and the last full-rate batch delivered
        wait_until(lambda: _imu_rows(db) >= 45, 30, "the captured rows stored")
    finally:
        _stop(node)
        _stop(col)
        sub.close()
    csv_path = tmp_path / "export.csv"
    store = open_storage(db)
    try:
        export_csv(store, csv_path, sensors=["imu"])
    finally:
        store.close()
    w = datasets.load(str(csv_path), 10, 10, "imu", labels=str(captures))
    assert w.rate_hz == pytest.approx(10, rel=0.05)
    assert len(w.y) >= 4 and set(w.y.tolist()) == {"walking"}
    everything = datasets.load(str(csv_path), 4, 4, "imu")  # the whole export mixes 1 Hz and 10 Hz rows
    assert len(everything.x) * 4 > len(w.x) * 10
    acks = [m for m, _ in sub.topic("ack")]
    assert [a["result"]["log_every"]["imu"] for a in acks if a.get("ok")] == [1, 10]
    assert captures.read_text().splitlines()[0] == "device,sensor,label,start_ms,end_ms"


def test_capture_errors_are_clear(tmp_path, mqtt_broker):
    with pytest.raises(EdgefleetError, match="bad duration"):
        capture.parse_duration("soon")
    assert capture.parse_duration("2m") == 120 and capture.parse_duration("90") == 90
    with pytest.raises(EdgefleetError, match="bad label"):
        capture.capture(mqtt_broker.url, ["n1"], "imu", "a,b", 1.0, tmp_path / "c.csv")
    with pytest.raises(EdgefleetError, match=r"no ack for set_config from ghost within 1 s"):
        capture.capture(mqtt_broker.url, ["ghost"], "imu", "idle", 1.0, tmp_path / "c.csv", timeout=1.0)
    assert not (tmp_path / "c.csv").exists()
    with pytest.raises(EdgefleetError, match="not a captures file"):
        (tmp_path / "bad.csv").write_text("x\n")
        datasets.load(str(tmp_path / "bad.csv"), 4, 4, labels=str(tmp_path / "bad.csv"))
