# Scenario for the sim board: where the simulated sensors' physical signals come from.
#
# A scenario file is JSON, times in seconds since node boot (format in docs/sensors.md):
#   {"seed": 1, "sensors": {"env": {"channels": {"temperature": {"level": 21, "amp": 2, "period_s": 600,
#        "noise": 0.05, "drift_per_h": 0.2}}, "faults": [{"kind": "spike", "channel": "temperature",
#        "at_s": 30, "value": 85.0}, {"kind": "stuck", "from_s": 60, "to_s": 90}, ...]},
#     "imu": {"replay": {"file": "/abs/replay.csv", "rate_hz": 10, "loop": true}}}}
# Generators are level + amp*sin(2*pi*t/period_s) + noise*N(0,1) + drift_per_h*t/3600, seeded per channel so
# a run is reproducible. Faults: spike (one reading, or dur_s long, at at_s), stuck (values frozen from
# from_s to to_s), dropout (reads fail transiently), unplugged (the device is gone from the bus/pin), corrupt
# (DHT22 bytes with a bad checksum). A replay streams a CSV `t_s,<channel>...,label` and exposes its labels as
# ground truth: label_at(sensor, t_s).
#
# The device models ask values(sensor, out, t_s) for the physical values and state(sensor, t_s) for faults.
# Time is the scenario's own: seconds since it was created (real time), or set by a test with set_time().
import json
import math
import time
from array import array

from micropython import const
from node.records import KIND_CHANNELS

_TWO_PI = 6.283185307179586

# Plausible defaults per sensor kind: (level, noise) per channel; used when a scenario names no generator.
DEFAULTS = {
    "bme280": {"temperature": (21.0, 0.02), "humidity": (45.0, 0.1), "pressure": (1013.25, 0.02)},
    "mpu6050": {
        "ax": (0.0, 0.005),
        "ay": (0.0, 0.005),
        "az": (1.0, 0.005),
        "gx": (0.0, 0.05),
        "gy": (0.0, 0.05),
        "gz": (0.0, 0.05),
    },
    "adc": {"value": (35.0, 0.1)},
    "dht22": {"temperature": (22.0, 0.05), "humidity": (50.0, 0.2)},
}
CHANNELS = KIND_CHANNELS  # the node's table: a scenario names the channels the node decodes
FAULT_KINDS = ("spike", "stuck", "dropout", "unplugged", "corrupt")

# state() results
OK = const(0)
DROPOUT = const(1)
UNPLUGGED = const(2)
CORRUPT = const(3)


class ScenarioError(Exception):
    pass


def _uniform(st, i):
    # xorshift32 on state st[i]: our own, so the scenario is reproducible whatever else uses `random`
    x = st[i]
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    st[i] = x
    return x / 4294967296.0


def _normal(st, i):
    # Irwin-Hall: the sum of 12 uniforms - 6 has mean 0 and variance 1; cheap, close enough for sensor noise
    a = 0.0
    for _ in range(12):
        a += _uniform(st, i)
    return a - 6.0


