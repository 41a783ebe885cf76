"""User mistakes and secrets around collect / fleet status / export (issue 10 items 7 and 8, h1's parts)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_collector import CollectorProc, _env

from edgefleet.collect.storage import Batch, open_storage
from edgefleet.redact import redact_text, redact_url, write_secret_file
from edgefleet.sim import fleetsim as fs

SECRET = "s3cr3t-Pa55"


def _cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *args], env=env or _env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _one_clear_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "error:" in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def _db_with_devices(path: Path, n: int) -> str:
    url = f"sqlite:///{path}"
    s = open_storage(url)
    try:
        rows = {f"node-{i:04d}": [(f"node-{i:04d}", fs.LOG, 1, 5, "env", 0, '{"t":1}', 9)] for i in range(n)}
        s.write(Batch(readings=rows, seen={d: 9 for d in rows}))
    finally:
        s.close()
    return url


def test_fleet_status_into_a_closed_pipe_is_quiet(tmp_path) -> None:
    url = _db_with_devices(tmp_path / "fleet.db", 1500)  # ~200 KB of table: far more than a pipe holds
    argv = [sys.executable, "-m", "edgefleet.cli", "fleet", "status", "--db", url]
    p = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()  # `| head -1`
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(60)
    assert first.startswith(b"device")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert p.returncode in (0, 141)


def test_readers_never_create_a_database_and_two_slashes_are_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "typo.db"
    _one_clear_error(_cli("fleet", "status", "--db", f"sqlite:///{typo}"), "no database at")
    _one_clear_error(_cli("export", "--db", f"sqlite:///{typo}", "--out", str(tmp_path / "o.csv")), "no database at")
    assert not typo.exists()
    r = _cli("fleet", "status", "--db", "sqlite://x.db")
    _one_clear_error(r, "sqlite:///x.db")
    assert not (tmp_path / "x.db").exists()


def test_export_out_mistakes_are_one_message_and_leave_no_part_file(tmp_path) -> None:
    url = _db_with_devices(tmp_path / "fleet.db", 3)
    (tmp_path / "adir").mkdir()
    cases = [(str(tmp_path / "adir"), "is a directory"), ("", "--out is empty"),
             (str(tmp_path / "missing" / "o.csv"), "does not exist")]  # fmt: skip
    if os.geteuid() == 0:
        cases.append(("/proc/edgefleet-export.csv", "cannot write"))  # root ignores modes; /proc refuses even root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        cases.append((str(ro / "o.csv"), "cannot write"))
    for out, words in cases:
        r = _cli("export", "--db", url, "--out", out)
        _one_clear_error(r, words)
        assert r.stderr.count("error:") == 1
    assert not list(tmp_path.rglob("*.part"))
    r = _cli("-q", "export", "--db", url, "--out", str(tmp_path / "ok.csv"))
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "ok.csv").read_text().splitlines()) == 4


def test_redaction_helper() -> None:
    assert redact_url(f"mqtt://user:{SECRET}@host:1883") == "mqtt://user:***@host:1883"
    assert redact_url("mqtt://host:1883") == "mqtt://host:1883"
    assert SECRET not in redact_text(f"connect to postgresql://u:{SECRET}@db/x failed; password={SECRET} x")
    assert SECRET not in redact_text(f"oops {SECRET}", f"mqtts://u:{SECRET}@h")


def test_secret_files_are_0600_from_creation(tmp_path) -> None:
    old = os.umask(0)  # the most permissive umask: the mode must still be 0600
    try:
        p = write_secret_file(tmp_path / "pw", SECRET + "\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and p.read_text() == SECRET + "\n"


@pytest.fixture
def login_broker(tmp_path):
    from edgefleet.broker.mosquitto import Mosquitto

    pwfile = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "collector", SECRET], check=True, capture_output=True)
    os.chmod(pwfile, 0o644)  # mosquitto runs as its own user and must read it
    b = Mosquitto(data_dir=tmp_path / "mq", password_file=pwfile)
    b.start()
    yield b
    b.stop()


def test_collect_takes_the_password_from_a_file_or_the_environment_never_the_command_line(
    login_broker, tmp_path
) -> None:
    db = f"sqlite:///{tmp_path}/fleet.db"
    url = login_broker.url.replace("mqtt://", "mqtt://collector@")
    # On the command line: refused, without echoing it, saying where it goes.
    r = _cli("collect", "--broker", url.replace("collector@", f"collector:{SECRET}@"), "--db", db)
    _one_clear_error(r, "--password-file", "EDGEFLEET_BROKER_PASSWORD")
    assert SECRET not in r.stderr + r.stdout
    r = _cli("fleet", "status", "--db", f"postgresql://u:{SECRET}@127.0.0.1:1/x")
    _one_clear_error(r, "PGPASSWORD")
    assert SECRET not in r.stderr + r.stdout
    # A wrong password from the file: a clear refusal that does not print it.
    bad = write_secret_file(tmp_path / "bad.pw", "wrong-" + SECRET)
    r = _cli("collect", "--broker", url, "--db", db, "--password-file", str(bad), "--connect-timeout", "5")
    _one_clear_error(r, "refused")
    assert SECRET not in r.stderr + r.stdout
    # The right one from the file, then from the environment: the collector gets a session.
    good = write_secret_file(tmp_path / "good.pw", SECRET + "\n")
    c = CollectorProc(login_broker, db, tmp_path / "c1.log", "c1", "--password-file", str(good))
    c.argv[c.argv.index("--broker") + 1] = url
    c.start()
    assert c.stop() == -signal.SIGINT  # drained, then died by the SIGINT it got
    assert SECRET not in c.log.read_text()
    env = {**_env(), "EDGEFLEET_BROKER_PASSWORD": SECRET}
    argv = [sys.executable, "-m", "edgefleet.cli", "collect", "--broker", url, "--db", db, "--client-id", "c2"]
    with (tmp_path / "c2.log").open("wb") as f:
        p = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            deadline = 30
            while b"connected to" not in (tmp_path / "c2.log").read_bytes() and deadline > 0:
                assert p.poll() is None, (tmp_path / "c2.log").read_text()
                import time

                time.sleep(0.1)
                deadline -= 0.1
            assert deadline > 0
        finally:
            p.send_signal(signal.SIGINT)
            p.wait(30)
    assert SECRET not in (tmp_path / "c2.log").read_text()


def test_two_collectors_on_one_login_one_stops_with_one_clear_message(login_broker, tmp_path) -> None:
    """The secure broker pins a login's client id to its user name, so a second collector on the same login takes
    the first one's session; before, both reconnected and took it from each other for ever (49 takeovers in
    12 s), each logging only "disconnected ... reconnecting". Now each collector that recognises the fight
    stops with one message naming the cause and the fix (one, or both when they recognise it at the same
    moment), and one that goes on keeps its session: no more takeovers."""
    import time

    db = f"sqlite:///{tmp_path}/fleet.db"
    url = login_broker.url.replace("mqtt://", "mqtt://collector@")
    good = write_secret_file(tmp_path / "good.pw", SECRET + "\n")
    procs = []
    for cid in ("c1", "c2"):
        c = CollectorProc(login_broker, db, tmp_path / f"{cid}.log", cid, "--password-file", str(good), "--group", "g")
        c.argv[c.argv.index("--broker") + 1] = url
        procs.append(c)
    try:
        for c in procs:
            c.start()
        deadline = time.monotonic() + 30
        while all(c.proc.poll() is None for c in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # the other one may be stopping at the same moment
        done = [c for c in procs if c.proc.poll() is not None]
        assert done, [c.log.read_text()[-2000:] for c in procs]
        for c in done:
            text = c.log.read_text()
            assert c.proc.returncode > 0, text  # the CLI's error exit, not a signal or a crash
            assert "another client logged in as 'collector'" in text and "--collector-user" in text, text
            assert "Traceback" not in text, text
        for other in (c for c in procs if c not in done):
            n = other.log.read_text().count("connected to")
            time.sleep(3)  # the one left keeps its session: no more takeovers
            assert other.proc.poll() is None and other.log.read_text().count("connected to") == n
    finally:
        for c in procs:
            c.stop()
