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
        self._logq = ('"%s"' % log.log).encode()
        # stored window, preallocated: first seq, last seq, ticks sent, covered
        self._uf = array("I", [0] * max_unstored)
        self._ul = array("I", [0] * max_unstored)
        self._ut = array("i", [0] * max_unstored)
        self._uc = bytearray(max_unstored)
        self._un = 0
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
        q = self._pos
        if q + 2 * n + 2 > self.max_batch - 2:
            raise _Full()
        b = self._buf
        b[q] = 0x22
        q += 1
        for i in range(p + 1, p + 1 + n):
            c = rb[i]
            if c == 0x22 or c == 0x5C:
                b[q] = 0x5C
                q += 1
            b[q] = c if c >= 0x20 else 0x20
            q += 1
        b[q] = 0x22
        self._pos = q + 1
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
            rtyp = R.rtype(log.rbuf)
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
        # ms < 0: until woken (a record, PUBACK, stored, rewind). Else a short nap (no wait_for: it makes a
        # task per call): the batch grows meanwhile and is looked at again.
        if ms < 0:
            self._wake.clear()
            await self._wake.wait()
        else:
            await asyncio.sleep_ms(ms if ms < 250 else 250)

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

    # ---- stored acks ----

    def on_stored(self, payload):
        # A `stored` message: {"v":2,"log":"<id>","ranges":[[first,last],...]}. Parsed in place (no
        # per-range allocation); anything unexpected ignores the whole message and counts it.
        i = _val(payload, b'"ranges"')
        if (
            _val(payload, b'"v"') < 0
            or payload[_val(payload, b'"v"')] != 0x32
            or payload[_val(payload, b'"log"') :][:10] != self._logq
            or i < 0
            or self._ranges(payload, i, False) < 0  # validate the whole message before applying any of it
        ):
            self.stored_bad += 1
            return False
        self._ranges(payload, i, True)
        self.stored_msgs += 1
        uf, ul, uc = self._uf, self._ul, self._uc
        k = 0
        while k < self._un and uc[k]:
            self.stored += ul[k] - uf[k] + 1
            k += 1
        if k:
            self.log.ack(ul[k - 1])
            m = self._un - k
            t = self._ticks()
            for i in range(m):
                uf[i] = uf[i + k]
                ul[i] = ul[i + k]
                uc[i] = uc[i + k]
                self._ut[i] = t  # progress: the others get a fresh timeout
            self._un = m
            self._wake.set()
        return True

    def _ranges(self, p, i, apply):
        # The JSON list of [a, b] at p[i:]: number of ranges, or -1 if it is anything else (or > 32 ranges,
        # b < a, a number over 9 digits). apply: mark the messages sent whose seqs lie within a range.
        depth = n = k = 0
        num = a = b = -1
        for j in range(i, len(p)):
            c = p[j]
            if 0x30 <= c <= 0x39:
                num = c - 0x30 if num < 0 else num * 10 + c - 0x30
                if num > 999999999:
                    return -1
                continue
            if num >= 0:
                if depth != 2 or k > 1:
                    return -1
                if k:
                    b = num
                else:
                    a = num
                k += 1
                num = -1
            if c == 0x5B:  # [
                depth += 1
                k = 0
                if depth > 2:
                    return -1
            elif c == 0x5D:  # ]
                if depth == 2:
                    if k != 2 or b < a or n == MAX_RANGES:
                        return -1
                    n += 1
                    if apply:
                        for e in range(self._un):
                            if a <= self._uf[e] and self._ul[e] <= b:
                                self._uc[e] = 1
                depth -= 1
                if depth == 0:
                    return n
            elif c != 0x2C and c != 0x20 and depth:
                return -1
            elif not depth:
                return -1
        return -1


def _val(p, key):
    # Offset of the value of `key` (a quoted JSON key, bytes) in p, or -1: whitespace and ":" skipped.
    i = p.find(key)
    if i < 0:
        return -1
    i += len(key)
    while i < len(p) and p[i] in b" :":
        i += 1
    return i if i < len(p) else -1