class _Sensor:
    def __init__(self, name, kind, spec, seed):
        if kind not in CHANNELS:
            raise ScenarioError("sensor %s: unknown kind %s" % (name, kind))
        self.name = name
        self.kind = kind
        self.channels = CHANNELS[kind]
        chans = spec.get("channels", {})
        for c in chans:
            if c not in self.channels:
                raise ScenarioError("sensor %s: unknown channel %s (has %s)" % (name, c, ", ".join(self.channels)))
        # generator parameters per channel, 5 floats each: level, amp, period_s, noise, drift_per_h; and one
        # xorshift state per channel (arrays: a few hundred bytes instead of an object per channel)
        n = len(self.channels)
        self.gen = array("f", [0.0] * (5 * n))
        self.rng = array("I", [0] * n)
        for i, c in enumerate(self.channels):
            g = chans.get(c, {})
            d = DEFAULTS[kind][c]
            p = float(g.get("period_s", 60.0))
            if p <= 0:
                raise ScenarioError("sensor %s channel %s: period_s must be > 0" % (name, c))
            self.gen[5 * i] = float(g.get("level", d[0]))
            self.gen[5 * i + 1] = float(g.get("amp", 0.0))
            self.gen[5 * i + 2] = p
            self.gen[5 * i + 3] = float(g.get("noise", d[1]))
            self.gen[5 * i + 4] = float(g.get("drift_per_h", 0.0))
            self.rng[i] = ((seed * 131 + i * 7 + len(name)) * 2654435761 + 1) & 0xFFFFFFFF or 1
        self.replay = None
        if "replay" in spec:
            from simboard.replay import Replay  # only scenarios that replay pay for it

            self.replay = Replay(spec["replay"], self.channels, ScenarioError)
        self.faults = []
        for f in spec.get("faults", ()):
            k = f.get("kind")
            if k not in FAULT_KINDS:
                raise ScenarioError("sensor %s: unknown fault kind %s" % (name, k))
            ch = f.get("channel")
            if ch is not None and ch not in self.channels:
                raise ScenarioError("sensor %s: fault on unknown channel %s" % (name, ch))
            if k == "spike":
                start = float(f["at_s"])
                end = start + float(f.get("dur_s", 0))
            else:
                start = float(f["from_s"])
                end = float(f["to_s"])
            # [kind, start, end, channel index or -1, value, fired/frozen state]
            self.faults.append(
                [k, start, end, self.channels.index(ch) if ch else -1, float(f.get("value", 0.0)), None]
            )
        self.manual = OK  # set by tests: force a state (unplug/plug by hand)

    def values(self, out, t):
        g = self.gen
        for i in range(len(self.channels)):
            b = 5 * i
            v = g[b] + g[b + 4] * t / 3600.0
            if g[b + 1]:
                v += g[b + 1] * math.sin(_TWO_PI * t / g[b + 2])
            if g[b + 3]:
                v += g[b + 3] * _normal(self.rng, i)
            out[i] = v
        if self.replay is not None:
            self.replay.values(out, t)
        for f in self.faults:
            k = f[0]
            if k == "spike":
                # a zero-length spike hits exactly one reading: the first at or after at_s
                if t >= f[1] and (f[5] is None or t <= f[2]):
                    f[5] = True
                    for i in range(len(self.channels)):
                        if f[3] < 0 or f[3] == i:
                            out[i] = f[4]
            elif k == "stuck":
                if f[1] <= t < f[2]:
                    if f[5] is None:
                        f[5] = list(out)
                    fz = f[5]
                    for i in range(len(self.channels)):
                        if f[3] < 0 or f[3] == i:
                            out[i] = fz[i]
                elif t >= f[2]:
                    f[5] = None

    def state(self, t):
        if self.manual:
            return self.manual
        for f in self.faults:
            if f[1] <= t < f[2]:
                k = f[0]
                if k == "unplugged":
                    return UNPLUGGED
                if k == "dropout":
                    return DROPOUT
                if k == "corrupt":
                    return CORRUPT
        return OK

    def label_at(self, t):
        if self.replay is not None:
            return self.replay.label_at(t)
        for f in self.faults:
            if f[1] <= t < f[2] or (f[0] == "spike" and f[1] <= t <= f[2] + 1e-9):
                return f[0]
        return ""


class Scenario:
    def __init__(self, spec, board_sensors):
        # board_sensors: {name: kind} from the board definition
        if not isinstance(spec, dict):
            raise ScenarioError("scenario must be a JSON object")
        self.seed = int(spec.get("seed", 1))
        given = spec.get("sensors", {})
        for name in given:
            if name not in board_sensors:
                raise ScenarioError("scenario names sensor %s, not on the board" % name)
        self.sensors = {}
        for name in board_sensors:
            self.sensors[name] = _Sensor(name, board_sensors[name], given.get(name, {}), self.seed)
        self._t0 = time.ticks_ms()
        self._manual_t = None

    # -- time
    def now_s(self):
        if self._manual_t is not None:
            return self._manual_t
        return time.ticks_diff(time.ticks_ms(), self._t0) / 1000.0

    def set_time(self, t_s):
        # Tests drive scenario time by hand (faults at 120 s without waiting 120 s). None = real time again.
        self._manual_t = t_s

    # -- what the device models ask
    def values(self, sensor, out, t_s=None):
        self.sensors[sensor].values(out, self.now_s() if t_s is None else t_s)

    def state(self, sensor, t_s=None):
        return self.sensors[sensor].state(self.now_s() if t_s is None else t_s)

    def label_at(self, sensor, t_s=None):
        # Ground truth for demos: the replay's segment label, or the active fault's kind, or "".
        return self.sensors[sensor].label_at(self.now_s() if t_s is None else t_s)

    def force(self, sensor, state):
        # Tests: unplug (UNPLUGGED), break (DROPOUT, CORRUPT) or restore (OK) a sensor by hand.
        self.sensors[sensor].manual = state


def load(path, board):
    kinds = {s["name"]: s["type"] for s in board["sensors"]}
    if path is None:
        return Scenario({}, kinds)
    try:
        with open(path) as f:
            spec = json.load(f)
    except OSError:
        raise ScenarioError("scenario file not found: %s" % path)
    except ValueError as e:
        raise ScenarioError("scenario file %s is not valid JSON: %s" % (path, e))
    try:
        return Scenario(spec, kinds)
    except (KeyError, TypeError, ValueError) as e:
        raise ScenarioError("scenario file %s: bad field %r" % (path, e))
