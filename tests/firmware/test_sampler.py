# The sampler on asyncio in real time: per-sensor rates, log_every decimation, timestamps and the unsynced
# flag, late ticks counted as missing.
import time

import asyncio
from fwcore_helpers import CountSink, sim_hw
from node import clock
from node.sampler import Sampler

TIMEOUT = 60

CFG = {"rates": {"env": 2, "imu": 50, "soil": 5, "air": 0.5}, "log_every": {"env": 1, "imu": 5, "soil": 1, "air": 1}}


async def _run_for(s, seconds):
    task = asyncio.create_task(s.run())
    await asyncio.sleep(seconds)
    s.stop()
    await task


def test_rates_decimation_and_clock_flag(sim_board):
    clock.reset()
    _, hw = sim_hw(sim_board, config=CFG)
    hw.sim.scenario.set_time(None)  # real time
    sink = CountSink()
    s = Sampler(hw, CFG, sink)
    t0 = time.ticks_ms()
    asyncio.run(_run_for(s, 2.0))
    assert sink.last_flags["env"] & clock.FLAG_UNSYNCED, "not synced yet: flag 1"
    clock.sync("ignored-on-sim")
    asyncio.run(_run_for(s, 1.0))
    elapsed = time.ticks_diff(time.ticks_ms(), t0) / 1000
    per = s.sensor_counters()
    # two runs (2 s + 1 s); each samples at its start and then every period: rate * 3 s, +1 per run at the
    # start, -1 per run for a tick that races the stop
    assert 3.0 <= elapsed < 3.5, elapsed
    for name, rate in CFG["rates"].items():
        want = rate * 3.0
        got = per[name]["sampled"]
        assert want - 2 <= got <= want + 2, (name, got, want)
    assert sink.counts["imu"] * 5 >= per["imu"]["sampled"] >= (sink.counts["imu"] - 1) * 5, "log_every 5"
    assert sink.counts["env"] == per["env"]["sampled"]
    assert sink.last_flags["env"] == 0, "synced: flag cleared"
    now, synced = clock.now_ms()
    assert synced and 0 <= now - sink.last_ts["imu"] < 1000
    assert s.counters()["sampled"] == sum(p["sampled"] for p in per.values())
    assert s.counters()["missing"] == 0 and s.counters()["rejected"] == 0, s.counters()
    clock.reset()


def test_late_ticks_count_as_missing(sim_board):
    cfg = {"rates": {"imu": 100}, "log_every": {}}
    _, hw = sim_hw(sim_board, config=cfg)
    sink = CountSink()
    s = Sampler(hw, cfg, sink)

    async def hog():
        await asyncio.sleep_ms(200)
        time.sleep_ms(300)  # blocks the loop: ~30 ticks of imu cannot happen

    async def main():
        task = asyncio.create_task(s.run())
        await hog()
        await asyncio.sleep_ms(200)
        s.stop()
        await task

    asyncio.run(main())
    c = s.sensor_counters()["imu"]
    assert 25 <= c["missing"] <= 35, c
    assert 30 <= c["sampled"] <= 50, c


def test_apply_changes_rates_while_running(sim_board):
    cfg = {"rates": {"imu": 20, "env": 0}, "log_every": {}}
    _, hw = sim_hw(sim_board, config=cfg)
    sink = CountSink()
    s = Sampler(hw, cfg, sink)

    async def main():
        task = asyncio.create_task(s.run())
        await asyncio.sleep_ms(1000)
        n1 = s.sensor_counters()["imu"]["sampled"]
        s.apply({"rates": {"imu": 0, "env": 5}, "log_every": {"env": 1}})
        await asyncio.sleep_ms(1000)
        s.stop()
        await task
        return n1

    n1 = asyncio.run(main())
    per = s.sensor_counters()
    assert 18 <= n1 <= 22, n1
    assert per["imu"]["sampled"] - n1 <= 1, "imu stopped"
    assert 4 <= per["env"]["sampled"] <= 6, per["env"]
    assert sink.counts["env"] == per["env"]["sampled"]


def test_failing_listener_or_sink_does_not_stop_sampling(sim_board):
    cfg = {"rates": {"imu": 50}, "log_every": {}}
    _, hw = sim_hw(sim_board, config=cfg)

    class FlakySink(CountSink):
        def reading(self, sensor, ts_ms, flags, channels, values):
            if self.seq % 7 == 3:
                self.seq += 1
                raise OSError(28)  # ENOSPC, say
            return super().reading(sensor, ts_ms, flags, channels, values)

    sink = FlakySink()
    s = Sampler(hw, cfg, sink)

    def bad_listener(ts, flags, values):
        raise ValueError("model blew up")

    s.listen("imu", bad_listener)
    asyncio.run(_run_for(s, 0.5))
    c = s.sensor_counters()["imu"]
    assert c["sampled"] >= 20, c
    assert c["errors"] >= c["sampled"] - 5, c  # the listener fails on every good reading
    assert "cycle: OSError" in c["error"] or "listener: ValueError" in c["error"], c["error"]
    assert sink.counts["imu"] >= 15


class _Series:
    # A sensor that returns a scripted series of temperature readings (humidity, pressure constant).
    name = "env"
    kind = "bme280"
    channels = ("temperature", "humidity", "pressure")

    def __init__(self, temps):
        self.temps = temps
        self.i = 0

    def read(self, buf):
        buf[0] = self.temps[self.i % len(self.temps)]
        buf[1] = 45.0
        buf[2] = 1013.0
        self.i += 1


class _Hw:
    def __init__(self, sensors):
        self.sensors = sensors


class _RecSink:
    def __init__(self):
        self.recs = []

    def reading(self, name, ts, flags, channels, values):
        self.recs.append((flags, values[0]))
        return len(self.recs)

    def event(self, *a):
        return 0


def test_raw_reading_logged_flagged_cleaned_copy_to_model(sim_board):
    temps = [21.0 + 0.05 * (i % 3) for i in range(12)] + [70.0] + [21.0] * 3
    for clean in (None, "off"):
        cfg = {"rates": {"env": 1}, "log_every": {"env": 1}}
        if clean:
            cfg["clean"] = {"env": clean}
        sink = _RecSink()
        s = Sampler(_Hw([_Series(temps)]), cfg, sink)
        seen = []
        s.listen("env", lambda ts, flags, v: seen.append((flags, v[0])))
        sl = s.slot("env")
        for _ in temps:
            s.cycle(sl)
        # What is logged (and so stored) is what the sensor read, reading for reading.
        assert [round(v, 3) for _, v in sink.recs] == [round(t, 3) for t in temps], sink.recs
        if clean is None:
            assert sink.recs[12][0] & 8 and not sink.recs[11][0] & 8, sink.recs[10:14]
            assert seen[12][1] < 22.0, seen[12]  # the model path gets the median
            assert s.counters()["rejected"] == 1
        else:
            assert all(not f & 10 for f, _ in sink.recs) and abs(seen[12][1] - 70.0) < 1e-3
            assert s.counters()["rejected"] == 0
