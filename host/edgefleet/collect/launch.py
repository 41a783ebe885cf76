"""`edgefleet collect` as a child process: the one place the demo, the chaos run, the bench and the HIL tests
start and stop a collector.

Why one place: each of them used to build its own command line, and each passed the broker password its own
way (a file, the environment). Here a password in the URL always goes into a 0600 file next to the log
(`--password-file`), never onto the command line, where `ps` shows it to every user; the child runs the same
edgefleet package as its parent; and it lives in its own process group that dies with us (procs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import procs
from ..errors import EdgefleetError
from ..wire.url import parse_broker_url

# What the collector logs once its broker connection is up (collector.py: "connected to ...").
CONNECTED_LINE = b"connected to"


def start_collector(
    url: str,
    db: Path | str,
    logfile: Path,
    client_id: str = "edgefleet-demo-collector",
    *,
    password_file: Path | None = None,
    stop_signal: int = signal.SIGTERM,
    connect_timeout: float | None = None,
) -> subprocess.Popen:
    """Start `edgefleet collect --broker url --db db` (`url` an MQTT broker URL), its output appended to `logfile`.

    `db` is a database URL, or a Path for a SQLite file. A password in `url` is moved into
    `<logfile's directory>/collector.secret` (0600); `password_file` names one that already exists. SIGTERM (the
    default `stop_signal`) and SIGINT both make the collector flush its batch and ack before it exits. With
    `connect_timeout` this returns only once the log shows the broker connection, and raises EdgefleetError
    (with the log) when the collector exits or does not connect in time."""
    db_url = f"sqlite:///{db}" if isinstance(db, Path) else db
    argv = [sys.executable, "-m", "edgefleet.cli", "collect", "--broker", url, "--db", db_url,
            "--client-id", client_id]  # fmt: skip
    u = parse_broker_url(url)
    if u.password:
        from ..broker.pki import write_secret

        password_file = logfile.parent / "collector.secret"
        write_secret(password_file, (u.password + "\n").encode())
        argv[argv.index(url)] = u.url(u.username)
    if password_file is not None:
        argv += ["--password-file", str(password_file)]
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])  # the directory holding this edgefleet package
    env["PYTHONPATH"] = here + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else here
    before = logfile.stat().st_size if logfile.exists() else 0
    with logfile.open("ab") as out:
        proc = procs.spawn(argv, name="collector", stop_signal=stop_signal, env=env, stdout=out,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    if connect_timeout is not None:
        end = time.monotonic() + connect_timeout
        while CONNECTED_LINE not in logfile.read_bytes()[before:]:
            if proc.poll() is not None or time.monotonic() > end:
                stop_process(proc)
                raise EdgefleetError(f"edgefleet collect did not connect:\n{logfile.read_text()}")
            time.sleep(0.05)
    return proc


def stop_process(proc: subprocess.Popen, sig_kill: bool = False) -> None:
    """Stop a collector started here: SIGTERM and up to 20 s to flush and ack its last batch; `sig_kill` for a
    crash (fault injection), with nothing flushed."""
    if sig_kill:
        procs.kill(proc)
    else:
        procs.terminate(proc, signal.SIGTERM, grace=20)
