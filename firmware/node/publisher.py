# Store-and-forward: drains the flash log in seq order into telemetry/event messages (docs/protocol.md) and
# frees flash only when the collector says the records are in its database (end-to-end acknowledgement).
#
# Two windows:
# - the send window: messages handed to the MQTT client until the broker's PUBACK (a few preallocated buffers,
#   lent to the client so a reconnect resends the same bytes). PUBACK frees the buffer, nothing else.
# - the stored window: (first, last) seq of each message sent but not yet covered by a `stored` message from
#   the collector (<prefix>/<dev>/stored), at most `max_unstored` of them, in seq order. The log's stored
#   mark (FlashLog.ack) advances over the longest prefix of covered entries. The message bytes are not kept:
#   after `stored_timeout_s` without progress, or a reconnect, the entries are forgotten and the log reader
#   rewinds to the first record above the stored mark, which is sent again from flash.
# A message holds records of one type with consecutive seqs, so a `stored` range covers a whole message.
# Messages are batched: sent when about `batch_bytes` of records wait or the oldest waited `batch_ms`.
# Sampling and logging do not depend on any of this: while the network is down records simply stay in flash.
import asyncio
import struct
import time
from array import array

from node import records as R

_INF = float("inf")
MAX_RANGES = 32  # per stored message (protocol)


class _Full(Exception):
    pass


