"""SIGTERM and SIGINT to every command that starts processes: it stops them all, says so in one line, leaves
nothing behind and then dies by the signal it got (a shell shows 128 + the signal number; issue 10 item 8).

Each case runs the real command (real mosquitto, real MicroPython nodes, the real collector), waits until the
processes it starts are up, signals the command's own pid only (as `kill` and `timeout` do; a terminal's Ctrl-C
would also reach the children, which hides a command that does not stop them), then walks /proc for any process
whose command line names the test's directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.broker.mosquitto import free_port

# How long a signalled command may take to stop its children and exit (nodes flush their log on SIGINT).
STOP_WITHIN_S = 30


def processes_naming(path: Path, exclude: int | None = None) -> dict[int, str]:
    """pid -> command line of every live process whose command line contains `path`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), exclude):
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            found[int(entry.name)] = cmd
    return found


def count(procs: dict[int, str], needle: str) -> int:
    return sum(needle in cmd for cmd in procs.values())


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    err = tmp_path / "stderr.txt"
    with err.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", *args],
            stdout=subprocess.DEVNULL,
            stderr=f,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # like a service: nothing but our signal reaches it
        )
    return proc, err


def wait_for(proc: subprocess.Popen, err: Path, ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the command exited ({proc.returncode}) before {what}:\n{err.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{err.read_text()[-3000:]}")


def kill_leftovers(path: Path) -> None:
    for pid in processes_naming(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def scenario(command: str, tmp_path: Path, mqtt_broker) -> tuple[list[str], Callable[[dict[int, str], str], bool]]:
    """The command line for `command`, and when it has started what it starts."""
    if command == "simulate":
        args = ["simulate", "--devices", "2", "--duration", "300", "--workdir", str(tmp_path / "w")]
        return args, lambda p, e: count(p, "mosquitto") == 1 and count(p, "simboard.launch") == 2
    if command == "demo":
        args = ["demo", "--devices", "2", "--duration", "300", "--dir", str(tmp_path / "d")]
        return (
            args,
            lambda p, e: count(p, "mosquitto") == 1 and count(p, " collect ") == 1 and count(p, "simboard.launch") == 2,
        )
    if command == "node":
        args = ["node", "--device-id", "sig-1", "--broker", mqtt_broker.url, "--flash", str(tmp_path / "f.img")]
        return args, lambda p, e: count(p, "simboard.launch") == 1
    if command == "broker":
        args = ["broker", "--port", str(free_port()), "--data-dir", str(tmp_path / "b"), "--allow-anonymous"]
        return args, lambda p, e: count(p, "mosquitto") == 1 and "mosquitto listening on" in e
    if command == "collect":
        args = ["collect", "--broker", mqtt_broker.url, "--db", f"sqlite:///{tmp_path / 'fleet.db'}"]
        return args, lambda p, e: "collecting" in e
    raise AssertionError(command)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", ["simulate", "demo", "node", "broker", "collect"])
def test_signal_stops_the_command_and_everything_it_started(command, sig, tmp_path, mqtt_broker) -> None:
    args, ready = scenario(command, tmp_path, mqtt_broker)
    proc, err = start(tmp_path, *args)
    try:
        wait_for(
            proc,
            err,
            lambda: ready(processes_naming(tmp_path, exclude=proc.pid), err.read_text()),
            90,
            f"{command} to start its processes",
        )
        time.sleep(1.0)  # let the command settle into its main loop (also signalled mid-start: SIGKILL test)
        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        try:
            proc.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{command} still running {STOP_WITHIN_S} s after {sig.name}") from None
        took = time.monotonic() - t0
        stderr = err.read_text()
        left = processes_naming(tmp_path)
        assert not left, f"{command} left processes running after {sig.name}: {left}"
        # died by the signal after cleaning up: a shell shows 128 + signum, systemd counts SIGTERM as a clean stop
        assert proc.returncode == -sig, (proc.returncode, stderr[-2000:])
        assert f"edgefleet {command}: stopped by {sig.name}" in stderr, stderr[-2000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        print(f"{command} stopped {took:.1f} s after {sig.name}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(tmp_path)


@pytest.mark.timeout(120)
def test_children_die_with_a_sigkilled_simulate(tmp_path) -> None:
    """SIGKILL cannot be handled: the kernel kills the children for us (PR_SET_PDEATHSIG)."""
    args, ready = scenario("simulate", tmp_path, None)
    proc, err = start(tmp_path, *args)
    try:
        wait_for(proc, err, lambda: ready(processes_naming(tmp_path, exclude=proc.pid), ""), 90, "nodes and broker")
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5
        while processes_naming(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not processes_naming(tmp_path), "children outlived their SIGKILLed parent"
    finally:
        kill_leftovers(tmp_path)
