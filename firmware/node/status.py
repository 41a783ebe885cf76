# Retained status on <prefix>/<dev>/status (docs/protocol.md "status"): on every connect and every
# status_interval_s. The last will (state offline) is built here too, so both sides of the pair live together.
import asyncio
import gc
import io
import json
import time

from micropython import const

# A status message is ~400 bytes of JSON. Encoded into this preallocated buffer, not into a new string (and
# its bytes copy): on a heap fragmented by the .mpy loader, a few hundred contiguous bytes can be the one
# thing that is missing (measured: the node then failed only its status publish).
STATUS_BUF = const(768)


class _Into(io.IOBase):
    # A stream json.dump writes into, piece by piece, filling a preallocated bytearray.
    def __init__(self, buf):
        self.buf = buf
        self.n = 0

    def write(self, s):
        n = len(s)
        if self.n + n > len(self.buf):
            raise ValueError("status longer than %d bytes" % len(self.buf))
        self.buf[self.n : self.n + n] = s
        self.n += n
        return n


_FIELDS = ("v", "dev", "log", "state", "ts", "fw", "board", "model", "uptime_s", "heap_free", "boot", "seq",
           "safe_mode", "error", "counters", "e_buffer", "r_noise")
_COUNTERS = ("sampled", "rejected", "logged", "dropped", "published", "reconnects", "corrupt", "stored",
             "resends", "stored_bad", "acked")


def will(dev, prefix):
    return ("%s/%s/status" % (prefix, dev), json.dumps({"v": 2, "dev": dev, "state": "offline"}), 1, True)


class Status:
    def __init__(self, node, interval_s=60):
        self.node = node
        self.interval_s = interval_s
        self.topic = "%s/%s/status" % (node.prefix, node.dev)
        self.sent = 0
        self._out = _Into(bytearray(STATUS_BUF))
        self._pid = None  # the status message in flight, whose bytes are the buffer's
        self._busy = False
        # The status dict and its counters, built once at boot (before the heap fragments) and filled in place
        # by payload(): a status then allocates no dict tables (the counters' alone is ~270 contiguous bytes).
        c = {}
        for k in _COUNTERS:
            c[k] = 0
        p = {}
        for k in _FIELDS:
            p[k] = None
        p["v"] = 2
        p["state"] = "online"
        p["counters"] = c
        self._p = p

    def payload(self):
        n = self.node
        log = n.log
        pub = n.publisher
        sampled, rejected = n.sampling_counters()
        published = pub.published if pub else 0
        logged = log.logged if log else 0
        gc.collect()
        p = self._p
        c = p["counters"]
        p["dev"] = n.dev
        p["log"] = log.log if log else ""
        p["ts"] = n.now_ms()
        p["fw"] = n.fw
        p["board"] = n.board_name
        p["model"] = n.model_id
        p["uptime_s"] = n.uptime_s()
        p["heap_free"] = gc.mem_free()
        p["boot"] = n.boot
        p["seq"] = log.last_seq() if log else 0
        p["safe_mode"] = n.safe_mode
        p["error"] = n.error
        c["sampled"] = sampled
        c["rejected"] = rejected
        c["logged"] = logged
        c["dropped"] = log.dropped if log else 0
        c["published"] = published
        c["reconnects"] = n.mqtt.reconnects if n.mqtt else 0
        c["corrupt"] = log.corrupt if log else 0
        c["stored"] = pub.stored if pub else 0
        c["resends"] = pub.resends if pub else 0
        c["stored_bad"] = pub.stored_bad if pub else 0
        c["acked"] = log.acked if log else 0
        p["e_buffer"] = round(published / logged, 4) if logged else 0.0
        p["r_noise"] = round(rejected / sampled, 4) if sampled else 0.0
        return p

    async def publish(self):
        mq = self.node.mqtt
        if mq is None:
            return
        if self._busy:
            return  # the last status is being written: its bytes are the buffer's
        if self._pid is not None and mq.pending(self._pid):
            # Not acknowledged yet (a dead connection, a reconnect): this one supersedes it (retained, newer
            # counters), so the old one is not resent and its buffer is free. Skipping instead would leave the
            # fleet with the stale one after a reconnect.
            mq.drop(self._pid)
        self._busy = True
        try:
            out = self._out
            out.n = 0
            try:
                json.dump(self.payload(), out)
                payload = memoryview(out.buf)[: out.n]
            except ValueError:  # a very long error text: a one-off string
                payload = json.dumps(self.payload())
            self._pid = await mq.publish(self.topic, payload, 1, True)
            self.sent += 1
        finally:
            self._busy = False

    async def run(self):
        # Periodic status; the one on connect is sent by the node's on_connect.
        while True:
            t0 = time.ticks_ms()
            while time.ticks_diff(time.ticks_ms(), t0) < self.interval_s * 1000:
                await asyncio.sleep_ms(500)
            if self.node.mqtt is not None and self.node.mqtt.connected:
                try:
                    await self.publish()
                except Exception as e:
                    print("status: publish failed: %r" % e)
