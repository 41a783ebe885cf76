# Simulated pins and ADC for the sim board, plus World: the simulated board's wiring (scenario, I2C buses,
# device models per sensor, pins). The drivers see the same API subset as machine.Pin / machine.ADC and
# esp.dht_readinto, nothing more.
class SimPin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2

    def __init__(self, id, mode=-1):
        self.id = id
        self.mode = mode
        self._v = 0
        self.changes = 0  # how often an output was driven to a new level
        self.model = None  # a DHT22Model when a DHT22 is wired to this pin

    def init(self, mode=-1, *args, **kw):
        self.mode = mode

    def value(self, v=None):
        if v is None:
            return self._v
        v = 1 if v else 0
        if v != self._v:
            self.changes += 1
        self._v = v
        return None

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


def dht_readinto(pin, buf):
    # Same contract as esp.dht_readinto: fills 5 bytes or raises OSError(ETIMEDOUT) when nobody answers.
    if pin.model is None:
        import errno

        raise OSError(errno.ETIMEDOUT)
    pin.model.readinto(buf)


class SimADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 3

    def __init__(self, pin, model=None, atten=None):
        self.pin = pin
        self.model = model
        self._atten = 0 if atten is None else atten

    def atten(self, a):
        self._atten = a

    def read(self):
        return 0 if self.model is None else self.model.raw()

    def read_u16(self):
        r = self.read()
        return (r << 4) | (r >> 8)


class World:
    # The simulated board: what a test pokes at (scenario time, unplugging, output pins, device models).
    def __init__(self, board, scenario):
        self.scenario = scenario
        self._kinds = {s["name"]: s["type"] for s in board["sensors"]}
        self.buses = {}
        self.devices = {}  # sensor name -> device model
        self.pins = {}

    def kind(self, sensor):
        return self._kinds[sensor]

    def pin(self, n):
        p = self.pins.get(n)
        if p is None:
            p = self.pins[n] = SimPin(n)
        return p

    def unplug(self, sensor):
        from simboard import scenario as sc

        self.scenario.force(sensor, sc.UNPLUGGED)
        d = self.devices.get(sensor)
        if d is not None and hasattr(d, "power_on"):
            d.was_gone = True  # it comes back in its power-on state even if nobody looked meanwhile

    def plug(self, sensor):
        from simboard import scenario as sc

        self.scenario.force(sensor, sc.OK)


# The sim board's side of node.appboot.build (as node.hw.esp32.wiring on an ESP32): the device models on
# their buses and pins, and the accessors the same drivers as on an ESP32 are wired to.
def wiring(board, scenario):
    from node.hw import ATTN_INDEX
    from simboard import devices
    from simboard import scenario as scmod
    from simboard.i2c import SimI2C

    if scenario is None or isinstance(scenario, str):
        scenario = scmod.load(scenario, board)
    world = World(board, scenario)
    for name, bus in board.get("buses", {}).items():
        world.buses[name] = SimI2C(bus.get("freq", 400000))
    for s in board["sensors"]:
        t = s["type"]
        if t == "bme280":
            d = devices.BME280Model(world, s["name"], s["address"])
            world.buses[s["bus"]].attach(d)
        elif t == "mpu6050":
            d = devices.MPU6050Model(world, s["name"], s["address"])
            world.buses[s["bus"]].attach(d)
        elif t == "dht22":
            d = devices.DHT22Model(world, s["name"])
            world.pin(s["pin"]).model = d
        elif t == "adc":
            d = devices.ADCModel(world, s["name"], s["calibration"])
        world.devices[s["name"]] = d

    def adc_for(s):
        a = SimADC(world.pin(s["pin"]), world.devices[s["name"]])
        a.atten(ATTN_INDEX[s["atten"]])
        return a

    return world.buses.__getitem__, world.pin, adc_for, dht_readinto, world.pin, world
