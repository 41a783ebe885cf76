# Sample cleaning, one Cleaner per sensor, between the driver and everything after it. The raw reading is
# never changed: it is what the node logs. Cleaning writes a cleaned copy (what the model path gets) and
# flags the reading.
#
# For each reading (an array('f') aligned with the sensor's channels), in this order:
# 1. Stuck sensor: N identical readings in a row (all channels bit-identical; N = stuck_n) flag the readings
#    with FLAG_STUCK (2) until the values move again. The caller emits a `fault` event "stuck" on the change.
# 2. Range: a channel outside its physical limits (per sensor kind; an ADC's from its calibration) rejects
#    the whole reading: it is counted, not logged and not windowed; a `fault` event "range" on the change.
# 3. Spikes: a causal Hampel filter per channel. The reading is compared with the median of the previous
#    `window` raw readings; if it is further than max(k * 1.4826 * MAD, floor) the reading is flagged
#    FLAG_SUSPECT (8), counts as rejected, and its cleaned copy carries that median instead. The floor keeps
#    a flat signal (MAD = 0) from turning every small change into an outlier. The window is kept sorted
#    incrementally (one insert per reading), so the median costs no sort; the MAD is computed only for
#    readings that already look suspicious.
# Settings per sensor (node config `clean`, docs/firmware.md): window, k, stuck_s, or "off" (no flags, no
# rejects: the cleaned copy is the raw reading).
# Missing samples (the driver raised SensorError, or the scheduler ran late) are counted by the sampler
# through miss(). Counters: sampled (readings the driver returned), rejected (readings rejected or flagged
# suspect), missing, stuck (readings flagged stuck). R_noise = rejected / sampled.
from array import array

from micropython import const

FLAG_STUCK = const(2)
FLAG_SUSPECT = const(8)
REJECT = const(-1)

# per channel: (low, high, hampel floor). A causal median lags a fast signal: at 10 Hz a 0.5 Hz, 0.5 g
# swing already deviates 0.56 g from the median of the previous 7 readings. So motion channels only reject
# gross glitches (2 g, 250 deg/s beyond the median); slow environmental channels are held much tighter.
LIMITS = {
    "bme280": {"temperature": (-40.0, 85.0, 0.5), "humidity": (0.0, 100.0, 2.0), "pressure": (300.0, 1100.0, 1.0)},
    "mpu6050": {
        "ax": (-16.0, 16.0, 2.0), "ay": (-16.0, 16.0, 2.0), "az": (-16.0, 16.0, 2.0),
        "gx": (-2000.0, 2000.0, 250.0), "gy": (-2000.0, 2000.0, 250.0), "gz": (-2000.0, 2000.0, 250.0),
    },
    "dht22": {"temperature": (-40.0, 80.0, 1.0), "humidity": (0.0, 100.0, 3.0)},
}  # fmt: skip

# events the caller should emit after process(): (label, action) or None
EV_STUCK_BEGIN = ("stuck", "begin")
EV_STUCK_END = ("stuck", "end")
EV_RANGE_BEGIN = ("range", "begin")
EV_RANGE_END = ("range", "end")


def default_stuck_n(rate_hz, kind=None):
    # about 20 s of identical readings (60 s for a DHT22, whose 0.1-unit resolution repeats readily in a
    # calm room), and never fewer than 8
    return max(8, int(rate_hz * (60 if kind == "dht22" else 20)))


