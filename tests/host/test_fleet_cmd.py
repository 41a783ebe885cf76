"""`edgefleet fleet cmd` (issue 13 item 2) against real simulated nodes (the firmware on the MicroPython unix
port) and a real mosquitto whose logins come from the device registry: per-device results, round-trip times,
timeouts for a stopped node, the node's own error for a bad set-config, and the exit status."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgefleet.broker.mosquitto import Mosquitto
from edgefleet.cli import main
from edgefleet.errors import EdgefleetError
from edgefleet.fleetops.commands import parse_settings
from edgefleet.fleetops.devices import PASSWORD_FILE, Registry
from edgefleet.sim.simulate import Fleet

IDS = ["node-001", "node-002", "node-003"]
ROOT = Path(__file__).resolve().parents[2]
OPS = "ops"  # fleet cmd's own operator login: the simulator's status watcher holds `operator`


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three registered nodes (node-001 and node-002 in group `pair`) on a broker run from the registry's files."""
    work = tmp_path_factory.mktemp("fleetcmd")
    db = f"sqlite:///{work}/fleet.db"
    secrets, bdir = work / "secrets", work / "broker"
    with Registry.open(db, secrets, bdir, operator_users=["operator", OPS]) as reg:
        for dev in IDS:
            reg.add(dev, "sim", ["pair"] if dev != "node-003" else [])
    with Registry.open(db, secrets, bdir) as reg:  # a later change without --operator-user keeps ops' rights
        reg.sync_broker()
    assert f"user {OPS}\ntopic write edgefleet/+/cmd" in (bdir / "acl").read_text()
    broker = Mosquitto(data_dir=bdir, password_file=bdir / PASSWORD_FILE, acl_file=bdir / "acl").start()
    fw = work / "fleet"
    fw.mkdir()
    # the simulator provisions each node with the password the registry made for it
    creds = {name: _secret(secrets, name) for name in [*IDS, "collector", "operator"]}
    (fw / "credentials.json").write_text(json.dumps(creds))
    f = Fleet(fw, len(IDS), broker=broker, status_interval_s=2)
    try:
        f.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and f.summary()["online"] < len(IDS):
            time.sleep(0.2)
        assert f.summary()["online"] == len(IDS), f.summary()
        time.sleep(1.0)  # each node subscribes to its /cmd right after CONNACK
        yield {"db": db, "secrets": secrets, "broker": broker, "fleet": f}
    finally:
        f.close()
        broker.stop()


def _secret(secrets: Path, name: str) -> str:
    return (secrets / f"{name}.secret").read_text().split("\n")[0]


def _cmd(capsys, fl, *argv: str) -> tuple[int, str, str]:
    rc = main(["fleet", "cmd", *argv, "--db", fl["db"], "--broker", f"mqtt://{OPS}@127.0.0.1:{fl['broker'].port}",
               "--password-file", str(fl["secrets"] / f"{OPS}.secret")])  # fmt: skip
    out = capsys.readouterr()
    return rc, out.out, out.err


def _rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split(None, 3)[1:] for line in out.splitlines()[1:-1]}


def test_ping_a_group_then_all_with_one_node_stopped(fleet, capsys) -> None:
    rc, out, err = _cmd(capsys, fleet, "group:pair", "ping")
    assert rc == 0, out + err
    rows = _rows(out)
    assert sorted(rows) == ["node-001", "node-002"] and all(r[0] == "ok" for r in rows.values()), out
    for r in rows.values():
        assert float(r[1]) >= 0 and json.loads(r[2]).keys() == {"uptime_s", "seq"}, r  # rtt ms, ping's result
    assert out.splitlines()[-1] == "2 device(s): 2 ok"
    fleet["fleet"].stop_node(2)  # node-003 is down: its command times out
    t0 = time.monotonic()
    rc, out, err = _cmd(capsys, fleet, "all", "ping", "--timeout", "3")
    assert rc == 1, out + err
    rows = _rows(out)
    assert [rows[d][0] for d in IDS] == ["ok", "ok", "timeout"], out
    assert rows["node-003"][1] == "-" and 3 <= time.monotonic() - t0 < 15
    assert out.splitlines()[-1] == "3 device(s): 2 ok, 1 timeout"