class Publisher:
    def __init__(
        self,
        log,
        mqtt,
        dev,
        prefix="edgefleet",
        max_batch_bytes=2048,
        window=2,
        max_recs=500,
        bufs=None,
        stored_timeout_s=30,
        batch_bytes=256,
        batch_ms=5000,
        max_unstored=8,
        ticks_ms=time.ticks_ms,
    ):
        self.log = log
        self.mqtt = mqtt
        self.dev = dev
        self.topics = {R.REC_READING: "%s/%s/telemetry" % (prefix, dev), R.REC_EVENT: "%s/%s/event" % (prefix, dev)}
        self.stored_topic = "%s/%s/stored" % (prefix, dev)
        if bufs is None:
            bufs = [bytearray(max_batch_bytes) for _ in range(window)]
        self.max_batch = len(bufs[0])
        self.max_recs = max_recs
        self.stored_timeout_ms = int(stored_timeout_s * 1000)
        self.batch_bytes = batch_bytes
        self.batch_ms = batch_ms
        self._ticks = ticks_ms
        self._bufs = bufs
        self._free = list(range(len(bufs)))
        self._fifo = []  # send window: [pid, count, buf index, acked]
        self._head = ('{"v":2,"dev":"%s","log":"%s","recs":[' % (dev, log.log)).encode()
        self._logb = log.log.encode()
        # stored window, preallocated: first seq, last seq, ticks sent, covered
        self._uf = array("I", [0] * max_unstored)
        self._ul = array("I", [0] * max_unstored)
        self._ut = array("i", [0] * max_unstored)
        self._uc = bytearray(max_unstored)
        self._un = 0
        # ranges of the stored message being applied (parsed fully before any is applied)
        self._ra = array("I", [0] * MAX_RANGES)
        self._rb = array("I", [0] * MAX_RANGES)
        self.published = 0  # records acknowledged by the broker since boot (PUBACK)
        self.stored = 0  # records the collector confirmed stored since boot
        self.messages = 0
        self.stored_msgs = 0  # stored messages applied
        self.stored_bad = 0  # stored messages ignored: unparsable, or another log's
        self.resends = 0  # rewinds (stored timeout or reconnect)
        self._wake = asyncio.Event()
        log.on_flush = self._wake.set
        self._t_first = 0
        self._waiting = False
        self._buf = None
        self._pos = 0
        self._entry = None

    # ---- encoding (into self._buf at self._pos; raises _Full when the message would exceed the bound) ----

    def _put(self, s):
        # s: str (ASCII only: JSON syntax and numbers) or bytes
        n = len(s)
        p = self._pos
        if p + n > self.max_batch - 2:  # room for the closing "]}"
            raise _Full()
        if isinstance(s, str):
            R.copy_into(self._buf, p, s, n)
        else:
            self._buf[p : p + n] = s
        self._pos = p + n

    def _put_byte(self, c):
        p = self._pos
        if p + 1 > self.max_batch - 2:
            raise _Full()
        self._buf[p] = c
        self._pos = p + 1

    def _put_num(self, v):
        if v != v or v == _INF or v == -_INF:
            self._put("null")
        else:
            self._put("%.7g" % v)

    def _put_jbytes(self, rb, p):
        # The record's length-prefixed UTF-8 string at rb[p] as a JSON string, copied byte by byte (a UTF-8
        # sequence is copied whole, so non-ASCII text survives); returns the offset after it.
        n = rb[p]
        if n == 255:
            self._put("null")
            return p + 1
        self._put_byte(0x22)
        for i in range(p + 1, p + 1 + n):
            c = rb[i]
            if c == 0x22 or c == 0x5C:
                self._put_byte(0x5C)
            self._put_byte(c if c >= 0x20 else 0x20)
        self._put_byte(0x22)
        return p + 1 + n

    def _channels(self, name, n):
        ch = self.log.channels.get(name)
        if ch is None or len(ch) != n:
            ch = tuple("c%d" % i for i in range(n))
            self.log.channels[name] = ch
        return ch

    def _put_record(self, rb):
        _, typ, flags, seq, ts = R.header(rb)
        self._put('{"seq":%d,"ts":%d,"flags":%d,' % (seq, ts, flags))
        if typ == R.REC_READING:
            name = R.reading_name(rb)
            n, p = R.reading_values(rb)
            ch = self._channels(name, n)
            self._put('"sensor":"%s","vals":{' % name)
            first = True
            for i in range(n):
                v = struct.unpack_from("<f", rb, p + 4 * i)[0]
                if v != v or v == _INF or v == -_INF:
                    continue  # the protocol allows finite numbers only (the raw reading is still on flash)
                if not first:
                    self._put(",")
                first = False
                self._put('"%s":' % ch[i])
                self._put_num(v)
            self._put("}}")
        else:
            score = struct.unpack_from("<f", rb, R.HDR_SIZE)[0]
            p = R.HDR_SIZE + 4
            self._put('"kind":')
            p = self._put_jbytes(rb, p)
            self._put(',"label":')
            p = self._put_jbytes(rb, p)
            self._put(',"score":')
            self._put_num(R.finite_score(score))
            self._put(',"model":')
            p = self._put_jbytes(rb, p)
            self._put(',"action":')
            p = self._put_jbytes(rb, p)
            if rb[p] != 255:
                self._put(',"sensor":')
                self._put_jbytes(rb, p)
            self._put("}")
        return seq

    def build(self, idx):
        # Fills buffer idx with the next message: (length, record type, first seq, last seq, count), or None.
        log = self.log
        self._buf = self._bufs[idx]
        typ = 0
        count = 0
        first = last = 0
        self._pos = 0
        self._put(self._head)
        while count < self.max_recs and log.peek():
            rtyp = log.rbuf[2]
            seq = R.header(log.rbuf)[3]
            if typ and (rtyp != typ or seq != last + 1):
                break  # one type, consecutive seqs: a stored range covers a whole message
            start = self._pos
            try:
                if count:
                    self._put(",")
                last = self._put_record(log.rbuf)
            except _Full:
                self._pos = start
                if count == 0:
                    # Cannot happen with the protocol's limits (a record is < 400 bytes of JSON); never stall.
                    print("publisher: record too large for max_batch_bytes, skipped")
                    log.skip()
                    continue
                break
            if not count:
                first = last
            typ = rtyp
            count += 1
            log.skip()
        if not count:
            return None
        b = self._buf
        b[self._pos] = 0x5D  # ]
        b[self._pos + 1] = 0x7D  # }
        return self._pos + 2, typ, first, last, count

    # ---- flow ----

    def _ready(self):
        # ms to wait before the next message (0: send now), or -1 when nothing is waiting.
        log = self.log
        if not log.peek():
            self._t_first = 0
            return -1
        waiting = log.durable - R.header(log.rbuf)[3] + 1
        avg = 32
        if waiting * avg >= self.batch_bytes:
            return 0
        now = self._ticks()
        if not self._t_first:
            self._t_first = now or 1
        left = self.batch_ms - time.ticks_diff(now, self._t_first)
        return left if left > 0 else 0

    async def _sleep(self, ms):
        # Until woken (a record, PUBACK, stored, rewind) or ms passed (ms < 0: until woken).
        self._wake.clear()
        if ms < 0:
            await self._wake.wait()
            return
        try:
            await asyncio.wait_for_ms(self._wake.wait(), ms)
        except asyncio.TimeoutError:
            pass

    async def run(self):
        watch = asyncio.create_task(self._watch())
        try:
            while True:
                await self.mqtt.wait_connected()
                if not self._free or self._un >= len(self._uf):
                    await self._sleep(-1)
                    continue
                wait = self._ready()
                if wait:
                    await self._sleep(wait)
                    continue
                idx = self._free[-1]
                msg = self.build(idx)
                self._t_first = 0
                if msg is None:
                    continue
                self._free.pop()
                n, typ, first, last, count = msg
                k = self._un
                self._uf[k] = first
                self._ul[k] = last
                self._ut[k] = self._ticks()
                self._uc[k] = 0
                self._un = k + 1
                entry = [0, count, idx, False]
                self._fifo.append(entry)
                self._entry = entry
                await self.mqtt.publish(self.topics[typ], memoryview(self._bufs[idx])[:n], 1, False, self._set_pid)
                self.messages += 1
        finally:
            watch.cancel()

    async def _watch(self):
        # Stored timeout: the oldest message sent has waited stored_timeout_ms for its stored ack.
        while True:
            await asyncio.sleep_ms(1000)
            if self._un and time.ticks_diff(self._ticks(), self._ut[0]) >= self.stored_timeout_ms:
                self.rewind()

    def rewind(self):
        # Forget the messages not yet stored and send again from flash, from the first unstored record.
        if self._un:
            self.resends += 1
        self._un = 0
        self.log.rewind()
        self._t_first = 0
        self._wake.set()

    def on_connect(self):
        # A new MQTT session: what was sent before may be lost anywhere on the way; resend from flash.
        self.rewind()

    def _set_pid(self, pid):
        self._entry[0] = pid

    def on_puback(self, pid):
        # PUBACK paces sending only: it frees the message buffer. Acks may complete out of order.
        fifo = self._fifo
        for e in fifo:
            if e[0] == pid and not e[3]:
                e[3] = True
                break
        else:
            return False
        while fifo and fifo[0][3]:
            e = fifo.pop(0)
            self.published += e[1]
            self._free.append(e[2])
        self._wake.set()
        return True

    def in_flight(self):
        return len(self._fifo)

    def unstored(self):
        return self._un

    # ---- stored acks ----

    def on_stored(self, payload):
        # A `stored` message: {"v":2,"log":"<id>","ranges":[[first,last],...]}. Parsed in place (no
        # per-range allocation); anything unexpected ignores the whole message and counts it.
        n = self._parse_stored(payload)
        if n < 0:
            self.stored_bad += 1
            return False
        self.stored_msgs += 1
        uf, ul, uc = self._uf, self._ul, self._uc
        ra, rb = self._ra, self._rb
        for j in range(n):
            a = ra[j]
            b = rb[j]
            for i in range(self._un):
                if not uc[i] and a <= uf[i] and ul[i] <= b:
                    uc[i] = 1
        k = 0
        while k < self._un and uc[k]:
            self.stored += ul[k] - uf[k] + 1
            k += 1
        if k:
            self.log.ack(ul[k - 1])
            m = self._un - k
            for i in range(m):
                uf[i] = uf[i + k]
                ul[i] = ul[i + k]
                self._ut[i] = self._ut[i + k]
                uc[i] = uc[i + k]
            self._un = m
            t = self._ticks()
            for i in range(m):
                self._ut[i] = t  # progress: the others get a fresh timeout
            self._wake.set()
        return True

    def _parse_stored(self, p):
        # Number of ranges parsed into _ra/_rb, or -1 (not ours or not valid).
        i = _key(p, b'"v"')
        if i < 0:
            return -1
        v, i = _int(p, i)
        if v != 2:
            return -1
        i = _key(p, b'"log"')
        if i < 0 or i + 10 > len(p) or p[i] != 0x22 or p[i + 9] != 0x22:
            return -1
        lb = self._logb
        for j in range(8):
            if p[i + 1 + j] != lb[j]:
                return -1  # another log's ack (an old log of this device): not ours
        i = _key(p, b'"ranges"')
        if i < 0 or i >= len(p) or p[i] != 0x5B:
            return -1
        i = _ws(p, i + 1)
        n = 0
        if i < len(p) and p[i] == 0x5D:
            return 0
        while True:
            if n >= MAX_RANGES or i >= len(p) or p[i] != 0x5B:
                return -1
            a, i = _int(p, _ws(p, i + 1))
            i = _ws(p, i)
            if a < 0 or i >= len(p) or p[i] != 0x2C:
                return -1
            b, i = _int(p, _ws(p, i + 1))
            i = _ws(p, i)
            if b < a or i >= len(p) or p[i] != 0x5D:
                return -1
            self._ra[n] = a
            self._rb[n] = b
            n += 1
            i = _ws(p, i + 1)
            if i >= len(p):
                return -1
            if p[i] == 0x5D:
                return n
            if p[i] != 0x2C:
                return -1
            i = _ws(p, i + 1)


def _ws(p, i):
    n = len(p)
    while i < n and p[i] in b" \t\r\n":
        i += 1
    return i


def _key(p, k):
    # Offset of the value after `k:` (whitespace skipped), or -1.
    i = p.find(k)
    if i < 0:
        return -1
    i = _ws(p, i + len(k))
    if i >= len(p) or p[i] != 0x3A:
        return -1
    return _ws(p, i + 1)


def _int(p, i):
    # (non-negative int, next offset); -1 when there is no digit at i or it is absurdly long.
    n = len(p)
    v = 0
    j = i
    while j < n and 0x30 <= p[j] <= 0x39 and j - i < 10:
        v = v * 10 + p[j] - 0x30
        j += 1
    if j == i or (j < n and 0x30 <= p[j] <= 0x39):
        return -1, j
    return v, j
