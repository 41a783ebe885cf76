# DHT22 (5 bytes on a simulated pin) and the calibrated analog input (simulated 12-bit ADC).
from array import array

from fwcore_helpers import flat, sim_hw
from node.hw import SensorError


def _read(sensor):
    out = array("f", [0.0] * len(sensor.channels))
    sensor.read(out)
    return out


def test_dht22_decodes_sign_and_rejects_bad_checksum(sim_board):
    spec = {"sensors": {"air": {"channels": {"temperature": flat(-7.3), "humidity": flat(63.4)},
                                "faults": [{"kind": "corrupt", "from_s": 10, "to_s": 12}]}}}  # fmt: skip
    _, hw = sim_hw(sim_board, spec)
    air = hw.sensor("air")
    v = _read(air)
    assert abs(v[0] + 7.3) < 0.051 and abs(v[1] - 63.4) < 0.051, list(v)
    assert air._buf[2] & 0x80, "sign bit on the wire for a negative temperature"
    hw.sim.scenario.set_time(11.0)
    try:
        _read(air)
    except SensorError as e:
        assert "checksum" in str(e)
    else:
        raise AssertionError("a bad checksum must raise SensorError")
    assert air.checksum_errors == 1
    hw.sim.scenario.set_time(13.0)
    assert abs(_read(air)[1] - 63.4) < 0.051


def test_adc_two_point_calibration_and_rail(sim_board):
    # board: raw 150 -> 0 %, raw 3900 -> 100 %
    for want in (0.0, 12.5, 50.0, 100.0):
        _, hw = sim_hw(sim_board, {"sensors": {"soil": {"channels": {"value": flat(want)}}}})
        soil = hw.sensor("soil")
        v = _read(soil)
        assert abs(v[0] - want) <= 100 / 3750, (want, v[0])  # one raw LSB
    assert soil.last_raw == 3900 * 4, soil.last_raw  # 4 conversions averaged
    hw.sim.unplug("soil")
    try:
        _read(soil)
    except SensorError as e:
        assert "rail" in str(e)
    else:
        raise AssertionError("an input at the rail must raise SensorError")
