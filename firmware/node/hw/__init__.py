# Hardware layer: the sensors and outputs a board definition wires up (contract 4), with our own drivers.
#
#   hw = node.hw.build(board, config, scenario=None)
#   hw.sensors  -> [Sensor]: .name, .kind, .channels, .read(out) fills array('f') or raises SensorError
#   hw.outputs  -> {name: object with .value(v)}
#   hw.sim      -> the simulated board (node.sim.pins.World) on the sim board, else None
#
# Drivers are lazy: build() never touches a device, so a sensor that is missing at boot does not stop the
# node; the first read() initialises it, and any bus error makes the next read() initialise it again (a
# re-plugged chip is back in its power-on state).
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


def _rate(config, name):
    if config:
        r = config.get("rates", {}).get(name)
        if isinstance(r, (int, float)):
            return r
    return 1


def build(board, config, scenario=None):
    sim = board["chip"] == "sim"
    if sim:
        from node.sim.pins import build_sim

        return build_sim(board, config, scenario)
    from node.hw.esp32 import build_esp32  # only the board's own builder is loaded: heap is scarce

    return build_esp32(board, config)


def _drivers(board, config, i2c_for, pin_for, adc_for, dht_readinto):
    from node.hw.adc import AnalogInput
    from node.hw.bme280 import BME280
    from node.hw.dht22 import DHT22
    from node.hw.mpu6050 import MPU6050

    sensors = []
    for s in board["sensors"]:
        t = s["type"]
        name = s["name"]
        if t == "bme280":
            # forced mode (one conversion per read, sleeps between) at low rates; normal mode above 1 Hz
            mode = "forced" if _rate(config, name) <= 1 else "normal"
            sensors.append(BME280(name, i2c_for(s["bus"]), s["address"], mode=mode))
        elif t == "mpu6050":
            sensors.append(MPU6050(name, i2c_for(s["bus"]), s["address"], rate_hz=_rate(config, name)))
        elif t == "adc":
            sensors.append(AnalogInput(name, adc_for(s), s["calibration"]))
        elif t == "dht22":
            sensors.append(DHT22(name, pin_for(s["pin"]), dht_readinto))
    return sensors


def _outputs(board, pin_for_out):
    outs = {}
    for o in board["outputs"]:
        outs[o["name"]] = Output(o["name"], pin_for_out(o["pin"]), o.get("active_low", False))
    return outs


# attenuation names in the board file -> index of ADC.ATTN_0DB .. ATTN_11DB
_ATTN_INDEX = {"0db": 0, "2.5db": 1, "6db": 2, "11db": 3}
