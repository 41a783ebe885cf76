"""The device registry (issue 13 item 1): devices in the fleet database on SQLite and PostgreSQL, secrets only in
0600 files, the broker's password file and ACL rendered from hashes, a running `edgefleet broker` reloading them
(revoke and rotate tested against real mosquitto), and `deploy --from-registry` onto the virtual board."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.broker.mosquitto import PID_FILE, free_port, render_acl
from edgefleet.cli import main
from edgefleet.errors import EdgefleetError
from edgefleet.fleetops.devices import Registry, check_password


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_registry_on_both_backends(db_url, tmp_path) -> None:
    """add/list/show/rotate/revoke on SQLite and PostgreSQL; the database and the password file hold hashes only;
    every secrets file is 0600 in a 0700 directory."""
    secrets, bdir = tmp_path / "secrets", tmp_path / "broker"
    with Registry.open(db_url, secrets, bdir) as reg:
        a = reg.add("node-1", "sim", ["kitchen", "floor1"])
        reg.add("node-2", "sim", ["kitchen"])
        reg.add("node-3", "sim")
        assert a.device.groups == ["floor1", "kitchen"] and a.device.board == "sim" and a.device.active
        assert [p.name for p in a.broker.new_logins] == ["collector.secret", "operator.secret"]
        assert a.broker.reloaded_pid is None  # no broker runs on bdir
        assert reg.targets("all") == ["node-1", "node-2", "node-3"]
        assert reg.targets("group:kitchen") == ["node-1", "node-2"]
        assert reg.targets("node-3") == ["node-3"]
        pw1 = (secrets / "node-1.secret").read_text().strip()
        key1 = (secrets / "node-1.key").read_bytes()
        assert len(key1) == 32 and a.device.key_sha256 == hashlib.sha256(key1).hexdigest()[:16]
        rows = reg.store.execute("SELECT id, pw_hash FROM fleet_devices ORDER BY id").fetchall()
        logins = reg.store.execute("SELECT login, pw_hash FROM fleet_logins").fetchall()
        reg.store.conn.rollback()
        hashes = dict(rows) | dict(logins)
        assert all(h.startswith("$7$") for h in hashes.values()), hashes
        assert check_password(hashes["node-1"], pw1) and not check_password(hashes["node-1"], pw1 + "x")
        # the errors a user meets
        for bad in ("bad id", "node\n", "x" * 33, "", "collector", "operator"):
            with pytest.raises(EdgefleetError):
                reg.add(bad, "sim")
        with pytest.raises(EdgefleetError, match="already registered"):
            reg.add("node-1", "sim")
        with pytest.raises(EdgefleetError, match="no board named"):
            reg.add("node-9", "no-such-board")
        with pytest.raises(EdgefleetError, match="not registered"):
            reg.targets("node-9")
        with pytest.raises(EdgefleetError, match="no active device in group"):
            reg.targets("group:attic")
        # rotate: new password (and key on request); revoke: login and secrets gone, row kept
        reg.rotate("node-1", model_key=True)
        assert (secrets / "node-1.secret").read_text().strip() != pw1
        assert (secrets / "node-1.key").read_bytes() != key1
        assert reg.get("node-1").rotated_ms is not None
        reg.revoke("node-2")
        assert not (secrets / "node-2.secret").exists() and not (secrets / "node-2.key").exists()
        assert reg.get("node-2").state == "revoked" and reg.targets("group:kitchen") == ["node-1"]
        with pytest.raises(EdgefleetError, match="revoked"):
            reg.rotate("node-2")
        with pytest.raises(EdgefleetError, match="revoked"):
            reg.targets("node-2")
        assert [d.id for d in reg.devices(include_revoked=False)] == ["node-1", "node-3"]
        again = reg.add("node-2", "sim", ["attic"])  # readmitted with new secrets
        assert again.device.active and again.device.groups == ["attic"] and (secrets / "node-2.secret").exists()
        reg.rotate("operator")  # a service login rotates too
        reg.record_deploy("node-3", {"ms": 1, "model": "m"})
        assert reg.get("node-3").deployed == {"ms": 1, "model": "m"}
    # secrets: 0600 files in a 0700 directory; the password file is 0600 and holds only user:$7$hash lines
    assert _mode(secrets) == 0o700
    assert sorted(p.name for p in secrets.iterdir()) == [
        "collector.secret", "node-1.key", "node-1.secret", "node-2.key", "node-2.secret", "node-3.key",
        "node-3.secret", "operator.secret",
    ]  # fmt: skip
    assert all(_mode(p) == 0o600 for p in secrets.iterdir())
    passwd = (bdir / "passwd").read_text()
    assert _mode(bdir / "passwd") == 0o600
    assert sorted(line.split(":")[0] for line in passwd.splitlines()) == [
        "collector", "node-1", "node-2", "node-3", "operator",
    ]  # fmt: skip
    assert all(line.split(":", 1)[1].startswith("$7$") for line in passwd.splitlines())
    for p in secrets.glob("*.secret"):
        assert p.read_text().strip() not in passwd
    assert (bdir / "acl").read_text() == render_acl("edgefleet", ["collector"], ["operator"])
    # reopening applies nothing and keeps the devices; the collector's schema is untouched
    with Registry.open(db_url, secrets, bdir, create=False) as reg:
        assert [d.id for d in reg.devices()] == ["node-1", "node-2", "node-3"]
        v = reg.store.execute("SELECT count(*), max(version) FROM registry_schema_version").fetchone()
        assert tuple(v) == (1, 1)
        assert reg.store.schema_version() == len(reg.store.migrations)
        reg.store.conn.rollback()


class Login:
    """One MQTT login attempt: connected, refused, and whether the broker later dropped it."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}")
        self.c.username_pw_set(user, password)
        self.result: list[bool] = []
        self.dropped = threading.Event()
        self.done = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda cl, u, f, rc, p: self.dropped.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_connect(self, cl, u, flags, rc, props) -> None:
        self.result.append(not rc.is_failure)
        self.done.set()

    def ok(self, timeout: float = 15) -> bool:
        assert self.done.wait(timeout), "no CONNACK"
        return self.result[0]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _login_ok(port: int, user: str, password: str) -> bool:
    lg = Login(port, user, password)
    try:
        return lg.ok()
    finally:
        lg.close()


