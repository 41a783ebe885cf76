"""`edgefleet simulate` and the Fleet API: the real firmware in MicroPython processes, a real mosquitto with a login
per device and the per-device ACL, the model on each node's flash."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from netnode_harness import wait_until
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.errors import EdgefleetError
from edgefleet.paths import models_dir
from edgefleet.sim.simulate import (
    Fleet,
    activity_scenario,
    basicmotions_replay,
    fault_scenario,
    power_cut_loss,
)

_wait = functools.partial(wait_until, every=0.2)  # the shared poll loop, at this file's pace

MODEL = models_dir() / "basicmotions-rf"


def _cli(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgefleet.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)  # fmt: skip


def test_simulate_cli_runs_nodes_with_the_model_and_per_device_logins(tmp_path: Path) -> None:
    work = tmp_path / "sim"
    r = _cli("simulate", "--devices", "2", "--duration", "15", "--model", str(MODEL), "--workdir", str(work),
             "--status-interval", "3")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    lines = {ln.split(":")[0]: ln for ln in r.stdout.splitlines() if ln.startswith("node-")}
    assert set(lines) == {"node-001", "node-002"}, r.stdout
    for ln in lines.values():
        logged = int(ln.split("logged ")[1].split()[0])
        published = int(ln.split("published ")[1].split()[0])
        assert logged > 10 and published > 0, ln  # the broker refuses anonymous clients: the login worked
        assert "safe_mode False" in ln, ln
    conf = (work / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file" in conf
    users = [ln.split(":")[0] for ln in (work / "broker" / "passwd").read_text().splitlines()]
    assert sorted(users) == ["collector", "node-001", "node-002", "operator"]
    assert "$7$" in (work / "broker" / "passwd").read_text(), "passwords must be hashed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "0"], "at least 1"),
        (["--model", "/nonexistent/model"], "no model file"),
        (["--broker", "http://127.0.0.1:1883"], "bad broker URL"),
        (["--scenario", "/nonexistent.json"], "cannot read scenario"),
        (["--status-interval", "0"], "--status-interval must be 1..86400"),
        (["--heap-extra", "-1000"], "--heap-extra must be 0 or more"),
        (["--duration", "-5"], "--duration must be 0"),
        (["--online-timeout", "-1"], "--online-timeout must be 0"),
    ],
)
def test_simulate_user_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    r = _cli("simulate", "--workdir", str(tmp_path / "w"), "--duration", "1", *args, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _processes_under(tmp_path) == [], "a refused run must not leave a broker (or anything) running"


def _processes_under(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmd:
            found.append(cmd)
    return found


def test_corrupt_model_file_is_refused_before_any_node_starts(tmp_path: Path) -> None:
    bad = tmp_path / "model.efm"
    data = bytearray((MODEL / "model.efm").read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(EdgefleetError, match="sha256"):
        Fleet(tmp_path / "w", 1, broker_url="mqtt://127.0.0.1:1", model=bad)


def test_replay_scenario_has_labelled_segments(tmp_path: Path) -> None:
    csv = tmp_path / "r.csv"
    segs = basicmotions_replay(csv, seed=3, cases=8)
    rows = csv.read_text().splitlines()
    assert rows[0] == "t_s,ax,ay,az,gx,gy,gz,label"
    assert len(rows) == 1 + 8 * 100  # 8 cases of 100 samples at 10 Hz
    assert [s for s, _ in segs] == [10.0 * k for k in range(8)]
    assert {lab for _, lab in segs} == {"badminton", "running", "standing", "walking"}
    assert all(
        r.split(",")[-1] == lab for (start, lab) in segs for r in rows[1 + int(start * 10) : 11 + int(start * 10)]
    )
    spec = activity_scenario(csv, 3)
    assert spec["sensors"]["imu"]["replay"]["file"] == str(csv.resolve())
    faults = fault_scenario(3, 60)["sensors"]["env"]["faults"]
    assert {f["kind"] for f in faults} == {"spike", "unplugged", "dropout", "stuck"}


def test_fleet_reboot_command_restarts_node_and_kill_restart_keep_seq(mqtt_broker, tmp_path: Path) -> None:
    """A `reboot` command makes the node exit 75; the fleet boots it again on the same flash. A SIGKILL leaves it
    down until restart(); after both, seq continues (never goes back) and the flash log is readable."""
    fleet = Fleet(tmp_path / "w", 1, broker=mqtt_broker, status_interval_s=2)
    try:
        fleet.start()
        _wait(lambda: fleet.counters().get("node-001", {}).get("published", 0) > 3, 30, "first records published")
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t-cmd")
        c.connect(mqtt_broker.host, mqtt_broker.port)
        c.loop_start()
        c.publish("edgefleet/node-001/cmd", json.dumps({"v": 1, "id": "r1", "cmd": "reboot"}), qos=1).wait_for_publish(
            5
        )
        c.disconnect()
        c.loop_stop()
        nd = fleet.nodes[0]
        _wait(lambda: nd.reboots == 1 and nd.running, 30, "node restarted after reboot command")
        _wait(lambda: fleet.status().get("node-001", {}).get("boot") == 2, 30, "status of the second boot")
        seq_before = fleet.status()["node-001"]["seq"]
        fleet.kill(0)
        time.sleep(1)
        assert not nd.running and nd.kills == 1  # a power cut: nobody restarts it
        info = fleet.inspect(0)
        # the status' seq may include the RAM batch a power cut loses (docs/firmware.md), at most the window
        assert info["durable"] >= seq_before - power_cut_loss()
        assert info["next_seq"] > info["durable"]  # nothing that may have been published is handed out again
        fleet.restart(0)
        _wait(lambda: fleet.status().get("node-001", {}).get("boot") == 3, 30, "status after power cut")
        assert fleet.status()["node-001"]["seq"] >= info["next_seq"] - 1
        fleet.stop()
        assert fleet.inspect(0)["clean"]  # SIGINT closes the log cleanly
    finally:
        fleet.close()


def test_documented_workdir_sim_does_not_shadow_the_sim_board(tmp_path: Path) -> None:
    """docs/simulate.md runs `edgefleet simulate ... --workdir sim`: the ./sim it creates is not the board `sim`."""
    (tmp_path / "sim").mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "simulate", "--devices", "1", "--duration", "2", "--workdir", "sim"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "node-001: boots 1" in r.stdout, r.stdout
    assert (tmp_path / "sim" / "nodes" / "node-001.img").is_file()


def _simulate_fails_fast(tmp_path: Path, broker_url: str, *extra: str) -> str:
    """simulate against a broker the nodes cannot use: one clear line, exit 2, long before --duration, nothing left."""
    t0 = time.monotonic()
    r = _cli("simulate", "--devices", "1", "--duration", "120", "--broker", broker_url, "--workdir",
             str(tmp_path / "w"), *extra, timeout=60)  # fmt: skip
    took = time.monotonic() - t0
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and took < 45, (took, r.stderr[-2000:])
    assert _processes_under(tmp_path / "w") == []
    return r.stderr


def test_simulate_without_a_broker_fails_fast(tmp_path: Path) -> None:
    from edgefleet.broker.mosquitto import free_port

    err = _simulate_fails_fast(tmp_path, f"mqtt://127.0.0.1:{free_port()}")
    assert "cannot reach the MQTT broker at 127.0.0.1:" in err and "Connection refused" in err, err
    assert not (tmp_path / "w" / "logs" / "node-001.log").exists(), "no node may start without a broker"


def test_simulate_against_a_broker_that_refuses_anonymous_nodes_fails_fast(tmp_path: Path) -> None:
    broker = Fleet.secure_broker(tmp_path / "secure", ["someone"]).start()
    try:
        err = _simulate_fails_fast(tmp_path, broker.url)
    finally:
        broker.stop()
    assert "refused an anonymous client" in err and "Not authorized" in err, err


def test_simulate_reports_nodes_that_never_come_online(tmp_path: Path) -> None:
    """The broker lets anyone connect but its ACL lets nodes publish nothing: no status ever arrives."""
    from edgefleet.broker.mosquitto import Mosquitto

    bdir = tmp_path / "acl-broker"
    bdir.mkdir()
    (bdir / "acl").write_text("user nobody\ntopic read #\n")
    broker = Mosquitto(data_dir=bdir, acl_file=bdir / "acl").start()
    try:
        err = _simulate_fails_fast(tmp_path, broker.url, "--online-timeout", "5")
    finally:
        broker.stop()
    assert "no node has been online for 5 s" in err and "--online-timeout" in err, err


@pytest.mark.parametrize("kind", ["file", "empty", "uncreatable"])
def test_simulate_bad_workdir_is_one_line(tmp_path: Path, kind: str) -> None:
    work = {"file": tmp_path / "afile", "empty": "", "uncreatable": "/proc/edgefleet/w"}[kind]
    (tmp_path / "afile").write_text("x")
    r = _cli("simulate", "--workdir", str(work), "--devices", "1", "--duration", "1", timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "--workdir" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_simulate_mqtts_to_a_plain_port_says_tls(tmp_path: Path, mqtt_broker) -> None:
    err = _simulate_fails_fast(tmp_path, f"mqtts://127.0.0.1:{mqtt_broker.port}")
    assert f"TLS to 127.0.0.1:{mqtt_broker.port} failed" in err and "TLS listener" in err, err


def test_watchdog_reports_a_refused_status_login_at_once(tmp_path: Path) -> None:
    from edgefleet.sim.simulate import OnlineWatchdog

    broker = Fleet.secure_broker(tmp_path, ["node-001"]).start()
    try:
        with Fleet(tmp_path, 1, broker=broker) as fleet:
            creds = json.loads((tmp_path / "credentials.json").read_text())
            creds["operator"] = "not-the-password"  # the broker's passwd file keeps the real one
            (tmp_path / "credentials.json").write_text(json.dumps(creds))
            fleet.start()
            watchdog = OnlineWatchdog(fleet, broker, timeout_s=600)
            _wait(lambda: fleet.status_refused is not None, 20, "the broker's refusal")
            with pytest.raises(EdgefleetError, match="refused the status subscriber: Not authorized"):
                watchdog.check(fleet.summary())
    finally:
        broker.stop()


def test_fleet_runs_on_the_secure_configuration_over_tls(tmp_path: Path) -> None:
    """Per-node logins, the operator identity for status, the ACL, and TLS verified against the fleet's CA on
    every node (MicroPython ssl) and on the status subscriber (paho)."""
    broker = Fleet.secure_broker(tmp_path, ["node-001"], tls=True).start()
    try:
        with Fleet(tmp_path, 1, broker=broker, ca=tmp_path / "tls" / "ca.pem", status_interval_s=2) as fleet:
            assert fleet.broker_url == broker.tls_url
            fleet.start()
            _wait(lambda: fleet.status().get("node-001", {}).get("state") == "online", 60, "node online over TLS")
            assert fleet.status()["node-001"].get("safe_mode") is False, fleet.status()
    finally:
        broker.stop()
    log = (tmp_path / "broker" / "mosquitto.log").read_text()
    assert f"on port {broker.tls_port}" in log and "u'node-001'" in log and "u'operator'" in log
