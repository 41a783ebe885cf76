# InvenSense MPU6050 over I2C: 3-axis accelerometer (g) and gyro (deg/s). Our driver, from the register map
# (RM-MPU-6000A): WHO_AM_I 0x75 == 0x68, PWR_MGMT_1 0x6B (SLEEP bit 6 is set after power-on, so the chip
# must be woken), SMPLRT_DIV 0x19, CONFIG 0x1A (DLPF), GYRO_CONFIG 0x1B, ACCEL_CONFIG 0x1C, and one 14-byte
# burst from ACCEL_XOUT_H 0x3B (accel xyz, temperature, gyro xyz, big-endian int16) per sample.
from micropython import const

from node.hw import SensorError

_SMPLRT_DIV = const(0x19)
_CONFIG = const(0x1A)
_GYRO_CONFIG = const(0x1B)
_ACCEL_CONFIG = const(0x1C)
_DATA = const(0x3B)
_PWR_MGMT_1 = const(0x6B)
_WHO_AM_I = const(0x75)

ACCEL_RANGES = (2, 4, 8, 16)  # +-g, AFS_SEL 0..3
GYRO_RANGES = (250, 500, 1000, 2000)  # +-deg/s, FS_SEL 0..3
GYRO_LSB = (131.0, 65.5, 32.8, 16.4)  # LSB per deg/s, from the register map (not exactly 131 / 2^FS_SEL)


class MPU6050:
    kind = "mpu6050"
    channels = ("ax", "ay", "az", "gx", "gy", "gz")

    # Defaults +-8 g and +-2000 deg/s: wrist-worn activity reaches ~3 g and ~2000 deg/s (BasicMotions'
    # badminton), and a clipped signal would classify differently from the data the model was trained on.
    def __init__(self, name, i2c, address=0x68, accel_g=8, gyro_dps=2000, rate_hz=100):
        if accel_g not in ACCEL_RANGES or gyro_dps not in GYRO_RANGES:
            raise ValueError("accel_g must be one of %s, gyro_dps one of %s" % (ACCEL_RANGES, GYRO_RANGES))
        self.name = name
        self.i2c = i2c
        self.address = address
        self.afs = ACCEL_RANGES.index(accel_g)
        self.fs = GYRO_RANGES.index(gyro_dps)
        self.a_scale = 1.0 / (16384 >> self.afs)  # g per LSB
        self.g_scale = 1.0 / GYRO_LSB[self.fs]  # deg/s per LSB
        # with the DLPF on, the internal rate is 1 kHz; SMPLRT_DIV brings it down to the sampling rate
        r = rate_hz if rate_hz and rate_hz > 0 else 100
        self.div = min(255, max(0, int(1000 / min(r, 1000)) - 1))
        self._buf = bytearray(14)
        self._one = bytearray(1)
        self.ready = False
        self.inits = 0

    def _w(self, reg, v):
        self._one[0] = v
        self.i2c.writeto_mem(self.address, reg, self._one)

    def _init(self):
        i2c, a = self.i2c, self.address
        i2c.readfrom_mem_into(a, _WHO_AM_I, self._one)
        if self._one[0] != 0x68:
            raise SensorError(self.name, "WHO_AM_I 0x%02x at 0x%02x, expected 0x68 (MPU6050)" % (self._one[0], a))
        self._w(_PWR_MGMT_1, 0x01)  # wake (clear SLEEP), clock from the X gyro PLL
        i2c.readfrom_mem_into(a, _PWR_MGMT_1, self._one)
        if self._one[0] & 0x40:
            raise SensorError(self.name, "did not wake from sleep")
        self._w(_CONFIG, 0x03)  # DLPF ~44 Hz: below Nyquist at 100 Hz
        self._w(_SMPLRT_DIV, self.div)
        self._w(_ACCEL_CONFIG, self.afs << 3)
        self._w(_GYRO_CONFIG, self.fs << 3)
        self.ready = True
        self.inits += 1

    def read(self, out):
        try:
            if not self.ready:
                self._init()
            b = self._buf
            self.i2c.readfrom_mem_into(self.address, _DATA, b)
        except OSError as e:
            self.ready = False
            raise SensorError(self.name, "no answer on I2C (errno %d)" % e.errno, e.errno)
        sa = self.a_scale
        sg = self.g_scale
        out[0] = _s16(b[0], b[1]) * sa
        out[1] = _s16(b[2], b[3]) * sa
        out[2] = _s16(b[4], b[5]) * sa
        out[3] = _s16(b[8], b[9]) * sg
        out[4] = _s16(b[10], b[11]) * sg
        out[5] = _s16(b[12], b[13]) * sg


def _s16(hi, lo):
    v = (hi << 8) | lo
    return v - 65536 if v & 0x8000 else v
