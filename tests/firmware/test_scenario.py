# The scenario: seeded generators, fault injection, CSV replay with ground-truth labels, clear errors.
from array import array

from fwcore_helpers import sim_hw, write_json
from simboard import scenario as sc

KINDS = {"env": "bme280", "imu": "mpu6050", "soil": "adc", "air": "dht22"}


def _vals(s, name, t):
    out = array("f", [0.0] * len(sc.CHANNELS[KINDS[name]]))
    s.values(name, out, t)
    return out


def test_generators_are_seeded_and_shaped():
    spec = {"seed": 7, "sensors": {"env": {"channels": {"temperature": {
        "level": 20.0, "amp": 2.0, "period_s": 100, "noise": 0.0, "drift_per_h": 3.6}}}}}  # fmt: skip
    s = sc.Scenario(spec, KINDS)
    assert abs(_vals(s, "env", 0.0)[0] - 20.0) < 1e-4
    assert abs(_vals(s, "env", 25.0)[0] - (20.0 + 2.0 + 0.025)) < 1e-3  # sine peak + drift 3.6/h
    a = [_vals(sc.Scenario({"seed": 3}, KINDS), "imu", 1.0)[0] for _ in range(2)]
    b = _vals(sc.Scenario({"seed": 4}, KINDS), "imu", 1.0)[0]
    assert a[0] == a[1] and a[0] != b, (a, b)


def test_faults_spike_stuck_dropout_unplugged():
    spec = {"sensors": {"env": {"channels": {"temperature": {"level": 21.0, "noise": 0.1}}, "faults": [
        {"kind": "spike", "channel": "temperature", "at_s": 30, "value": 85.0},
        {"kind": "stuck", "from_s": 60, "to_s": 90},
        {"kind": "dropout", "from_s": 100, "to_s": 105},
        {"kind": "unplugged", "from_s": 120, "to_s": 150}]}}}  # fmt: skip
    s = sc.Scenario(spec, KINDS)
    assert _vals(s, "env", 29.5)[0] < 30
    assert _vals(s, "env", 30.2)[0] == 85.0, "the first reading at/after at_s is the spike"
    assert _vals(s, "env", 30.4)[0] < 30, "a spike is one reading"
    frozen = _vals(s, "env", 60.0)
    assert list(_vals(s, "env", 75.0)) == list(frozen) and s.label_at("env", 75.0) == "stuck"
    assert list(_vals(s, "env", 91.0)) != list(frozen)
    assert s.state("env", 101.0) == sc.DROPOUT and s.state("env", 130.0) == sc.UNPLUGGED
    assert s.state("env", 150.0) == sc.OK and s.state("imu", 130.0) == sc.OK


def test_replay_csv_with_labels(workdir):
    path = workdir + "/replay.csv"
    with open(path, "w") as f:
        f.write("t_s,ax,az,label\n")
        for i in range(20):
            f.write("%.1f,%.2f,1.0,%s\n" % (i * 0.1, i / 10, "idle" if i < 10 else "running"))
    spec = {"sensors": {"imu": {"replay": {"file": path, "rate_hz": 10, "loop": True}}}}
    s = sc.Scenario(spec, KINDS)
    v = _vals(s, "imu", 0.55)
    assert abs(v[0] - 0.5) < 1e-6 and abs(v[2] - 1.0) < 1e-6, list(v)
    assert abs(v[3]) < 1, "gyro falls back to the default generator"
    assert s.label_at("imu", 0.3) == "idle" and s.label_at("imu", 1.5) == "running"
    assert s.label_at("imu", 2.3) == "idle", "loops after 2 s"
    assert abs(_vals(s, "imu", 2.35)[0] - 0.3) < 1e-6


def test_scenario_file_through_build_and_bad_files(sim_board, workdir):
    from node import board as boardmod
    from node import appboot as hwmod

    b = boardmod.load(sim_board)
    p = workdir + "/s.json"
    write_json(p, {"seed": 2, "sensors": {"soil": {"channels": {"value": {"level": 60, "noise": 0}}}}})
    hw = hwmod.build(b, {"rates": {"soil": 1}}, p)
    out = array("f", [0.0])
    hw.sensor("soil").read(out)
    assert abs(out[0] - 60.0) < 0.05, out[0]
    for bad, words in (
        ({"sensors": {"nope": {}}}, "nope"),
        ({"sensors": {"env": {"channels": {"colour": {}}}}}, "colour"),
        ({"sensors": {"env": {"faults": [{"kind": "melt", "from_s": 1, "to_s": 2}]}}}, "melt"),
    ):
        write_json(p, bad)
        try:
            sc.load(p, b)
        except sc.ScenarioError as e:
            assert words in str(e), str(e)
        else:
            raise AssertionError("bad scenario accepted: %r" % bad)
    try:
        sc.load(workdir + "/missing.json", b)
    except sc.ScenarioError as e:
        assert "not found" in str(e)
    else:
        raise AssertionError("missing file accepted")
