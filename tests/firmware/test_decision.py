# The decision stage with runner stubs that honour node.model's interface (docs/model-file.md: model_id, task,
# classes, sensor, channels, window, hop, threshold, infer(window) -> (index, score)).
from fwcore_helpers import CountSink, sim_hw
from node import decision
from node.sampler import Sampler

RELAY_PIN = 26
LED_PIN = 2


class MeanRunner:
    # classify: "running" when the window's mean |ax| is over 0.3; checks the window it is handed
    model_id = "stub-mean-1"
    task = "classify"
    classes = ("idle", "running")
    sensor = "imu"
    channels = ("ax", "az")
    window = 8
    hop = 4
    threshold = None

    def __init__(self):
        self.calls = 0
        self.step = None  # the first window that contains the step from 0 to 1 g

    def infer(self, window):
        assert len(window) == 2 and len(window[0]) == 8 and len(window[1]) == 8
        self.calls += 1
        w = window[0]
        if self.step is None and w[0] < 0.5 < w[7]:
            self.step = list(w)
        m = sum(abs(x) for x in window[0]) / 8
        return (1, min(1.0, m)) if m > 0.3 else (0, 1.0 - m)


class ScoreRunner:
    # anomaly: the score is the last az; the runner's own threshold decides index
    model_id = "stub-anom-1"
    task = "anomaly"
    classes = ()
    sensor = "imu"
    channels = ("az",)
    window = 4
    hop = 1
    threshold = 0.5

    def infer(self, window):
        s = window[0][3]
        return (1 if s > self.threshold else 0), s


def _sampled(sim_board, spec, rates=None):
    cfg = {"rates": rates or {"imu": 10}, "log_every": {}}
    _, hw = sim_hw(sim_board, spec, cfg)
    sink = CountSink()
    return hw, sink, Sampler(hw, cfg, sink)


def test_class_events_only_on_change_and_relay_follows(sim_board):
    # ax: 0 for 5 s, 1 g (running) for 5 s, 0 again
    spec = {"sensors": {"imu": {"channels": {"ax": {"level": 0.0, "noise": 0.0}},
                                "faults": [{"kind": "spike", "channel": "ax", "at_s": 5, "dur_s": 5, "value": 1.0}]}}}  # fmt: skip
    hw, sink, s = _sampled(sim_board, spec)
    r = MeanRunner()
    d, err = decision.attach(r, {"rule": {"output": "relay", "on_class": "running"}}, hw, sink, s)
    assert err is None, err
    relay = hw.sim.pins[RELAY_PIN]
    imu = s.slot("imu")
    levels = bytearray(150)  # preallocated: the test runs in the board's 110 KB heap
    for i in range(150):
        hw.sim.scenario.set_time(i / 10)
        s.cycle(imu)
        levels[i] = relay.value()
    assert r.calls == (150 - 8) // 4 + 1, r.calls
    # windows are oldest first: the first one that sees the step has it at its end
    assert r.step is not None and r.step == sorted(r.step), r.step
    ev = [e for e in sink.events if e[2] == "class"]
    assert [(e[3], e[6]) for e in ev] == [("idle", "relay:off"), ("running", "relay:on"), ("idle", "relay:off")], ev
    assert all(e[5] == "stub-mean-1" and e[7] == "imu" for e in ev)
    assert levels[40] == 0 and levels[90] == 1 and levels[149] == 0
    assert relay.changes == 2, relay.changes
    assert d.events == 3 and d.inferences == r.calls


def test_anomaly_score_over_rule_threshold_drives_led(sim_board):
    hw, sink, s = _sampled(sim_board, {})
    r = ScoreRunner()
    d, err = decision.attach(r, {"rule": {"output": "led", "on_anomaly_over": 0.8}}, hw, sink, s)
    assert err is None, err
    led = hw.sim.pins[LED_PIN]
    for az in (0.1, 0.1, 0.1, 0.1, 0.6, 0.6, 0.9, 0.9, 0.2):
        d.feed(0, 0, [0.0, 0.0, az, 0.0, 0.0, 0.0])
    ev = [(e[2], e[3], e[6]) for e in sink.events]
    assert ev == [
        ("anomaly", "normal", "led:off"),
        ("anomaly", "anomaly", None),  # over the model's threshold, not the rule's
        ("anomaly", "anomaly", "led:on"),
        ("anomaly", "normal", "led:off"),
    ], ev
    assert led.value() == 0 and led.changes == 2, led.changes  # on once, off once


def test_no_model_means_stage_off_and_errors_are_messages(sim_board):
    hw, sink, s = _sampled(sim_board, {})
    assert decision.setup({"model": None}, hw, sink, s) == (None, None)
    d, err = decision.setup({"model": "missing.efm", "rule": None}, hw, sink, s)
    assert d is None and "model" in err and ("missing.efm" in err or "node.model" in err), err
    # the app's handle: same outcomes, as an object or a DecisionError
    assert decision.Decision(hw, {"model": None}, sink, s).model_id is None
    try:
        decision.Decision(hw, {"model": "missing.efm"}, sink, s)
    except decision.DecisionError as e:
        assert str(e) == err, (str(e), err)
    else:
        raise AssertionError("a missing model must raise DecisionError")

    class Bad(MeanRunner):
        channels = ("ax", "temperature")

    d, err = decision.attach(Bad(), {"rule": None}, hw, sink, s)
    assert d is None and "temperature" in err, err
    d, err = decision.attach(MeanRunner(), {"rule": {"output": "relay", "on_class": "flying"}}, hw, sink, s)
    assert d is None and "rule.on_class" in err and "flying" in err, err
    d, err = decision.attach(MeanRunner(), {"rule": {"output": "siren", "on_class": "idle"}}, hw, sink, s)
    assert d is None and "rule.output" in err, err
    s2 = Sampler(hw, {"rates": {"env": 1}, "log_every": {}}, sink)
    d, err = decision.attach(MeanRunner(), {"rule": None}, hw, sink, s2)
    assert d is None and "rate is 0" in err, err