class Cleaner:
    def __init__(self, kind, channels, rate_hz=1, window=7, k=3.0, stuck_n=None, limits=None, enabled=True):
        n = len(channels)
        self.enabled = enabled
        self.n = n
        self.w = window
        self.k = k * 1.4826
        self.stuck_n = stuck_n or default_stuck_n(rate_hz, kind)
        self.lo = array("f", [0.0] * n)
        self.hi = array("f", [0.0] * n)
        self.floor = array("f", [0.0] * n)
        table = LIMITS.get(kind, {})
        for i, c in enumerate(channels):
            lim = (limits or {}).get(c) or table.get(c)
            if lim is None:
                raise ValueError("no range limits for %s channel %s" % (kind, c))
            self.lo[i], self.hi[i], self.floor[i] = lim
        self.ring = array("f", [0.0] * (n * window))  # raw readings in time order, per channel
        self.srt = array("f", [0.0] * (n * window))  # the same values, sorted, per channel
        self.scratch = array("f", [0.0] * window)
        self.last = array("f", [0.0] * n)
        self.fill = 0
        self.pos = 0
        self.same = 0
        self.is_stuck = False
        self.in_range = True
        self.event = None
        self.sampled = 0
        self.rejected = 0
        self.missing = 0
        self.stuck = 0

    def miss(self, n=1):
        self.missing += n

    def process(self, v, out):
        # Cleans raw reading v (left as it is) into out. Returns the reading's flags (FLAG_STUCK,
        # FLAG_SUSPECT) or REJECT. Sets self.event.
        self.event = None
        self.sampled += 1
        n = self.n
        for i in range(n):
            out[i] = v[i]
        if not self.enabled:
            return 0
        # 1. stuck
        last = self.last
        same = True
        for i in range(n):
            if v[i] != last[i]:
                same = False
            last[i] = v[i]
        if same and self.sampled > 1:
            self.same += 1
        else:
            self.same = 0
        flags = 0
        if self.same >= self.stuck_n - 1:
            if not self.is_stuck:
                self.is_stuck = True
                self.event = EV_STUCK_BEGIN
            flags = FLAG_STUCK
            self.stuck += 1
        elif self.is_stuck:
            self.is_stuck = False
            self.event = EV_STUCK_END
        # 2. range
        lo = self.lo
        hi = self.hi
        for i in range(n):
            if not lo[i] <= v[i] <= hi[i]:  # also false for NaN
                self.rejected += 1
                if self.in_range:
                    self.in_range = False
                    self.event = EV_RANGE_BEGIN
                return REJECT
        if not self.in_range:
            self.in_range = True
            if self.event is None:
                self.event = EV_RANGE_END
        # 3. Hampel
        w = self.w
        changed = False
        if self.fill == w:
            half = w >> 1
            srt = self.srt
            for i in range(n):
                med = srt[i * w + half]
                d = v[i] - med
                if d < 0:
                    d = -d
                if d > self.floor[i] and d > self.k * self._mad(i, med):
                    self._push(i, v[i])
                    out[i] = med
                    changed = True
                else:
                    self._push(i, v[i])
        else:
            for i in range(n):
                self._push(i, v[i])
        self.pos += 1
        if self.pos == w:
            self.pos = 0
        if self.fill < w:
            self.fill += 1
        if changed:
            self.rejected += 1
            flags |= FLAG_SUSPECT
        return flags

    def _mad(self, ch, med):
        w = self.w
        s = self.scratch
        srt = self.srt
        base = ch * w
        for j in range(w):
            d = srt[base + j] - med
            s[j] = -d if d < 0 else d
        _isort(s, w)
        return s[w >> 1]

    def _push(self, ch, x):
        # Replace the oldest raw value of channel ch with x, in the ring and in the sorted copy.
        w = self.w
        base = ch * w
        srt = self.srt
        if self.fill < w:
            # still filling: insert x into the sorted prefix of length fill
            j = base + self.fill
            while j > base and srt[j - 1] > x:
                srt[j] = srt[j - 1]
                j -= 1
            srt[j] = x
            self.ring[base + self.pos] = x
            return
        old = self.ring[base + self.pos]
        self.ring[base + self.pos] = x
        j = base
        end = base + w
        while srt[j] != old:
            j += 1
        # move x into place from slot j
        while j > base and srt[j - 1] > x:
            srt[j] = srt[j - 1]
            j -= 1
        while j < end - 1 and srt[j + 1] < x:
            srt[j] = srt[j + 1]
            j += 1
        srt[j] = x

    def r_noise(self):
        return self.rejected / self.sampled if self.sampled else 0.0


def _isort(a, n):
    for i in range(1, n):
        x = a[i]
        j = i - 1
        while j >= 0 and a[j] > x:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = x
