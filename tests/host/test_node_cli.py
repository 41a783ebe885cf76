"""`edgefleet node`: argument errors as clear messages (exit 2), restart on the reboot exit code, and one real
sim node run from the CLI against mosquitto: retained status, a command, a reboot, Ctrl-C and the last will."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netnode_harness import Subscriber, check_status, wait_until

from edgefleet.board.node import REBOOT_EXIT, supervise
from edgefleet.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _run_cli(capsys, *args: str) -> tuple[int, str]:
    rc = main(["node", *args])
    return rc, capsys.readouterr().err


def test_real_board_refused(capsys, tmp_path):
    rc, err = _run_cli(
        capsys,
        "--board",
        "esp32-devkitc",
        "--device-id",
        "n1",
        "--broker",
        "mqtt://127.0.0.1:1883",
        "--flash",
        str(tmp_path / "f"),
    )
    assert rc == 2 and "real hardware" in err and "--board sim" in err, err


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1883", "127.0.0.1:1883", "mqtt://", "mqtt://host:99999", "mqtt://h:1/x"]
)
def test_bad_broker_url(capsys, tmp_path, url):
    rc, err = _run_cli(capsys, "--device-id", "n1", "--broker", url, "--flash", str(tmp_path / "f"))
    assert rc == 2 and "broker URL" in err, err
    assert "Traceback" not in err


def test_bad_flash_paths(capsys, tmp_path):
    rc, err = _run_cli(capsys, "--device-id", "n1", "--broker", "mqtt://127.0.0.1:1", "--flash", str(tmp_path))
    assert rc == 2 and "not a regular file" in err, err
    wrong = tmp_path / "small.img"
    wrong.write_bytes(b"\xff" * 4096)
    rc, err = _run_cli(capsys, "--device-id", "n1", "--broker", "mqtt://127.0.0.1:1", "--flash", str(wrong))
    assert rc == 2 and "bytes" in err and "sim" in err, err
    rc, err = _run_cli(
        capsys, "--device-id", "n1", "--broker", "mqtt://127.0.0.1:1", "--flash", str(tmp_path / "no" / "dir" / "f")
    )
    assert rc == 2 and "writable directory" in err, err
    rc, err = _run_cli(
        capsys, "--device-id", "bad id!", "--broker", "mqtt://127.0.0.1:1", "--flash", str(tmp_path / "f")
    )
    assert rc == 2 and "device id" in err, err
    rc, err = _run_cli(
        capsys,
        "--device-id",
        "n1",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--flash",
        str(tmp_path / "f"),
        "--scenario",
        str(tmp_path / "none.json"),
    )
    assert rc == 2 and "scenario" in err, err


def test_supervise_restarts_on_reboot_code(tmp_path):
    marker = tmp_path / "boots"
    script = (
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(marker)!r})\n"
        "n = int(p.read_text()) if p.exists() else 0\n"
        "p.write_text(str(n + 1))\n"
        f"sys.exit({REBOOT_EXIT} if n < 2 else 0)\n"
    )
    rc = supervise([sys.executable, "-c", script], dict(os.environ))
    assert rc == 0 and marker.read_text() == "3"


def test_edgefleet_node_runs_a_sim_node(tmp_path, mqtt_broker):
    sub = Subscriber(mqtt_broker.host, mqtt_broker.port, "cli-1")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "host"))
    flash = tmp_path / "cli-1.img"
    argv = [
        sys.executable,
        "-m",
        "edgefleet.cli",
        "node",
        "--device-id",
        "cli-1",
        "--broker",
        mqtt_broker.url,
        "--flash",
        str(flash),
    ]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        wait_until(lambda: any(m["state"] == "online" for m, _ in sub.topic("status")), 40, "status from the CLI node")
        st = next(m for m, _ in sub.topic("status") if m["state"] == "online")
        check_status(st, "cli-1")
        assert st["board"] == "sim" and st["boot"] == 1
        time.sleep(0.5)
        sub.client.publish("edgefleet/cli-1/cmd", json.dumps({"v": 1, "id": "r1", "cmd": "reboot"}), qos=1)
        wait_until(lambda: any(m.get("boot") == 2 for m, _ in sub.topic("status")), 40, "status after the reboot")
        assert proc.poll() is None, "the launcher must restart the node after a reboot"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == -signal.SIGINT and "edgefleet node: stopped by SIGINT" in out, out
        assert "Traceback" not in out, out
        wait_until(lambda: sub.topic("status")[-1][0]["state"] == "offline", 15, "last will after Ctrl-C")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        sub.close()
    assert flash.stat().st_size == 0x400000
