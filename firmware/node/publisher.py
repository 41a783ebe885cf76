# Store-and-forward: drains the flash log in seq order into telemetry/event messages (docs/protocol.md) and
# advances the log's acknowledged seq only when the broker acknowledged (PUBACK) every message up to it.
#
# Messages are encoded into a few preallocated buffers (one per message in flight); a buffer is lent to the
# MQTT client until its PUBACK, so a reconnect resends exactly the same bytes (DUP). Sampling and logging do
# not depend on any of this: while the network is down records simply stay in the log.
import asyncio
import struct

from node import records as R

_INF = float("inf")


class _Full(Exception):
    pass


class Publisher:
    def __init__(self, log, mqtt, dev, prefix="edgefleet", max_batch_bytes=2048, window=2, max_recs=500, bufs=None):
        self.log = log
        self.mqtt = mqtt
        self.dev = dev
        self.topics = {R.REC_READING: "%s/%s/telemetry" % (prefix, dev), R.REC_EVENT: "%s/%s/event" % (prefix, dev)}
        if bufs is None:
            bufs = [bytearray(max_batch_bytes) for _ in range(window)]
        self.max_batch = len(bufs[0])
        self.max_recs = max_recs
        self._bufs = bufs
        self._free = list(range(len(bufs)))
        self._fifo = []  # [pid, last_seq, count, buf index, acked]
        self._head = ('{"v":1,"dev":"%s","recs":[' % dev).encode()
        self.published = 0  # records acknowledged by the broker since boot
        self.messages = 0
        self._slot = asyncio.Event()
        self._data = asyncio.Event()
        log.on_flush = self._data.set
        self._buf = None
        self._pos = 0

    # ---- encoding (into self._buf at self._pos; raises _Full when the message would exceed the bound) ----

    def _put(self, s):
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

    def _put_jstr(self, s):
        if s is None:
            self._put("null")
            return
        self._put('"')
        for c in s:
            if c == '"' or c == "\\":
                self._put("\\")
            self._put(c if " " <= c else " ")
        self._put('"')

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
                    continue  # the protocol allows finite numbers only; cleaning should have caught it
                if not first:
                    self._put(",")
                first = False
                self._put('"%s":' % ch[i])
                self._put_num(v)
            self._put("}}")
        else:
            kind, label, score, model, action, sensor = R.decode_event(rb)
            self._put('"kind":')
            self._put_jstr(kind)
            self._put(',"label":')
            self._put_jstr(label)
            self._put(',"score":')
            self._put_num(score)
            self._put(',"model":')
            self._put_jstr(model)
            self._put(',"action":')
            self._put_jstr(action)
            if sensor is not None:
                self._put(',"sensor":')
                self._put_jstr(sensor)
            self._put("}")
        return seq

    def build(self, idx):
        # Fills buffer idx with the next message: (length, record type, last seq, count), or None.
        log = self.log
        self._buf = self._bufs[idx]
        typ = 0
        count = 0
        last = 0
        self._pos = 0
        self._put(self._head)
        while count < self.max_recs and log.peek():
            rtyp = log.rbuf[2]
            if typ and rtyp != typ:
                break
            start = self._pos
            try:
                if count:
                    self._put(",")
                last = self._put_record(log.rbuf)
            except _Full:
                self._pos = start
                if count == 0:
                    # Cannot happen with the protocol's limits (a record is < 300 bytes of JSON); never stall.
                    print("publisher: record too large for max_batch_bytes, skipped")
                    log.skip()
                    continue
                break
            typ = rtyp
            count += 1
            log.skip()
        if not count:
            return None
        b = self._buf
        b[self._pos] = 0x5D  # ]
        b[self._pos + 1] = 0x7D  # }
        return self._pos + 2, typ, last, count

    # ---- flow ----

    async def run(self):
        while True:
            await self.mqtt.wait_connected()
            if not self._free:
                self._slot.clear()
                await self._slot.wait()
                continue
            idx = self._free[-1]
            msg = self.build(idx)
            if msg is None:
                # Nothing durable to send: sleep until the log flushes (no polling).
                self._data.clear()
                await self._data.wait()
                continue
            self._free.pop()
            n, typ, last, count = msg
            entry = [0, last, count, idx, False]
            self._fifo.append(entry)
            self._entry = entry
            await self.mqtt.publish(self.topics[typ], memoryview(self._bufs[idx])[:n], 1, False, self._set_pid)
            self.messages += 1

    def _set_pid(self, pid):
        self._entry[0] = pid

    def on_puback(self, pid):
        # Acks may complete out of order; the log advances over the longest acknowledged prefix.
        fifo = self._fifo
        for e in fifo:
            if e[0] == pid and not e[4]:
                e[4] = True
                break
        else:
            return False
        while fifo and fifo[0][4]:
            e = fifo.pop(0)
            self.log.ack(e[1])
            self.published += e[2]
            self._free.append(e[3])
            self._slot.set()
        return True

    def in_flight(self):
        return len(self._fifo)
