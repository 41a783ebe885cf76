"""procs: the grace period ends in SIGKILL, PR_SET_PDEATHSIG does not kill children of short-lived threads, and
the CLI's signal scope stops only what was started inside it and gives the caller its handlers back."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from edgefleet import procs

SLEEPER = "import signal, sys, time\n{setup}\nprint('ready', flush=True)\ntime.sleep(60)\n"


def sleeper(setup: str = "", **kw) -> subprocess.Popen:
    p = procs.spawn([sys.executable, "-c", SLEEPER.format(setup=setup)], stdout=subprocess.PIPE, **kw)
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    return p


def test_terminate_kills_a_child_that_ignores_its_stop_signal() -> None:
    p = sleeper("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    t0 = time.monotonic()
    assert procs.terminate(p, grace=0.5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 5
    assert p not in procs.children()


def test_stop_signal_is_the_one_given_at_spawn() -> None:
    p = sleeper(stop_signal=signal.SIGINT)
    assert procs.terminate(p, grace=10) != -signal.SIGKILL  # SIGINT: KeyboardInterrupt, exit 1 (not killed)


def test_a_child_started_from_a_short_lived_thread_outlives_the_thread() -> None:
    """PR_SET_PDEATHSIG fires when the forking *thread* exits; procs forks such children from a lasting thread."""
    out: list[subprocess.Popen] = []
    t = threading.Thread(target=lambda: out.append(sleeper()))
    t.start()
    t.join()
    time.sleep(0.5)
    try:
        assert out[0].poll() is None, "the child died with the thread that asked for it"
    finally:
        procs.terminate(out[0], grace=5)


def test_signal_scope_stops_only_its_own_children_and_restores_handlers() -> None:
    before = sleeper()
    sentinel = signal.getsignal(signal.SIGTERM)
    try:
        with procs.signal_handlers():
            assert signal.getsignal(signal.SIGTERM) is not sentinel
            inside = sleeper()
        assert inside.returncode is not None, "a child left running inside the scope is stopped on leaving it"
        assert before.poll() is None, "children from before the scope are not its business"
        assert signal.getsignal(signal.SIGTERM) is sentinel
    finally:
        procs.terminate(before, grace=5)


def test_sigterm_inside_the_scope_unwinds_as_interrupted() -> None:
    caught = None
    with procs.signal_handlers():
        try:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(1)
        except procs.Interrupted as e:
            caught = e.signum
    assert caught == signal.SIGTERM and procs.received_signal() == signal.SIGTERM


def test_sighup_stops_like_sigterm_unless_nohup_ignores_it() -> None:
    caught = None
    with procs.signal_handlers():
        try:
            signal.raise_signal(signal.SIGHUP)
            time.sleep(1)
        except procs.Interrupted as e:
            caught = e.signum
    assert caught == signal.SIGHUP
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts us
    try:
        with procs.signal_handlers():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_postgres_cluster_dies_with_the_process_that_started_it(tmp_path) -> None:
    """A test run or script SIGKILLed while its PostgreSQL cluster ran left the server behind with no parent (it
    was a plain Popen, and as root runuser forked it, so not even runuser's death reached it)."""
    import os
    import shutil
    from pathlib import Path

    host = str(Path(__file__).resolve().parents[2] / "host")
    script = (
        "import time\nfrom edgefleet.sim.postgres import PostgresCluster\nc = PostgresCluster().start()\n"
        "print(c.proc.pid, c.root, flush=True)\ntime.sleep(600)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": host},
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    pid_text, root = p.stdout.readline().split()
    pid = int(pid_text)
    p.kill()
    p.wait()
    deadline = time.monotonic() + 15
    alive = True
    while alive and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            alive = False
    if alive:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)
    assert not alive, f"postgres (pid {pid}) outlived the process that started it"
