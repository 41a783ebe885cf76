# Sample cleaning: Hampel spike rejection, stuck detection, range checks, counters and R_noise.
from array import array

from node.clean import FLAG_STUCK, FLAG_SUSPECT, REJECT, Cleaner, default_stuck_n

CH = ("temperature", "humidity", "pressure")


def _feed(c, t, h=45.0, p=1013.0):
    # (flags, cleaned copy); the raw reading must come out unchanged
    v = array("f", [t, h, p])
    out = array("f", [0.0, 0.0, 0.0])
    f = c.process(v, out)
    assert bytes(v) == bytes(array("f", [t, h, p])), "the raw reading is never changed"
    return f, out


def test_spike_is_flagged_and_its_cleaned_copy_is_the_median():
    c = Cleaner("bme280", CH, rate_hz=1, stuck_n=50)
    for i in range(20):
        f, v = _feed(c, 21.0 + 0.05 * (i % 3))
        assert f == 0 and abs(v[0] - (21.0 + 0.05 * (i % 3))) < 1e-4, "normal readings pass unchanged"
    assert c.rejected == 0
    f, v = _feed(c, 70.0)  # in range (BME280 goes to 85 C), but a spike
    assert f == FLAG_SUSPECT and abs(v[0] - 21.05) < 0.06, (f, v[0])
    assert c.rejected == 1 and c.sampled == 21
    assert abs(c.r_noise() - 1 / 21) < 1e-6
    # the other channels of that reading are untouched
    assert abs(v[1] - 45.0) < 1e-4 and abs(v[2] - 1013.0) < 1e-3


def test_a_real_step_is_accepted_after_half_a_window():
    c = Cleaner("bme280", CH, rate_hz=1, window=7, stuck_n=50)
    for i in range(10):
        _feed(c, 20.0 + 0.01 * (i % 2))
    out = []
    for i in range(8):
        _, v = _feed(c, 25.0 + 0.01 * (i % 2))
        out.append(v[0])
    assert out[0] < 20.1, "first reading after a step looks like a spike"
    assert out[-1] > 24.9, "after the median moved, the new level passes: %s" % out
    assert c.rejected <= 4, c.rejected


def test_flat_signal_does_not_turn_small_changes_into_outliers():
    # MAD is 0 on a flat signal; the per-channel floor keeps 0.1 C steps from being rejected
    c = Cleaner("bme280", CH, rate_hz=1, stuck_n=1000)
    for _ in range(10):
        _feed(c, 22.0)
    f, v = _feed(c, 22.1)
    assert abs(v[0] - 22.1) < 1e-4 and c.rejected == 0


def test_stuck_sensor_is_flagged_once_and_cleared():
    c = Cleaner("bme280", CH, rate_hz=1, stuck_n=5)
    for i in range(5):
        _feed(c, 21.0 + 0.1 * i)
    flags = []
    events = []
    for _ in range(8):
        f, _ = _feed(c, 23.3)
        flags.append(f & FLAG_STUCK)  # the step to 23.3 is also suspect (8) until the median follows
        if c.event:
            events.append(c.event)
    assert flags == [0, 0, 0, 0, FLAG_STUCK, FLAG_STUCK, FLAG_STUCK, FLAG_STUCK], flags
    assert events == [("stuck", "begin")], events
    assert c.stuck == 4
    f, _ = _feed(c, 23.4)
    assert f == 0 and c.event == ("stuck", "end")


def test_range_rejects_whole_reading_with_events():
    c = Cleaner("bme280", CH, rate_hz=1)
    assert _feed(c, 21.0)[0] == 0
    f, _ = _feed(c, 21.0, h=120.0)  # humidity > 100 %
    assert f == REJECT and c.event == ("range", "begin")
    f, _ = _feed(c, 21.0, p=float("nan"))
    assert f == REJECT and c.event is None, "one event per excursion"
    f, _ = _feed(c, 21.0)
    assert f == 0 and c.event == ("range", "end")
    assert c.rejected == 2 and c.sampled == 4
    c.miss(3)
    assert c.missing == 3


def test_adc_limits_come_from_calibration():
    lim = {"value": (-5.0, 105.0, 2.0)}
    c = Cleaner("adc", ("value",), limits=lim)
    out = array("f", [0.0])
    assert c.process(array("f", [50.0]), out) == 0
    assert c.process(array("f", [-20.0]), out) == REJECT
    try:
        Cleaner("adc", ("value",))
    except ValueError as e:
        assert "value" in str(e)
    else:
        raise AssertionError("an ADC without limits must be refused")


def test_default_stuck_window_is_time_based():
    assert default_stuck_n(1) == 20 and default_stuck_n(10) == 200 and default_stuck_n(0.1) == 8
    assert default_stuck_n(0.5, "dht22") == 30
    assert Cleaner("dht22", ("temperature", "humidity"), rate_hz=0.5).stuck_n == 30


def test_cleaning_off_passes_everything_raw():
    c = Cleaner("bme280", CH, rate_hz=1, enabled=False)
    for _ in range(30):
        f, v = _feed(c, 21.0)  # would be stuck
        assert f == 0
    f, v = _feed(c, 70.0)
    assert f == 0 and abs(v[0] - 70.0) < 1e-4
    f, v = _feed(c, 21.0, h=120.0)
    assert f == 0 and abs(v[1] - 120.0) < 1e-4
    assert c.rejected == 0 and c.stuck == 0 and c.sampled == 32
