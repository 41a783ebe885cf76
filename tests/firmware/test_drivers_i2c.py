# BME280 and MPU6050 drivers against their register-level models on the simulated I2C bus.
from array import array

from fwcore_helpers import flat, sim_hw
from node.hw import SensorError
from node.hw.bme280 import BME280
from node.hw.mpu6050 import MPU6050


def _read(sensor):
    out = array("f", [0.0] * len(sensor.channels))
    sensor.read(out)
    return out


def test_bme280_reads_back_scenario_within_tolerance(sim_board):
    cases = [(21.0, 45.0, 1013.25), (-12.3, 80.5, 870.0), (48.7, 12.0, 1085.5), (0.0, 99.0, 500.0)]
    for t, h, p in cases:
        spec = {"sensors": {"env": {"channels": {
            "temperature": flat(t), "humidity": flat(h), "pressure": flat(p)}}}}  # fmt: skip
        _, hw = sim_hw(sim_board, spec)
        v = _read(hw.sensor("env"))
        assert abs(v[0] - t) <= 0.02, (t, v[0])
        assert abs(v[1] - h) <= 0.1, (h, v[1])
        assert abs(v[2] - p) <= 0.05, (p, v[2])
    # the driver really configured the chip: forced mode at 1 Hz, one conversion per read
    dev = hw.sim.devices["env"]
    n = dev.measurements
    _read(hw.sensor("env"))
    assert dev.measurements == n + 1
    assert dev.regs[0xF4] & 3 == 0, "forced mode returns to sleep after the conversion"
    assert dev._busy == 0, "the driver waited for `measuring` to clear before reading the data"
    assert dev.regs[0xF2] == 1 and dev.regs[0xF4] >> 5 == 1, "oversampling x1 set"


def test_bme280_normal_mode_and_wrong_chip(sim_board):
    _, hw = sim_hw(sim_board, config={"rates": {"env": 5, "imu": 10, "soil": 1, "air": 0.5}})
    env = hw.sensor("env")
    assert not env.forced
    v = _read(env)
    assert abs(v[0] - 21.0) < 0.2 and abs(v[2] - 1013.25) < 0.5, list(v)
    assert hw.sim.devices["env"].regs[0xF4] & 3 == 3, "normal mode"
    # a BME280 driver pointed at the MPU6050's address must refuse it by chip id
    wrong = BME280("wrong", hw.sim.buses["i2c0"], 0x68)
    try:
        _read(wrong)
    except SensorError as e:
        assert "chip id 0x00" in str(e) or "expected 0x60" in str(e), str(e)
    else:
        raise AssertionError("a wrong chip id must raise SensorError")


def test_mpu6050_wakes_and_scales(sim_board):
    spec = {"sensors": {"imu": {"channels": {
        "ax": flat(0.5), "ay": flat(-1.25), "az": flat(1.0),
        "gx": flat(100.0), "gy": flat(-200.0), "gz": flat(3.5)}}}}  # fmt: skip
    _, hw = sim_hw(sim_board, spec)
    dev = hw.sim.devices["imu"]
    assert dev.regs[0x75] == 0x68 and dev.asleep(), "power-on state: WHO_AM_I 0x68, SLEEP set"
    bus = hw.sim.buses["i2c0"]
    for g, dps in ((2, 250), (4, 500), (8, 1000), (16, 2000)):
        m = MPU6050("imu", bus, 0x68, accel_g=g, gyro_dps=dps, rate_hz=100)
        v = _read(m)
        assert not dev.asleep(), "driver clears SLEEP"
        assert dev.regs[0x1C] >> 3 == (2, 4, 8, 16).index(g) and dev.regs[0x1B] >> 3 == (250, 500, 1000, 2000).index(dps)
        assert dev.regs[0x19] == 9, "SMPLRT_DIV for 100 Hz"
        lsb_a = 16384 / (g / 2)
        lsb_g = (131.0, 65.5, 32.8, 16.4)[(250, 500, 1000, 2000).index(dps)]
        for i, want in enumerate((0.5, -1.25, 1.0)):
            assert abs(v[i] - want) <= 1.0 / lsb_a, (g, i, v[i])
        for i, want in enumerate((100.0, -200.0, 3.5)):
            assert abs(v[3 + i] - want) <= 1.5 / lsb_g, (dps, i, v[3 + i])
    # out of range for +-2 g: saturates at full scale instead of wrapping
    spec["sensors"]["imu"]["channels"]["ax"] = flat(3.0)
    _, hw = sim_hw(sim_board, spec)
    m = MPU6050("imu", hw.sim.buses["i2c0"], 0x68, accel_g=2)
    assert abs(_read(m)[0] - 32767 / 16384) < 1e-3


def test_mpu6050_replugged_comes_back_asleep_and_is_woken_again(sim_board):
    _, hw = sim_hw(sim_board)
    imu = hw.sensor("imu")
    assert abs(_read(imu)[2] - 1.0) < 0.05
    hw.sim.unplug("imu")
    try:
        _read(imu)
    except SensorError as e:
        assert e.errno == 19, e.errno  # ENODEV, as the ESP32 reports a NACK
    else:
        raise AssertionError("unplugged device must raise SensorError")
    hw.sim.plug("imu")
    v = _read(imu)
    assert abs(v[2] - 1.0) < 0.05, "re-initialised after re-plug (woken from sleep)"
    assert imu.inits == 2 and hw.sim.devices["imu"].resets == 2


def test_bme280_integer_compensation_matches_the_datasheet_example():
    # Bosch's worked example (BMP280/BME280 compensation, same formulas): adc_T 519888 -> t_fine 128422,
    # 25.08 degC; adc_P 415148 -> 100653.27 Pa. Independent of our simulated chip.
    d = BME280("x", None)
    d.T1, d.T2, d.T3 = 27504, 26435, -1000
    d.P1, d.P2, d.P3, d.P4, d.P5, d.P6, d.P7, d.P8, d.P9 = 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000
    tf = d._t_fine(519888)
    assert tf == 128422 and (tf * 5 + 128) >> 8 == 2508, tf
    p = d._pressure(415148, tf) / 256
    assert abs(p - 100653.27) < 0.05, p
