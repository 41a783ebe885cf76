# Every sensor unplugged mid-run and plugged back, through the sampler: no crash, missing samples counted,
# one fault event when it goes and one when it is back, drivers re-initialised.
from fwcore_helpers import CountSink, sim_hw
from node.sampler import Sampler


def test_every_sensor_unplugged_mid_run_and_back(sim_board):
    faults = [{"kind": "unplugged", "from_s": 10, "to_s": 20}]
    spec = {"sensors": {n: {"faults": faults} for n in ("env", "imu", "soil", "air")}}
    _, hw = sim_hw(sim_board, spec)
    sink = CountSink()
    s = Sampler(hw, {"rates": {"env": 1, "imu": 10, "soil": 1, "air": 0.5}, "log_every": {}}, sink)
    for step in range(30):
        hw.sim.scenario.set_time(float(step))
        for sl in s.slots:
            s.cycle(sl)
    per = s.sensor_counters()
    for name in ("env", "imu", "soil", "air"):
        c = per[name]
        assert c["missing"] == 10, (name, c)
        assert c["sampled"] == 20, (name, c)
        f = sink.faults(name)
        assert [(e[3], e[6]) for e in f] == [("unplugged", "begin"), ("unplugged", "end")], (name, f)
        assert f[0][4] == 1.0 and f[1][4] == 0.0
        assert not c["down"]
        # readings stopped while unplugged and resumed afterwards
        assert sink.counts[name] == 20, (name, sink.counts)
    assert hw.sensor("env").inits == 2 and hw.sensor("imu").inits == 2
