"""A throwaway PostgreSQL cluster for tests and benchmarks, started from the Debian binaries.

PostgreSQL refuses to run as root, and CI runs as root: then the cluster belongs to an unprivileged user
(`edgefleet-pg`, created with useradd if missing) and initdb/postgres run under `runuser -u`. The cluster lives in
a temporary directory, listens on a free loopback port, keeps its unix socket in that directory, and is removed at
the end. `new_database()` gives each test its own empty database.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from .. import procs
from ..errors import EdgefleetError
from ..procs import free_port

PG_USER = "edgefleet-pg"


def find_pg_bin() -> Path:
    env = os.environ.get("PG_BIN")
    candidates = [env] if env else []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        except OSError:
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "postgres").is_file():
            return Path(c)
    raise EdgefleetError("PostgreSQL server binaries (initdb, postgres) not found", hint="apt-get install postgresql")


def _ensure_user() -> str:
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
        )
    return PG_USER


class PostgresCluster:
    def __init__(self) -> None:
        self.bin = find_pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = _ensure_user() if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.proc: subprocess.Popen | None = None

    def _as_user(self, argv: list[str], die_with_us: bool = False) -> list[str]:
        """As root, run `argv` as the cluster's user (postgres refuses root) with setpriv, which execs it in place
        (runuser forks and waits, so its postgres outlived a runuser killed with us). Changing the uid clears the
        kernel's parent-death signal that procs.spawn asks for, so setpriv sets it again after the switch."""
        if os.geteuid() != 0:
            return argv
        again = ["--pdeathsig", "KILL"] if die_with_us else []
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", *again, "--", *argv]

    def start(self) -> PostgresCluster:
        if os.geteuid() == 0:
            uid = pwd.getpwnam(self.user).pw_uid
            os.chown(self.root, uid, -1)
            os.chmod(self.root, 0o700)
        subprocess.run(
            self._as_user(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]
            ),
            check=True,
            capture_output=True,
        )
        return self._spawn()

    def _spawn(self) -> PostgresCluster:
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = procs.spawn(  # in its own process group, and killed by the kernel if we die without stopping it
            self._as_user(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.root}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=50",
                ],
                die_with_us=True,
            ),
            name="postgres",
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EdgefleetError("postgres exited: " + (self.root / "postgres.log").read_text()[-2000:])
            r = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            )
            if r.returncode == 0:
                return self
            time.sleep(0.1)
        raise EdgefleetError("postgres did not become ready within 30 s")

    def stop_server(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), keeping the cluster's data: a database
        outage for tests. `start_server()` brings it back on the same port."""
        if self.proc and self.proc.poll() is None:
            # pg_ctl's fast mode (SIGINT to the postmaster): a plain SIGTERM waits for clients to leave
            subprocess.run(
                self._as_user([str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"]),
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.proc.wait(30)
            procs.terminate(self.proc)  # already gone: only reaped and forgotten

    def start_server(self) -> PostgresCluster:
        return self._spawn()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None:
            procs.terminate(self.proc, grace=20)  # SIGTERM, then SIGKILL; forgotten by procs either way
        shutil.rmtree(self.root, ignore_errors=True)
