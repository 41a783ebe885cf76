"""The console's read queries on both backends: chart downsampling keeps the range exact, thins each sensor to
about the points asked, keeps every flagged sample; the fleet rows count seq gaps like `fleet status`."""

from __future__ import annotations

import json

from edgefleet.console import data
from edgefleet.fleet import device_summary
from edgefleet.storage import Batch, open_storage


def _fill(url: str) -> None:
    s = open_storage(url)
    rows, seq = [], 0
    for i in range(3000):  # imu at 10 Hz, env at 1 Hz, one flagged env sample, a gap of 5 seqs at 2000
        seq += 1
        if seq == 2000:
            seq += 5
        ts = 1_000_000 + i * 100
        rows.append(("d1", seq, ts, "imu", 0, json.dumps({"ax": i / 10}), ts))
        if i % 10 == 0:
            seq += 1
            rows.append(("d1", seq, ts, "env", 1 if i == 1230 else 0, json.dumps({"temperature": 20 + i / 1000}), ts))
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
