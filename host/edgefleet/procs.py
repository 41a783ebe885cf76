"""Child processes that never outlive the command that started them.

Why this module exists: `timeout`, `kill` and every supervisor stop a command with SIGTERM, which Python does not
turn into an exception, so before this module a SIGTERMed `edgefleet demo` died at once and left mosquitto, the
collector and the MicroPython nodes running with parent 1. The rules here, used by every place that starts a
long-lived process (broker.Mosquitto, simulate.Fleet, demo's collector, `edgefleet node`, the test helpers):

- `spawn` starts a child in its own process group (so a terminal's Ctrl-C reaches only us and we stop the
  children in order: nodes first, with SIGINT so they flush their flash log, then the collector, then the broker),
  tracks it, and on Linux asks the kernel to SIGKILL it if we die without cleaning up (PR_SET_PDEATHSIG:
  belt and braces for a SIGKILLed or crashed parent).
- `terminate` sends a child its stop signal, waits a grace period, then SIGKILLs its process group.
- `signal_handlers` (entered once, by the CLI, around the command) turns SIGTERM and SIGINT into `Interrupted`, a
  KeyboardInterrupt, so every `try/finally` and `except KeyboardInterrupt` cleanup path runs for both; the CLI
  then prints `edgefleet CMD: stopped by SIGTERM` and dies by that signal (`die_by`: a shell shows 143/130, and
  a supervisor sees a clean stop). A second signal while stopping SIGKILLs the children at once.
- `terminate_all` (also registered with atexit) stops whatever is still tracked.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which. A KeyboardInterrupt so existing cleanup paths run for both."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_lock = threading.RLock()  # re-entrant: kill_all runs in a signal handler of the thread that may hold it
_children: dict[int, tuple[subprocess.Popen, int, str]] = {}  # pid -> (process, stop signal, name)
_received: int | None = None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_status(signum: int) -> int:
    """The shell's convention for a command stopped by a signal: 128 + its number (130 SIGINT, 143 SIGTERM)."""
    return 128 + signum


def die_by(signum: int) -> None:
    """End this process by `signum` with its default action (after cleaning up): what the parent sees is "killed
    by SIGTERM", not an exit status."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe must not stop us from stopping
            stream.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1)  # the signal is delivered to some thread of ours; the default action ends the whole process
    os._exit(exit_status(signum))


def received_signal() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _received


def note_signal(signum: int) -> None:
    """For code that handles SIGTERM/SIGINT itself (the collector drains its queue first): remember the signal so
    the CLI still exits with 128 + signum."""
    global _received
    if _received is None:
        _received = signum


_raise = True


def _on_signal(signum: int, frame: Any) -> None:
    global _received
    if _received is not None:
        # Already stopping: the user (or supervisor) insists. Do not interrupt the cleanup; cut it short.
        print(f"edgefleet: {signal_name(signum)} again: killing child processes now", file=sys.stderr, flush=True)
        kill_all()
        return
    _received = signum
    if _raise:
        raise Interrupted(signum)


@contextlib.contextmanager
def signal_handlers() -> Iterator[None]:
    """While inside: SIGTERM, SIGINT (and SIGHUP) raise Interrupted in the main thread (the CLI wraps each command in this).
    On leaving, signals are only recorded (cleanup is not interrupted), every child still tracked is stopped, and
    the previous handlers come back, so an in-process caller (tests) keeps its own. Outside the main thread only
    the cleanup applies (Python allows signal handlers only there)."""
    global _received, _raise
    before = set(_children)
    if threading.current_thread() is not threading.main_thread():
        try:
            yield
        finally:
            terminate_all(keep=before)
        return
    _received = None
    _raise = True
    # SIGHUP (the terminal closed) stops us like SIGTERM, unless it is ignored (nohup): then it stays ignored.
    stops = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        stops.append(signal.SIGHUP)
    previous = {sig: signal.signal(sig, _on_signal) for sig in stops}
    try:
        yield
    finally:
        _raise = False
        left = terminate_all(keep=before)
        if left:
            log.warning("stopped %d child process(es) left running", left)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- starting children


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL me when the thread that forked me dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _Spawner:
    """PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. Children started
    from short-lived threads (the fleet monitor restarts rebooting nodes) are therefore forked by this one daemon
    thread, which lives as long as the process."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[Callable[[], subprocess.Popen], Future]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def _run(self) -> None:
        while True:
            fn, fut = self._q.get()
            try:
                fut.set_result(fn())
            except BaseException as e:  # handed to the caller's thread
                fut.set_exception(e)

    def call(self, fn: Callable[[], subprocess.Popen]) -> subprocess.Popen:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="edgefleet-spawner", daemon=True)
                self._thread.start()
        fut: Future = Future()
        self._q.put((fn, fut))
        return fut.result()


