# Register-level models of the sensors, driven by the scenario. The drivers in node.hw talk to these exactly
# as they talk to the chips: chip ids, configuration registers, sleep bits, calibration registers, raw ADC
# words. Values are produced by inverting each chip's transfer function, so a driver bug shows up as a
# wrong reading, not as a model that agrees with itself:
# - BME280: raw temperature/pressure/humidity words come from inverting the datasheet's floating-point
#   compensation (closed form, quadratic); the driver uses the datasheet's integer compensation. The two
#   agree within the chip's resolution, which the tests check.
# - MPU6050: raw int16 words from the configured full-scale ranges.
# - DHT22: the 5 bytes a DHT22 sends, with checksum and sign bit.
# - ADC: a raw 12-bit reading from the inverse of the board's two-point calibration.
# After being unplugged, a device comes back in its power-on state (BME280 asleep, MPU6050 asleep), as a
# re-plugged chip does, so drivers must re-initialise.
import errno
import math
from array import array

from simboard import scenario as sc

# A realistic BME280 calibration set (values of the order found in real parts).
BME280_CAL = {
    "T1": 27504, "T2": 26435, "T3": -1000,
    "P1": 36477, "P2": -10685, "P3": 3024, "P4": 2855, "P5": 140, "P6": -7, "P7": 15500, "P8": -14600, "P9": 6000,
    "H1": 75, "H2": 362, "H3": 0, "H4": 313, "H5": 50, "H6": 30,
}  # fmt: skip


class _Device:
    def __init__(self, world, sensor, address):
        self.world = world
        self.sensor = sensor
        self.address = address
        self.regs = bytearray(256)
        self.vals = array("f", [0.0] * len(sc.CHANNELS[world.kind(sensor)]))
        self.was_gone = False  # unplugged since it last answered: it comes back in its power-on state
        self.resets = 0
        self.power_on()

    def present(self):
        st = self.world.scenario.state(self.sensor)
        if st == sc.UNPLUGGED:
            self.was_gone = True
        elif self.was_gone:
            self.was_gone = False
            self.power_on()
        return st

    def read(self, reg, buf):
        self.before_read(reg, len(buf))
        r = self.regs
        for i in range(len(buf)):
            buf[i] = r[(reg + i) & 0xFF]

    def write(self, reg, buf):
        for i in range(len(buf)):
            self.on_write((reg + i) & 0xFF, buf[i])

    def sample(self):
        self.world.scenario.values(self.sensor, self.vals)


def _s16(v):
    return v + 0x10000 if v < 0 else v


