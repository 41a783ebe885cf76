"""The console's read queries on both backends: chart downsampling keeps the range exact, thins each sensor to
about the points asked, keeps every flagged sample; the fleet rows count seq gaps like `fleet status`."""

from __future__ import annotations

import json

from edgefleet.collect.fleet import device_summary, render_table
from edgefleet.collect.storage import Batch, open_storage
from edgefleet.console import data


def _fill(url: str) -> None:
    s = open_storage(url)
    rows, seq = [], 0
    for i in range(3000):  # imu at 10 Hz, env at 1 Hz, one flagged env sample, a gap of 5 seqs at 2000
        seq += 1
        if seq == 2000:
            seq += 5
        ts = 1_000_000 + i * 100
        rows.append(("d1", "", seq, ts, "imu", 0, json.dumps({"ax": i / 10}), ts))
        if i % 10 == 0:
            seq += 1
            rows.append(
                ("d1", "", seq, ts, "env", 1 if i == 1230 else 0, json.dumps({"temperature": 20 + i / 1000}), ts)
            )
    s.write(Batch(readings={"d1": rows}, seen={"d1": 2_000_000}))
    s.close()


def test_series_exact_range_thinned_flagged_kept(db_url) -> None:
    _fill(db_url)
    s = open_storage(db_url)
    try:
        since, until = 1_000_000 + 500 * 100, 1_000_000 + 2500 * 100  # 200 s: 2000 imu + 200 env readings
        for points, path in ((300, "scan"), (100, "probe")):  # 2200 records: scanned, then probed by seq
            ser = data.series(s, "d1", since, until, points=points)
            imu, env = ser.sensors["imu"], ser.sensors["env"]
            assert all(since <= t < until for t in imu["ts"] + env["ts"]), path
            assert 0.7 * points <= len(imu["ts"]) <= 1.3 * points, (path, len(imu["ts"]))
            assert min(150, 0.6 * points) <= len(env["ts"]) <= 201, (path, len(env["ts"]))
            assert max(imu["ts"]) - min(imu["ts"]) > 0.95 * (until - since), path  # spread over the whole range
            if path == "scan":  # the flagged sample is always kept in a scanned range
                assert env["flags"][env["ts"].index(1_000_000 + 1230 * 100)] == 1
        full = data.series(s, "d1", since, until, points=4000)  # more points than readings: everything
        assert len(full.sensors["imu"]["ts"]) == 2000 and len(full.sensors["env"]["ts"]) == 200
        assert full.sensors["imu"]["channels"]["ax"][0] == 50.0
        assert data.series(s, "d1", 0, 1000, 100).sensors == {}  # before the first reading
        rows = data.fleet_rows(s)
        (full_row,) = s.fleet()
        assert rows[0]["missing"] == device_summary(full_row)["missing"] == 5
    finally:
        s.close()


def test_two_flash_logs(db_url) -> None:
    """A board whose log restarted (protocol v2): the chart covers both logs in time order, gaps are counted per
    log as `fleet status` counts them, the live tail follows the newest log."""
    s = open_storage(db_url)
    try:
        old = [
            ("d2", "aaaa0001", q, 1000 * q, "env", 0, json.dumps({"t": q}), 1000 * q) for q in range(1, 101) if q != 50
        ]
        new = [("d2", "bbbb0002", q, 200_000 + 1000 * q, "env", 0, json.dumps({"t": -q}), 200_000 + 1000 * q)
               for q in range(1, 31) if q not in (10, 11)]  # fmt: skip
        s.write(Batch(readings={"d2": old}, seen={"d2": 100_000}))
        s.write(Batch(readings={"d2": new}, seen={"d2": 230_000}))
        ser = data.series(s, "d2", 0, 10**9, points=1000)
        ts = ser.sensors["env"]["ts"]
        assert len(ts) == 99 + 28 and ts == sorted(ts)
        assert (ser.log, ser.last_seq) == ("bbbb0002", 30)
        (row,) = data.fleet_rows(s)
        (full,) = s.fleet()
        assert row["missing"] == device_summary(full)["missing"] == 3
        assert (row["min_seq"], row["max_seq"]) == (1, 30)
        assert data.current_log(s, "d2") == "bbbb0002"
        sensors, last = data.new_readings(s, "d2", "bbbb0002", 25)
        assert last == 30 and len(sensors["env"]["ts"]) == 5
    finally:
        s.close()


def test_fleet_rows_show_updates_and_rollouts(db_url, tmp_path) -> None:
    """The console's fleet table and `fleet status` show what a device did with its last update (its own status
    report) and its part in the latest rollout (the rollout tables); before any rollout, no rollout column value
    and no error (the tables do not exist yet)."""
    from edgefleet.fleetops import rollout as ro
    from edgefleet.fleetops.ota import Artifact
    from edgefleet.sim import fleetsim as fs

    s = open_storage(db_url)
    try:
        body = fs.online_status("d1")
        body["ota"] = {"kind": "model", "ver": 7, "state": "rolled_back", "got": 900, "size": 900,
                       "reason": "not confirmed in 20 s"}  # fmt: skip
        body["ota_ver"] = {"model": 6, "config": 0, "code": 0}
        s.write(Batch(statuses=[("d1", 1_000, "online", True, json.dumps(body))], seen={"d1": 1_000}))
        (row,) = data.fleet_rows(s)
        assert row["rollout"] is None and row["model_ver"] == 6
        assert row["ota"] == "model v7 rolled_back: not confirmed in 20 s"
        rs = ro.RolloutStore(s)
        art = Artifact(str(tmp_path / "m.efm"), "model", 7, b"EFML" + bytes(60))
        rs.create("r-1", art, "all", [["d1"], ["d2"]], 30.0, ro.GateSettings(), {"confirm_s": 60, "chunk": 1024})
        rs.set_device("r-1", "d1", state="rolled_back")
        rs.set("r-1", state=ro.HALTED)
        (row,) = data.fleet_rows(s)
        assert row["rollout"] == "r-1 1/2 rolled_back, halted"
        (full,) = s.fleet()
        line = render_table([full]).splitlines()[1]
        assert " v6 " in line and line.endswith("model v7 rolled_back: not confirmed in 20 s"), line
    finally:
        s.close()
