# The decision stage's forecast residual check: a forecast model predicts the change of its first channel from
# the last value; a next sample outside last + score +- threshold is one `anomaly` event per excursion.
from fwcore_helpers import CountSink, sim_hw
from node import decision
from node.sampler import Sampler


class TrendRunner:
    # regress: the change of the last step repeats (a linear extrapolation), in the model's channel order
    model_id = "stub-fc-1"
    task = "regress"
    classes = ()
    sensor = "env"
    channels = ("humidity", "temperature")  # the target is the model's first channel, not the sensor's
    window = 4
    hop = 1
    threshold = 0.5

    def infer(self, window):
        t = window[0]
        return 0, t[3] - t[2]


def _stage(sim_board, runner):
    cfg = {"rates": {"env": 1}, "log_every": {}}
    _, hw = sim_hw(sim_board, {}, cfg)
    sink = CountSink()
    d, err = decision.attach(runner, {}, hw, sink, Sampler(hw, cfg, sink))
    assert err is None, err
    return d, sink


def _feed(d, series):
    for i, h in enumerate(series):
        d.feed(i * 1000, 0, [20.0, h, 1000.0])  # env: temperature, humidity, pressure


def test_residual_outside_band_is_one_anomaly_event_per_excursion(sim_board):
    d, sink = _stage(sim_board, TrendRunner())
    ramp = [40.0 + 0.1 * i for i in range(10)]
    jump = [ramp[-1] + 3.0, ramp[-1] + 3.1, ramp[-1] + 3.2, ramp[-1] + 3.3, ramp[-1] + 3.4]
    drop = [ramp[-1] + 0.3, ramp[-1] + 0.4, ramp[-1] + 0.5]
    _feed(d, ramp + jump + drop)
    an = [e for e in sink.events if e[2] == "anomaly"]
    # the jump (+2.9 over the forecast) fires; the step after it (-2.9: the runner extrapolates the jump) is the
    # same excursion; back inside for a few steps; the drop (3.2 under last + 0.1) is a new excursion
    assert [(e[0], e[3], e[5], e[7]) for e in an] == [(10000, "forecast", "stub-fc-1", "env"),
                                                      (15000, "forecast", "stub-fc-1", "env")], an
    assert abs(an[0][4] - 2.9) < 1e-3 and abs(an[1][4] + 3.2) < 1e-3, an
    assert [e[2] for e in sink.events if e[2] != "anomaly"] == ["forecast"]  # the decision itself, once


def test_no_band_means_no_residual_check(sim_board):
    r = TrendRunner()
    r.threshold = None
    d, sink = _stage(sim_board, r)
    _feed(d, [40.0, 40.0, 40.0, 40.0, 40.0, 90.0, 40.0])
    assert [e[2] for e in sink.events] == ["forecast"], sink.events