_spawner = _Spawner()


def spawn(
    argv: Sequence[str],
    *,
    name: str | None = None,
    stop_signal: int = signal.SIGTERM,
    **popen_kwargs: Any,
) -> subprocess.Popen:
    """Starts and tracks a child in its own process group that dies with us (see the module docstring).

    `stop_signal` is what `terminate`/`terminate_all` send first: SIGINT for a node (it flushes its log),
    SIGTERM for mosquitto and the collector. Other keyword arguments go to subprocess.Popen.
    """

    def start() -> subprocess.Popen:
        return subprocess.Popen(list(argv), process_group=0, preexec_fn=_die_with_parent, **popen_kwargs)

    proc = start() if threading.current_thread() is threading.main_thread() else _spawner.call(start)
    with _lock:
        _children[proc.pid] = (proc, stop_signal, name or os.path.basename(str(argv[0])))
    return proc


def _forget(proc: subprocess.Popen) -> None:
    with _lock:
        if _children.get(proc.pid, (None,))[0] is proc:
            del _children[proc.pid]


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the child's process group (the child and anything it started), or just the child if that fails."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def send(proc: subprocess.Popen, sig: int) -> None:
    """Send a signal to a child started with `spawn` (to its process group)."""
    if proc.poll() is None:
        _signal_group(proc, sig)


def terminate(
    proc: subprocess.Popen, sig: int | None = None, grace: float = DEFAULT_GRACE_S, name: str | None = None
) -> int:
    """Stop a child: its stop signal (or `sig`), up to `grace` seconds to exit, then SIGKILL. Returns its exit code."""
    with _lock:
        entry = _children.get(proc.pid)
    if sig is None:
        sig = entry[1] if entry else signal.SIGTERM
    label = name or (entry[2] if entry else str(proc.pid))
    if proc.poll() is None:
        _signal_group(proc, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s (pid %d) did not stop within %.0f s of %s: killed", label, proc.pid, grace, signal_name(sig)
            )
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    _forget(proc)
    return proc.returncode


def kill(proc: subprocess.Popen) -> int:
    """SIGKILL a child (a power cut for a node) and reap it."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    _forget(proc)
    return proc.returncode


def children() -> list[subprocess.Popen]:
    """The tracked children that are still running."""
    with _lock:
        entries = list(_children.values())
    return [p for p, _, _ in entries if p.poll() is None]


def terminate_all(grace: float = DEFAULT_GRACE_S, keep: set[int] | frozenset[int] = frozenset()) -> int:
    """Stop every tracked child (except the pids in `keep`): all stop signals at once, one shared grace period,
    then SIGKILL. Returns how many were still running."""
    with _lock:
        entries = [e for pid, e in _children.items() if pid not in keep]
    live = [(p, s, n) for p, s, n in entries if p.poll() is None]
    for p, s, _ in live:
        _signal_group(p, s)
    deadline = time.monotonic() + grace
    for p, s, n in live:
        try:
            p.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) did not stop within %.0f s of %s: killed", n, p.pid, grace, signal_name(s))
            _signal_group(p, signal.SIGKILL)
            p.wait()
    for p, _, _ in entries:
        _forget(p)
    return len(live)


def kill_all() -> None:
    """SIGKILL every tracked child now (safe in a signal handler: no waiting)."""
    with _lock:
        entries = list(_children.values())
    for p, _, _ in entries:
        if p.returncode is None:
            _signal_group(p, signal.SIGKILL)


atexit.register(terminate_all, 5.0)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now, for a child service (mosquitto, RabbitMQ, PostgreSQL, a node's broker) to
    listen on: the kernel picks it, so parallel runs and tests never collide on a fixed port."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