def test_set_config_error_is_the_devices_own(fleet, capsys) -> None:
    rc, out, err = _cmd(capsys, fleet, "node-001", "set-config", "status_interval_s=0", "--json")
    assert rc == 1, out + err
    (res,) = json.loads(out)
    assert res["device"] == "node-001" and res["result"] == "error", res
    assert "status_interval_s" in res["detail"] and res["ack"]["ok"] is False, res
    rc, out, err = _cmd(capsys, fleet, "group:pair", "set-config", "status_interval_s=3")
    assert rc == 0, out + err
    assert all(r[0] == "ok" and json.loads(r[2]) == {"status_interval_s": 3} for r in _rows(out).values()), out


def test_usage_errors_exit_2(fleet, capsys) -> None:
    for argv, msg in (
        (["node-001", "ping", "x=1"], "takes no KEY=VALUE"),
        (["node-001", "set-config"], "needs KEY=VALUE"),
        (["node-009", "ping"], "not registered"),
        (["group:nobody", "ping"], "no active device in group"),
    ):
        rc, _out, err = _cmd(capsys, fleet, *argv)
        assert rc == 2 and msg in err and "Traceback" not in err, (argv, err)
    # a wrong operator password: one clear error
    bad = fleet["secrets"] / "wrong.secret"
    bad.write_text("not-the-password\n")
    rc = main(["fleet", "cmd", "all", "ping", "--db", fleet["db"], "--broker",
               f"mqtt://{OPS}@127.0.0.1:{fleet['broker'].port}", "--password-file", str(bad)])  # fmt: skip
    assert rc == 2 and "refused the operator login" in capsys.readouterr().err
    rc = main(["fleet", "cmd", "all", "ping", "--db", fleet["db"], "--broker", "mqtt://ops:pw@127.0.0.1:1"])
    assert rc == 2 and "has a password in it" in capsys.readouterr().err


def test_parse_settings() -> None:
    assert parse_settings(["status_interval_s=30", "rates.env=0.5", "rates.imu=50", "rule=null"]) == {
        "status_interval_s": 30, "rates": {"env": 0.5, "imu": 50}, "rule": None,
    }  # fmt: skip
    assert parse_settings(['rule={"output": "relay", "on_class": "running"}', "x=text"]) == {
        "rule": {"output": "relay", "on_class": "running"}, "x": "text",
    }  # fmt: skip
    for bad in (["novalue"], ["=1"], ["a=1", "a.b=2"]):
        with pytest.raises(EdgefleetError):
            parse_settings(bad)


def test_a_rollout_to_firmware_without_ota_stops_at_its_first_stage(fleet, tmp_path) -> None:
    """The node side of over-the-air updates is not in this firmware yet (docs/protocol.md): a node answers `ota`
    as an unknown command. A rollout must then fail closed against the real firmware: its first stage's device
    fails with the node's own reason, the gate halts the rollout, and the other devices are never offered."""
    from edgefleet.fleetops import rollout as ro
    from edgefleet.model.modelfile import decode, encode

    mf = decode((ROOT / "models" / "basicmotions-rf" / "model.efm").read_bytes())
    mf.model_version += 1
    art = tmp_path / "model.efm"
    art.write_bytes(encode(mf))
    conn = ro.Connection(
        db=fleet["db"], broker=f"mqtt://{OPS}@127.0.0.1:{fleet['broker'].port}", password=_secret(fleet["secrets"], OPS),
        secrets_dir=str(fleet["secrets"]), broker_dir=str(fleet["secrets"].parent / "broker"),
        operator_users=("operator", OPS),
    )  # fmt: skip
    lines: list[str] = []
    opts = ro.RolloutOptions(artifact=str(art), target="group:pair", stages="50%,100%", soak_s=1, confirm_s=10,
                             wait_s=20, seed=1, offer_timeout_s=10)  # fmt: skip
    res = ro.run_rollout(opts, conn, ro.Hooks(say=lines.append, progress_every_s=5, poll_s=1))
    assert res.state == ro.HALTED, "\n".join(lines)
    assert res.gates and not res.gates[0].passed
    with Registry.open(fleet["db"], fleet["secrets"], fleet["secrets"].parent / "broker") as reg:
        devs = {d.device: d for d in ro.RolloutStore(reg.store).devices(res.id)}
    first = [d for d in devs.values() if d.stage == 0]
    assert len(first) == 1 and first[0].state == "failed" and "unknown command 'ota'" in first[0].reason, devs
    assert [d.state for d in devs.values() if d.stage == 1] == ["queued"]  # never offered