class BME280Model(_Device):
    CHIP_ID = 0x60

    def power_on(self):
        self.resets += 1
        r = self.regs
        for i in range(256):
            r[i] = 0
        r[0xD0] = self.CHIP_ID
        c = BME280_CAL
        words = ("T1", "T2", "T3", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9")
        for i, k in enumerate(words):
            v = _s16(c[k])
            r[0x88 + 2 * i] = v & 0xFF
            r[0x89 + 2 * i] = v >> 8
        r[0xA1] = c["H1"]
        h2 = _s16(c["H2"])
        r[0xE1] = h2 & 0xFF
        r[0xE2] = h2 >> 8
        r[0xE3] = c["H3"]
        r[0xE4] = (c["H4"] >> 4) & 0xFF
        r[0xE5] = (c["H4"] & 0x0F) | ((c["H5"] & 0x0F) << 4)
        r[0xE6] = (c["H5"] >> 4) & 0xFF
        r[0xE7] = c["H6"] & 0xFF
        # data registers after reset hold the "no measurement" values
        self._set_raw(0x80000, 0x80000, 0x8000)
        self.measurements = 0
        self._busy = 0

    def mode(self):
        return self.regs[0xF4] & 3

    def on_write(self, reg, v):
        if reg == 0xE0:
            if v == 0xB6:
                self.power_on()
            return
        if reg in (0xF2, 0xF4, 0xF5):
            self.regs[reg] = v
            if reg == 0xF4 and v & 3 in (1, 2):
                self._measure()  # forced mode: one conversion, then back to sleep
                self.regs[0xF4] = v & 0xFC
                self._busy = 1  # the next status read still shows `measuring`, as a real chip would

    def before_read(self, reg, n):
        if reg == 0xF3:
            self.regs[0xF3] = 0x08 if self._busy else 0
            self._busy = 0
        if self.mode() == 3 and reg <= 0xFE and reg + n > 0xF7:
            self._measure()  # normal mode: the registers always hold a fresh conversion

    def _measure(self):
        self.measurements += 1
        self.sample()
        t, h, p = self.vals[0], self.vals[1], self.vals[2]
        osrs_t = (self.regs[0xF4] >> 5) & 7
        osrs_p = (self.regs[0xF4] >> 2) & 7
        osrs_h = self.regs[0xF2] & 7
        adc_t, t_fine = _bme_inv_t(t)
        adc_p = _bme_inv_p(p * 100.0, t_fine)
        adc_h = _bme_inv_h(h, t_fine)
        self._set_raw(
            adc_t if osrs_t else 0x80000, adc_p if osrs_p else 0x80000, adc_h if osrs_h else 0x8000
        )

    def _set_raw(self, at, ap, ah):
        r = self.regs
        r[0xF7] = (ap >> 12) & 0xFF
        r[0xF8] = (ap >> 4) & 0xFF
        r[0xF9] = (ap & 0xF) << 4
        r[0xFA] = (at >> 12) & 0xFF
        r[0xFB] = (at >> 4) & 0xFF
        r[0xFC] = (at & 0xF) << 4
        r[0xFD] = (ah >> 8) & 0xFF
        r[0xFE] = ah & 0xFF


def _clamp(v, lo, hi):
    return lo if v < lo else hi if v > hi else v


def _solve(a, b, c, near):
    # Root of a*x^2 + b*x + c = 0 closest to `near` (a may be 0).
    if a == 0:
        return -c / b
    d = b * b - 4 * a * c
    if d < 0:
        d = 0.0
    s = math.sqrt(d)
    r1 = (-b + s) / (2 * a)
    r2 = (-b - s) / (2 * a)
    return r1 if abs(r1 - near) <= abs(r2 - near) else r2


def _bme_inv_t(temp):
    # Datasheet float compensation: t_fine = 8*T2*x + T3*x^2 with x = adc/131072 - T1/8192; T = t_fine/5120.
    c = BME280_CAL
    t_fine = temp * 5120.0
    x = _solve(c["T3"], 8.0 * c["T2"], -t_fine, t_fine / (8.0 * c["T2"]))
    adc = int((x + c["T1"] / 8192.0) * 131072.0 + 0.5)
    return _clamp(adc, 0, 0xFFFFF), t_fine


def _bme_inv_p(pa, t_fine):
    c = BME280_CAL
    v1 = t_fine / 2.0 - 64000.0
    v2 = v1 * v1 * c["P6"] / 32768.0
    v2 = v2 + v1 * c["P5"] * 2.0
    v2 = v2 / 4.0 + c["P4"] * 65536.0
    v1 = (c["P3"] * v1 * v1 / 524288.0 + c["P2"] * v1) / 524288.0
    v1 = (1.0 + v1 / 32768.0) * c["P1"]
    # final = q + (P9*q^2/2^31 + P8*q/2^15 + P7)/16, solve for q
    q = _solve(c["P9"] / 34359738368.0, 1.0 + c["P8"] / 524288.0, c["P7"] / 16.0 - pa, pa)
    adc = 1048576.0 - (q * v1 / 6250.0 + v2 / 4096.0)
    return _clamp(int(adc + 0.5), 0, 0xFFFFF)


def _bme_inv_h(rh, t_fine):
    c = BME280_CAL
    h = t_fine - 76800.0
    k1 = c["H1"] / 524288.0
    # final = y*(1 - k1*y), solve for y
    y = _solve(-k1, 1.0, -rh, rh)
    k = c["H2"] / 65536.0 * (1.0 + c["H6"] / 67108864.0 * h * (1.0 + c["H3"] / 67108864.0 * h))
    adc = y / k + (c["H4"] * 64.0 + c["H5"] / 16384.0 * h)
    return _clamp(int(adc + 0.5), 0, 0xFFFF)


class MPU6050Model(_Device):
    WHO_AM_I = 0x68
    ACCEL_LSB = (16384.0, 8192.0, 4096.0, 2048.0)
    GYRO_LSB = (131.0, 65.5, 32.8, 16.4)

    def power_on(self):
        self.resets += 1
        r = self.regs
        for i in range(256):
            r[i] = 0
        r[0x75] = self.WHO_AM_I
        r[0x6B] = 0x40  # SLEEP set after power-on
        self.samples = 0

    def asleep(self):
        return bool(self.regs[0x6B] & 0x40)

    def on_write(self, reg, v):
        if reg == 0x6B:
            if v & 0x80:  # DEVICE_RESET
                self.power_on()
                return
            self.regs[reg] = v
        elif reg in (0x19, 0x1A, 0x1B, 0x1C, 0x6C):
            self.regs[reg] = v

    def before_read(self, reg, n):
        if reg <= 0x48 and reg + n > 0x3B and not self.asleep():
            self._measure()

    def _measure(self):
        self.samples += 1
        self.sample()
        v = self.vals
        a = self.ACCEL_LSB[(self.regs[0x1C] >> 3) & 3]
        g = self.GYRO_LSB[(self.regs[0x1B] >> 3) & 3]
        self._put(0x3B, v[0] * a)
        self._put(0x3D, v[1] * a)
        self._put(0x3F, v[2] * a)
        self._put(0x41, (25.0 - 36.53) * 340.0)
        self._put(0x43, v[3] * g)
        self._put(0x45, v[4] * g)
        self._put(0x47, v[5] * g)

    def _put(self, reg, x):
        i = int(x + 0.5) if x >= 0 else -int(-x + 0.5)
        i = _clamp(i, -32768, 32767) & 0xFFFF
        self.regs[reg] = i >> 8
        self.regs[reg + 1] = i & 0xFF


class DHT22Model:
    # The 5 bytes a DHT22 sends: humidity*10 (u16), temperature*10 (15 bits + sign bit), checksum.
    def __init__(self, world, sensor):
        self.world = world
        self.sensor = sensor
        self.vals = array("f", [0.0, 0.0])
        self.reads = 0

    def readinto(self, buf):
        st = self.world.scenario.state(self.sensor)
        if st in (sc.UNPLUGGED, sc.DROPOUT):
            raise OSError(errno.ETIMEDOUT)  # what esp.dht_readinto raises when the sensor does not answer
        self.reads += 1
        self.world.scenario.values(self.sensor, self.vals)
        t = int(self.vals[0] * 10 + (0.5 if self.vals[0] >= 0 else -0.5))
        h = _clamp(int(self.vals[1] * 10 + 0.5), 0, 1000)
        ta = _clamp(abs(t), 0, 0x7FFF)
        buf[0] = h >> 8
        buf[1] = h & 0xFF
        buf[2] = (ta >> 8) | (0x80 if t < 0 else 0)
        buf[3] = ta & 0xFF
        buf[4] = (buf[0] + buf[1] + buf[2] + buf[3]) & 0xFF
        if st == sc.CORRUPT:
            buf[3] ^= 0x04  # a bit flipped on the wire: the checksum no longer matches


class ADCModel:
    # A 12-bit ESP32 ADC channel wired to an analog sensor: raw = inverse of the board's calibration.
    # An unplugged sensor leaves the input pulled to ground: raw 0.
    def __init__(self, world, sensor, calibration):
        self.world = world
        self.sensor = sensor
        (self.r0, self.r1), (self.v0, self.v1) = calibration["raw"], calibration["value"]
        self.vals = array("f", [0.0])

    def raw(self):
        if self.world.scenario.state(self.sensor) != sc.OK:
            return 0
        self.world.scenario.values(self.sensor, self.vals)
        r = self.r0 + (self.vals[0] - self.v0) * (self.r1 - self.r0) / (self.v1 - self.v0)
        return _clamp(int(r + 0.5), 0, 4095)
