# Bosch BME280 over I2C: temperature, humidity, pressure. Our driver, written from the datasheet
# (BST-BME280-DS002): chip id 0xD0 == 0x60, calibration in 0x88..0xA1 and 0xE1..0xE7, ctrl_hum 0xF2,
# ctrl_meas 0xF4, config 0xF5, status 0xF3, data burst 0xF7..0xFE, and the datasheet's integer compensation
# (32-bit temperature/humidity, 64-bit pressure). Forced mode (one conversion per read, then sleep) suits
# slow sampling; normal mode (continuous conversions) suits rates above ~1 Hz.
import struct
import time

from micropython import const

from node.hw import SensorError

_REG_ID = const(0xD0)
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_CONFIG = const(0xF5)
_REG_DATA = const(0xF7)
_CHIP_ID = const(0x60)


class BME280:
    kind = "bme280"
    channels = ("temperature", "humidity", "pressure")

    def __init__(self, name, i2c, address=0x76, mode="forced", osrs_t=1, osrs_p=1, osrs_h=1, filt=0, t_sb=0):
        # osrs_*: oversampling setting 1..5 (x1..x16); filt: IIR coefficient setting 0..4;
        # t_sb: normal-mode standby setting 0..7 (0 = 0.5 ms)
        self.name = name
        self.i2c = i2c
        self.address = address
        if mode not in ("forced", "normal"):
            raise ValueError("mode must be forced or normal")
        self.forced = mode == "forced"
        self._meas = (osrs_t << 5) | (osrs_p << 2) | (1 if self.forced else 3)
        self._hum = osrs_h
        self._cfg = (t_sb << 5) | (filt << 2)
        self._buf = bytearray(8)
        self._one = bytearray(1)
        self.ready = False
        self.inits = 0

    def _w(self, reg, v):
        self._one[0] = v
        self.i2c.writeto_mem(self.address, reg, self._one)

    def _init(self):
        i2c, a = self.i2c, self.address
        i2c.readfrom_mem_into(a, _REG_ID, self._one)
        if self._one[0] != _CHIP_ID:
            raise SensorError(self.name, "chip id 0x%02x at 0x%02x, expected 0x60 (BME280)" % (self._one[0], a))
        c = bytearray(26)
        i2c.readfrom_mem_into(a, 0x88, c)
        (self.T1, self.T2, self.T3, self.P1, self.P2, self.P3, self.P4, self.P5, self.P6, self.P7, self.P8,
         self.P9) = struct.unpack_from("<HhhHhhhhhhhh", c, 0)  # fmt: skip
        self.H1 = c[25]
        h = bytearray(7)
        i2c.readfrom_mem_into(a, 0xE1, h)
        self.H2 = struct.unpack_from("<h", h, 0)[0]
        self.H3 = h[2]
        e4 = h[3] - 256 if h[3] > 127 else h[3]
        e6 = h[5] - 256 if h[5] > 127 else h[5]
        self.H4 = (e4 << 4) | (h[4] & 0x0F)
        self.H5 = (e6 << 4) | (h[4] >> 4)
        self.H6 = h[6] - 256 if h[6] > 127 else h[6]
        # ctrl_hum only takes effect after a write to ctrl_meas, so it goes first
        self._w(_REG_CTRL_HUM, self._hum)
        self._w(_REG_CONFIG, self._cfg)
        self._w(_REG_CTRL_MEAS, self._meas & 0xFC if self.forced else self._meas)
        self.ready = True
        self.inits += 1

    def read(self, out):
        try:
            if not self.ready:
                self._init()
            if self.forced:
                self._w(_REG_CTRL_MEAS, self._meas)
                # wait for the conversion (< 10 ms at x1): `measuring` (status bit 3) goes up, then down.
                # Polling the status register costs ~50 us per read at 400 kHz; 25 ms at most.
                seen = False
                t0 = time.ticks_ms()
                while time.ticks_diff(time.ticks_ms(), t0) < 25:
                    self.i2c.readfrom_mem_into(self.address, _REG_STATUS, self._one)
                    if self._one[0] & 0x08:
                        seen = True
                    elif seen:
                        break
            b = self._buf
            self.i2c.readfrom_mem_into(self.address, _REG_DATA, b)
        except OSError as e:
            self.ready = False
            raise SensorError(self.name, "no answer on I2C (errno %d)" % e.errno, e.errno)
        adc_p = (b[0] << 12) | (b[1] << 4) | (b[2] >> 4)
        adc_t = (b[3] << 12) | (b[4] << 4) | (b[5] >> 4)
        adc_h = (b[6] << 8) | b[7]
        if adc_t == 0x80000:
            self.ready = False  # the chip reset behind our back: configure it again
            raise SensorError(self.name, "no conversion data (chip in reset state)")
        t_fine = self._t_fine(adc_t)
        out[0] = ((t_fine * 5 + 128) >> 8) / 100.0
        out[1] = self._humidity(adc_h, t_fine) / 1024.0
        out[2] = self._pressure(adc_p, t_fine) / 25600.0

    def _t_fine(self, adc_t):
        v1 = (((adc_t >> 3) - (self.T1 << 1)) * self.T2) >> 11
        d = (adc_t >> 4) - self.T1
        v2 = (((d * d) >> 12) * self.T3) >> 14
        return v1 + v2

    def _pressure(self, adc_p, t_fine):
        # Q24.8 Pa
        v1 = t_fine - 128000
        v2 = v1 * v1 * self.P6
        v2 += (v1 * self.P5) << 17
        v2 += self.P4 << 35
        v1 = ((v1 * v1 * self.P3) >> 8) + ((v1 * self.P2) << 12)
        v1 = (((1 << 47) + v1) * self.P1) >> 33
        if v1 == 0:
            return 0
        p = 1048576 - adc_p
        n = ((p << 31) - v2) * 3125
        p = n // v1 if n >= 0 else -((-n) // v1)  # C division truncates toward zero
        v1 = (self.P9 * (p >> 13) * (p >> 13)) >> 25
        v2 = (self.P8 * p) >> 19
        return ((p + v1 + v2) >> 8) + (self.P7 << 4)

    def _humidity(self, adc_h, t_fine):
        # Q22.10 %RH
        v = t_fine - 76800
        v = (((adc_h << 14) - (self.H4 << 20) - (self.H5 * v)) + 16384) >> 15
        v = v * (
            (((((((t_fine - 76800) * self.H6) >> 10) * ((((t_fine - 76800) * self.H3) >> 11) + 32768)) >> 10)
              + 2097152) * self.H2 + 8192) >> 14
        )  # fmt: skip
        v -= ((((v >> 15) * (v >> 15)) >> 7) * self.H1) >> 4
        v = 0 if v < 0 else 419430400 if v > 419430400 else v
        return v >> 12