def _until(cond, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def _device(capsys, *argv: str) -> str:
    rc = main(["device", *argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def test_revoke_and_rotate_reach_a_running_broker(tmp_path, capsys, monkeypatch) -> None:
    """Against a running `edgefleet broker` on the registry's broker directory: a revoked device is refused (and
    dropped while connected); a rotated one is refused with its old password and logs in with the new one,
    each after one `edgefleet device` command (the broker reloads on SIGHUP; no restart)."""
    monkeypatch.chdir(tmp_path)  # the CLI's defaults: fleet.db, secrets/, broker/ in the working directory
    _device(capsys, "add", "node-1", "--board", "sim")
    _device(capsys, "add", "node-2", "--board", "sim", "--group", "g")
    port = free_port()
    broker = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "broker", "--data-dir", "broker", "--password-file", "broker/passwd",
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert _until(lambda: Path("broker", PID_FILE).is_file() and _login_ok(port, "node-1", _pw("node-1")))
        acl_at_start = Path("broker/acl").read_text()
        pw1, pw2 = _pw("node-1"), _pw("node-2")
        assert _login_ok(port, "node-2", pw2) and not _login_ok(port, "node-2", pw1)
        connected = Login(port, "node-2", pw2)
        assert connected.ok()

        out = _device(capsys, "revoke", "node-2")
        assert "reloads them now" in out, out
        assert connected.dropped.wait(20), "the broker kept a revoked device connected"
        assert _until(lambda: not _login_ok(port, "node-2", pw2), 20), "a revoked device still logs in"
        connected.close()

        running = Login(port, "node-1", pw1)  # a node still holding the old password
        assert running.ok()
        out = _device(capsys, "rotate", "node-1")
        assert "reloads them now" in out and _pw("node-1") != pw1
        assert running.dropped.wait(20), "the broker kept a session with the old password"
        running.close()
        assert _until(lambda: _login_ok(port, "node-1", _pw("node-1")), 20), "the new password is refused"
        assert not _login_ok(port, "node-1", pw1), "the old password still works"
        assert _login_ok(port, "collector", _pw("collector")) and _login_ok(port, "operator", _pw("operator"))
        # what the registry rendered is what the broker wrote: same ACL; the broker never saw a plain password
        assert Path("broker/acl").read_text() == acl_at_start
        passwd = Path("broker/passwd").read_text()
        for secret in (pw1, pw2, _pw("node-1"), _pw("collector"), _pw("operator")):
            assert secret not in passwd
        assert all(line.split(":", 1)[1].startswith("$7$") for line in passwd.splitlines())
        for p in Path("secrets").iterdir():
            assert _mode(p) == 0o600, p
    finally:
        broker.send_signal(signal.SIGTERM)
        out, _ = broker.communicate(timeout=30)
    assert not Path("broker", PID_FILE).exists(), out  # the pid file goes with the broker
    assert "Traceback" not in out


def _pw(name: str) -> str:
    return Path("secrets", f"{name}.secret").read_text().split("\n")[0]


def test_the_pid_file_appears_only_once_the_broker_listens(tmp_path, monkeypatch) -> None:
    """`edgefleet device` sends SIGHUP to the pid in the pid file. Before mosquitto has installed its handler,
    SIGHUP kills it, and a test waiting on the file met a closed port (CI: connection refused). So the file is
    written after the listener answers: at every probe of the port while starting, there is no pid file yet."""
    import socket

    from edgefleet.broker.mosquitto import Mosquitto

    real = socket.create_connection
    seen: list[bool] = []
    broker = Mosquitto(data_dir=tmp_path / "b")

    def probe(*args, **kwargs):
        seen.append((broker.data_dir / PID_FILE).exists())
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", probe)
    broker.start()
    try:
        monkeypatch.undo()
        assert seen and not any(seen), seen
        assert (broker.data_dir / PID_FILE).read_text().strip() == str(broker.proc.pid)
    finally:
        broker.stop()


def test_a_stale_pid_file_is_never_signalled(tmp_path, capsys) -> None:
    """A pid file left by a crashed broker whose pid now belongs to another process: nobody gets a SIGHUP."""
    from edgefleet.broker.mosquitto import reload_broker

    bdir = tmp_path / "broker"
    bdir.mkdir()
    (bdir / PID_FILE).write_text(f"{os.getpid()}\n")  # this pytest process: not a mosquitto
    assert reload_broker(bdir) is None
    (bdir / PID_FILE).write_text("not a pid\n")
    assert reload_broker(bdir) is None


def test_device_cli_help_and_errors(tmp_path, capsys, monkeypatch) -> None:
    for argv in (["device", "--help"], ["device", "add", "--help"], ["fleet", "cmd", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out or "example:" in out, argv
    assert "--from-registry" in _help(capsys, ["deploy", "--help"])
    monkeypatch.chdir(tmp_path)
    # reading commands never create the database a typo names
    assert main(["device", "list", "--db", "sqlite:///typo.db"]) == 2
    assert "no database" in capsys.readouterr().err and not Path("typo.db").exists()
    assert main(["device", "add", "node\n1", "--board", "sim"]) == 2
    assert "invalid device id" in capsys.readouterr().err
    assert main(["device", "list", "--db", "postgresql://u:pw@127.0.0.1:1/x"]) == 2
    assert "has a password in it" in capsys.readouterr().err


def _help(capsys, argv) -> str:
    with pytest.raises(SystemExit):
        main(argv)
    return capsys.readouterr().out


def test_deploy_from_registry(vboard, tmp_path, capsys, monkeypatch) -> None:
    """deploy --from-registry: the node's config gets its login and its own model key, the model is signed with
    that key, and the registry records what was deployed. Errors: unregistered device, another board."""
    import numpy as np

    from edgefleet.model.modelfile import KIND_GAUSS, ModelFile, Scaling, decode, encode, gauss_body

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGEFLEET_MODEL_KEY_FILE", raising=False)
    _device(capsys, "add", "vb-1", "--board", "sim")
    z = np.zeros(2, np.float32)
    model = encode(ModelFile("t", "anomaly", "env", (), 10, 10, 2, Scaling(z, z + 1), KIND_GAUSS,
                             gauss_body(z, np.eye(2)), threshold=1.0, model_version=3))  # fmt: skip
    mdir = tmp_path / "models" / "pump"
    mdir.mkdir(parents=True)
    (mdir / "model.efm").write_bytes(model)
    base = ["-q", "deploy", "--board", "sim", "--port", vboard.path, "--no-reset", "--from-registry"]
    assert main([*base, "--device-id", "vb-9"]) == 2
    assert "not registered" in capsys.readouterr().err
    rc = main([*base, "--device-id", "vb-1", "--model", str(mdir), "--broker", "mqtt://10.0.0.5:1883"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()

    def on_board(*args: str) -> bytes:
        r = subprocess.run([sys.executable, "-m", "mpremote", "connect", vboard.path, "resume", *args],
                           capture_output=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    cfg = json.loads(on_board("fs", "cat", ":config.json"))
    key = Path("secrets/vb-1.key").read_bytes()
    assert cfg["broker"] == {
        **cfg["broker"],
        "username": "vb-1",
        "password": _pw("vb-1"),
        "url": "mqtt://10.0.0.5:1883",
    }
    assert cfg["model_key"] == key.hex()
    on_board("fs", "cp", ":model.efm", str(tmp_path / "got.efm"))
    efm = (tmp_path / "got.efm").read_bytes()
    assert decode(efm, key).model_version == 3  # signed with the device's key, version kept
    with Registry.open("sqlite:///fleet.db", create=False) as reg:
        dev = reg.get("vb-1")
    assert dev.deployed["model"] == "pump" and dev.deployed["model_version"] == 3
    assert dev.deployed["model_sha256"] == hashlib.sha256(efm).hexdigest() and dev.deployed["board"] == "sim"
