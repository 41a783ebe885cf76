# Hardware layer: the sensors and outputs a board definition wires up (contract 4), with our own drivers.
#
#   hw = node.appboot.build(board, config, scenario=None)   (boot-only code, released with node.appboot)
#   hw.sensors  -> [Sensor]: .name, .kind, .channels, .read(out) fills array('f') or raises SensorError
#   hw.outputs  -> {name: object with .value(v)}
#   hw.sim      -> the simulated board (simboard.pins.World) on the sim board, else None
#
# Drivers are lazy: build() never touches a device, so a sensor that is missing at boot does not stop the
# node; the first read() initialises it, and any bus error makes the next read() initialise it again (a
# re-plugged chip is back in its power-on state).
#
# This module is the bottom of the hardware layer: what the drivers (node.hw.bme280, ...), the boards' wiring
# (node.hw.esp32; simboard.pins on the sim board) and the running node share. It imports none of them; the
# boot-only node.appboot.build imports them all (imports go one way).
class SensorError(Exception):
    # The device did not answer or answered nonsense. errno is the bus's OSError errno when there was one
    # (ENODEV: not acknowledging, i.e. unplugged; ETIMEDOUT: a transient dropout).
    def __init__(self, sensor, reason, errno=None):
        super().__init__("%s: %s" % (sensor, reason))
        self.sensor = sensor
        self.reason = reason
        self.errno = errno


class Output:
    # An output pin, inverted for active-low wiring, remembering its level for status and tests.
    def __init__(self, name, pin, active_low=False):
        self.name = name
        self.pin = pin
        self.active_low = active_low
        self.level = 0
        self.pin.value(1 if active_low else 0)

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = 1 if v else 0
        self.pin.value(self.level ^ (1 if self.active_low else 0))


class Hw:
    def __init__(self, sensors, outputs, sim=None):
        self.sensors = sensors
        self.outputs = outputs
        self.sim = sim

    def sensor(self, name):
        for s in self.sensors:
            if s.name == name:
                return s
        return None


# attenuation names in the board file -> index of ADC.ATTN_0DB .. ATTN_11DB
ATTN_INDEX = {"0db": 0, "2.5db": 1, "6db": 2, "11db": 3}
