# Wall clock for record timestamps: UTC milliseconds since the Unix epoch, and whether it can be trusted.
#
#   ts_ms, synced = clock.now_ms()
#   clock.sync(host)   # NTP (ntptime) on ESP32; on the sim board the host's clock counts as synced
#
# Until sync() has succeeded, records carry flags bit 1 (FLAG_UNSYNCED) and ts is the RTC as it is:
# monotonic within a boot, but on an ESP32 it starts at 2000-01-01 after power-on. Real time everywhere: no
# scaling, the simulator runs in wall-clock time like a node.
import sys
import time

FLAG_UNSYNCED = 1
_synced = False
_sim = sys.platform not in ("esp32", "esp8266", "rp2")
_epoch_offset_s = 0  # added to time.time() so it counts from 1970 on ports whose epoch is 2000


def _detect_epoch():
    global _epoch_offset_s
    try:
        if time.gmtime(0)[0] == 2000:
            _epoch_offset_s = 946684800
    except (AttributeError, OverflowError):
        pass


_detect_epoch()


def now_ms():
    return time.time_ns() // 1000000 + _epoch_offset_s * 1000, _synced


def flags():
    return 0 if _synced else FLAG_UNSYNCED


def synced():
    return _synced


def sync(host="pool.ntp.org"):
    # Returns True when the RTC is now UTC. Never raises: an NTP failure leaves the clock unsynced (records
    # keep the flag) and the caller retries later.
    global _synced
    if _sim:
        _synced = True
        return True
    try:
        import ntptime

        ntptime.host = host
        ntptime.settime()
    except Exception:  # noqa: BLE001 - OSError, timeouts, DNS failures: all mean "not synced yet"
        return False
    _synced = True
    return True


def reset():
    # Tests: back to the state after boot.
    global _synced
    _synced = False
