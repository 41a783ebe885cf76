# Sampling: one asyncio task per sensor at its configured rate, each reading cleaned (node.clean), logged
# raw (as the sensor read it, with the cleaner's flags) through the sink every `log_every`-th reading, and
# handed cleaned to listeners (the decision stage) every time.
#
#   s = Sampler(hw, cfg, sink)          # cfg: the node config (rates, log_every)
#   s.listen("imu", fn)                 # fn(ts_ms, flags, cleaned values) for every reading of "imu"
#   await s.run()                       # until s.stop()
#   s.counters()                        # totals for status: sampled, rejected, missing, stuck
#
# Each reading goes into a preallocated array('f') per sensor; nothing on the path keeps a reference to it,
# so a cycle leaves no garbage that survives it. A read that raises SensorError counts as missing; a tick
# that comes more than one period late counts the skipped ticks as missing (the schedule does not try to
# catch up). After UNPLUGGED_AFTER failed reads in a row the sensor is reported gone with one `fault`
# event (label "unplugged", action "begin", score 1) and, when it answers again, one more (action "end",
# score 0). Cleaning's stuck/range changes become `fault` events "stuck"/"range" the same way.
import time
from array import array

import asyncio
from micropython import const

from node import clock as clockmod
from node.clean import REJECT, Cleaner
from node.hw import SensorError

UNPLUGGED_AFTER = const(3)


def cleaner_for(sensor, rate, settings):
    # settings: the sensor's entry of the config's `clean` section: "off", or {window, k, stuck_s} (each
    # optional; validated by node.config).
    lim = getattr(sensor, "limits", None)
    if settings == "off":
        return Cleaner(sensor.kind, sensor.channels, rate, limits=lim, enabled=False)
    st = settings or {}
    stuck_n = None
    if "stuck_s" in st:
        stuck_n = max(2, int(st["stuck_s"] * (rate or 1)))
    return Cleaner(
        sensor.kind, sensor.channels, rate, window=st.get("window", 7), k=st.get("k", 3.0), stuck_n=stuck_n, limits=lim
    )


class _Slot:
    def __init__(self, sensor, rate, log_every, clean=None):
        self.sensor = sensor
        self.name = sensor.name
        self.set_rate(rate)
        self.log_every = max(1, int(log_every))
        self.buf = array("f", [0.0] * len(sensor.channels))  # the raw reading: logged as it is
        self.clean = array("f", [0.0] * len(sensor.channels))  # its cleaned copy: for listeners (the model)
        self.cleaner = cleaner_for(sensor, rate, clean)
        self.good = 0  # cleaned readings, for decimation
        self.fails = 0  # failed reads in a row
        self.down = False
        self.listeners = []
        self.last_error = None
        self.logged = 0
        self.errors = 0  # exceptions from the sink or a listener, caught so the task keeps sampling

    def set_rate(self, rate):
        self.rate = rate if rate and rate > 0 else 0
        self.period_ms = max(1, int(1000 / rate + 0.5)) if self.rate else 0


