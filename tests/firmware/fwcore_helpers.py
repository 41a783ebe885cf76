# Helpers shared by the sensing MicroPython tests: a recording sink (the sink contract in docs/architecture.md, kept
# in memory), a sink that discards, and building the sim hardware with a scenario dict.
import gc
import json
from array import array

from node import board as boardmod
from node import appboot as hwmod
from simboard import scenario as scmod


class RecorderSink:
    def __init__(self):
        self.readings = []  # (sensor, ts, flags, values as array('f') copy): compact, the heap is 110 KB
        self.events = []  # (ts, flags, kind, label, score, model_id, action, sensor)
        self.seq = 0

    def reading(self, sensor, ts_ms, flags, channels, values):
        assert len(values) == len(channels)
        self.seq += 1
        self.readings.append((sensor, ts_ms, flags, array("f", values)))
        return self.seq

    def event(self, ts_ms, flags, kind, label, score, model_id, action, sensor):
        self.seq += 1
        self.events.append((ts_ms, flags, kind, label, score, model_id, action, sensor))
        return self.seq

    def of(self, sensor):
        return [r for r in self.readings if r[0] == sensor]

    def faults(self, sensor=None):
        return [e for e in self.events if e[2] == "fault" and (sensor is None or e[7] == sensor)]


class NullSink:
    def __init__(self):
        self.n = 0
        self.e = 0

    def reading(self, sensor, ts_ms, flags, channels, values):
        self.n += 1
        return self.n

    def event(self, ts_ms, flags, kind, label, score, model_id, action, sensor):
        self.e += 1
        return self.e


def sim_hw(sim_board, spec=None, config=None):
    # collect first: the test module was just compiled from source, and the parser's leftovers fragment
    # a 110 KB heap enough to fail the next large allocation
    gc.collect()
    b = boardmod.load(sim_board)
    sc = scmod.Scenario(spec or {}, {s["name"]: s["type"] for s in b["sensors"]})
    sc.set_time(0.0)
    return b, hwmod.build(b, config or {"rates": {"env": 1, "imu": 10, "soil": 1, "air": 0.5}}, sc)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def flat(level, **extra):
    # a generator without noise, so a driver must read back exactly this value (within its resolution)
    d = {"level": level, "noise": 0.0}
    d.update(extra)
    return d


class CountSink:
    # Counts readings per sensor and keeps the last flags, timestamp and values of each (copied into one
    # array per sensor), plus every event. For runs too long to keep every reading in a 110 KB heap.
    def __init__(self):
        self.counts = {}
        self.last = {}
        self.last_flags = {}
        self.last_ts = {}
        self.events = []
        self.seq = 0

    def reading(self, sensor, ts_ms, flags, channels, values):
        assert len(values) == len(channels)
        self.seq += 1
        self.counts[sensor] = self.counts.get(sensor, 0) + 1
        buf = self.last.get(sensor)
        if buf is None:
            buf = self.last[sensor] = array("f", values)
        for i in range(len(values)):
            buf[i] = values[i]
        self.last_flags[sensor] = flags
        self.last_ts[sensor] = ts_ms
        return self.seq

    def event(self, ts_ms, flags, kind, label, score, model_id, action, sensor):
        self.seq += 1
        self.events.append((ts_ms, flags, kind, label, score, model_id, action, sensor))
        return self.seq

    def faults(self, sensor=None):
        return [e for e in self.events if e[2] == "fault" and (sensor is None or e[7] == sensor)]
