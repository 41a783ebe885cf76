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