class Sampler:
    def __init__(self, hw, cfg, sink, clock=None):
        self.sink = sink
        self.clock = clock or clockmod
        self.hw = hw
        self.slots = []
        self._running = False
        self._tasks = []
        self._stop = None
        self.apply(cfg)

    def apply(self, cfg):
        # New rates / log_every (set_config), without a restart: a sensor's task picks up its new period on
        # its next tick; a sensor whose rate becomes 0 stops; one that was off starts (if running).
        rates = cfg.get("rates", {})
        every = cfg.get("log_every", {})
        clean = cfg.get("clean") or {}
        for s in self.hw.sensors:
            r = rates.get(s.name, 0)
            sl = self.slot(s.name)
            if sl is None:
                if r and r > 0:
                    sl = _Slot(s, r, every.get(s.name, 1), clean.get(s.name))
                    self.slots.append(sl)
                    if self._running:
                        self._tasks.append(asyncio.create_task(self._run_slot(sl)))
                continue
            if s.name in rates:
                sl.set_rate(r)
            if s.name in every:
                sl.log_every = max(1, int(every[s.name]))

    def slot(self, name):
        for sl in self.slots:
            if sl.name == name:
                return sl
        return None

    def listen(self, name, fn):
        sl = self.slot(name)
        if sl is None:
            return False
        sl.listeners.append(fn)
        return True

    def _fault(self, ts, flags, label, action, score, sensor):
        self.sink.event(ts, flags, "fault", label, score, None, action, sensor)

    def cycle(self, sl):
        # One sample of one sensor: read, clean, log, notify. Never raises for a sensor problem.
        ts, synced = self.clock.now_ms()
        flags = 0 if synced else clockmod.FLAG_UNSYNCED
        c = sl.cleaner
        try:
            sl.sensor.read(sl.buf)
        except SensorError as e:
            c.miss()
            sl.fails += 1
            sl.last_error = e.reason
            if sl.fails == UNPLUGGED_AFTER and not sl.down:
                sl.down = True
                self._fault(ts, flags, "unplugged", "begin", 1.0, sl.name)
            return False
        sl.fails = 0
        if sl.down:
            sl.down = False
            self._fault(ts, flags, "unplugged", "end", 0.0, sl.name)
        f = c.process(sl.buf, sl.clean)
        ev = c.event
        if ev is not None:
            self._fault(ts, flags, ev[0], ev[1], 1.0 if ev[1] == "begin" else 0.0, sl.name)
        if f == REJECT:
            return False
        flags |= f
        if sl.good % sl.log_every == 0:
            self.sink.reading(sl.name, ts, flags, sl.sensor.channels, sl.buf)
            sl.logged += 1
        sl.good += 1
        for fn in sl.listeners:
            try:
                fn(ts, flags, sl.clean)
            except Exception as e:  # noqa: BLE001 - a failing model must not stop sampling
                sl.errors += 1
                sl.last_error = "listener: %r" % (e,)
        return True

    async def _run_slot(self, sl):
        nxt = time.ticks_ms()
        while self._running:
            period = sl.period_ms
            if not period:  # switched off by apply(); look again in a second
                await asyncio.sleep_ms(1000)
                nxt = time.ticks_ms()
                continue
            try:
                self.cycle(sl)
            except Exception as e:  # noqa: BLE001 - e.g. the sink failed: count it, keep the schedule
                sl.errors += 1
                sl.last_error = "cycle: %r" % (e,)
            nxt = time.ticks_add(nxt, period)
            d = time.ticks_diff(nxt, time.ticks_ms())
            if d < -period:
                # late by more than a tick: those ticks are missing samples; resume on the grid
                missed = (-d) // period
                sl.cleaner.miss(missed)
                nxt = time.ticks_add(nxt, missed * period)
                d += missed * period
            await asyncio.sleep_ms(d if d > 0 else 0)

    async def run(self):
        # Runs until stop(). Each sensor has its own task, so a slow read delays only its own sensor.
        self._running = True
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run_slot(sl)) for sl in self.slots]
        try:
            await self._stop.wait()
        finally:
            self._running = False
            for t in self._tasks:
                t.cancel()
            self._tasks = []

    def stop(self):
        self._running = False
        if self._stop is not None:
            self._stop.set()

    def counters(self):
        t = {"sampled": 0, "rejected": 0, "missing": 0, "stuck": 0}
        for sl in self.slots:
            c = sl.cleaner
            t["sampled"] += c.sampled
            t["rejected"] += c.rejected
            t["missing"] += c.missing
            t["stuck"] += c.stuck
        t["r_noise"] = t["rejected"] / t["sampled"] if t["sampled"] else 0.0
        return t

    def sensor_counters(self):
        out = {}
        for sl in self.slots:
            c = sl.cleaner
            out[sl.name] = {
                "sampled": c.sampled,
                "rejected": c.rejected,
                "missing": c.missing,
                "stuck": c.stuck,
                "logged": sl.logged,
                "r_noise": c.r_noise(),
                "down": sl.down,
                "errors": sl.errors,
                "error": sl.last_error,
            }
        return out
