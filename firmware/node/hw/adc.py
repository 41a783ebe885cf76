# Analog input on an ESP32 ADC channel (12-bit, attenuation set by build() from the board file) with the
# board file's two-point calibration: raw r0 -> value v0, raw r1 -> value v1, linear in between (and beyond).
# Several raw conversions are averaged per sample because the ESP32 ADC is noisy. A reading pinned at a rail
# (0 or 4095) means an open or shorted input, i.e. no sensor: that is a SensorError, not a value.
from node.hw import SensorError


class AnalogInput:
    kind = "adc"
    channels = ("value",)

    def __init__(self, name, adc, calibration, oversample=4):
        self.name = name
        self.adc = adc
        (r0, r1), (v0, v1) = calibration["raw"], calibration["value"]
        if r1 == r0:
            raise ValueError("calibration raw points must differ")
        self.r0 = r0
        self.v0 = v0
        self.k = (v1 - v0) / (r1 - r0)
        self.unit = calibration.get("unit", "")
        # for cleaning: the calibrated span with a 5% margin is the plausible range; spikes under 2% of it
        # are noise, not outliers
        span = abs(v1 - v0)
        self.limits = {"value": (min(v0, v1) - 0.05 * span, max(v0, v1) + 0.05 * span, 0.02 * span)}
        self.n = oversample
        self.last_raw = 0

    def read(self, out):
        s = 0
        for _ in range(self.n):
            s += self.adc.read()
        self.last_raw = s
        if s == 0 or s == 4095 * self.n:
            raise SensorError(self.name, "input at the rail (sensor disconnected?)")
        out[0] = self.v0 + (s / self.n - self.r0) * self.k
