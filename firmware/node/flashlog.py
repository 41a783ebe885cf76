# Durable append-only log of records on the board's raw `log` partition: a circular log of 4 KB sectors.
#
# Layout (docs/firmware.md has the full description):
#   sector = header (32 bytes) | records (records.py), each padded to `align` bytes ... | erased tail (0xFF)
#   header = u32 magic "EFL2" | u32 counter (grows by 1 per opened sector) | u32 seq_base (seq of the first
#            record in the sector) | u32 acked (stored mark when the sector was opened) | u32 prev_end
#            (where the valid data of the previous sector ends) | u32 log id | u32 erases (times this sector
#            was erased, this time included) | u32 crc32
# Sectors are used in physical order, wrapping around; the newest (head) has the highest counter. Every
# sector is erased once per lap of the ring, so wear is levelled across the partition (erase_counts()).
#
# Why it looks like this:
# - NOR flash can only clear bits, so nothing is ever rewritten in place: records and "stored up to seq N"
#   markers are appended; a sector is erased as a whole when the ring wraps onto it.
# - Each record is programmed when it is appended (reading()/event() return only after that): a power cut
#   loses at most the record being programmed (POWER_CUT_LOSS), never a batch. seq needs no flash write of
#   its own: on mount it follows the last valid record (a torn record's seq was never handed out, since
#   reading() had not returned, so it is reused). Write amplification stays near 1: the bytes programmed
#   are the records, their padding to `align` (16 for ESP32 flash encryption), one header per sector and
#   an ack marker at most every `ack_persist_ms`.
# - `acked` is the end-to-end stored mark (the collector's `stored` messages, node.publisher), not the
#   broker's PUBACK. It is persisted lazily (ack markers, sector headers): a power cut can forget the last
#   `ack_persist_ms` of it, which only means those records are sent again (the collector stores a
#   redelivered record once).
# - The log id (8 hex, random) is chosen when the log is formatted (no valid sector header: fresh flash,
#   erased log, replaced board) and written in every sector header: a new log is a new log for the
#   collector, which keys records by (device, log, seq).
# - A torn write (power cut) leaves a record with a bad CRC at the end of the head sector: mount keeps
#   everything before it and continues in a fresh sector. A bad record anywhere else is corruption: the rest
#   of that sector is skipped and counted (`corrupt`), the next record delivered carries flag 4.
import time
from array import array

from micropython import const

from node import records as R

# The sector format below is repeated, as private constants, in node.logmount (which must not import this
# module: this module imports it); tests/firmware/test_firmware_layout.py checks that the two agree.
SECTOR = const(4096)
SH_SIZE = const(32)
MAGIC = const(0x324C4645)  # b"EFL2" little-endian
_SH = "<IIIIIII"
ST_ERASED = const(0)
ST_VALID = const(1)
ST_BAD = const(2)
_IOCTL_BLOCK_COUNT = const(4)
_IOCTL_BLOCK_SIZE = const(5)
_IOCTL_BLOCK_ERASE = const(6)
FLAG_RECOVERED = const(4)

# Records a power cut can cost: the one being programmed. The host's loss accounting reads this line.
POWER_CUT_LOSS = const(1)
ACK_PERSIST_MS = const(30000)
ALIGN = const(1)


class LogError(Exception):
    pass


def log_id_hex(v):
    return "%08x" % v


class FlashLog:
    def __init__(self, part, align=ALIGN, ack_persist_ms=ACK_PERSIST_MS, ticks_ms=time.ticks_ms, readonly=False):
        # readonly: only look (provision --inspect): a blank log is not formatted, log is "".
        if part.ioctl(_IOCTL_BLOCK_SIZE, 0) != SECTOR:
            raise LogError("log partition block size must be 4096")
        if align not in (1, 4, 16, 32):
            raise LogError("log align must be 1, 4, 16 or 32")
        self.part = part
        self.n = part.ioctl(_IOCTL_BLOCK_COUNT, 0)
        if self.n < 3:
            raise LogError("log partition needs at least 3 sectors")
        self.align = align
        self.ack_persist_ms = ack_persist_ms
        self._ticks = ticks_ms
        self.buf = bytearray(R.MAX_SIZE + 32)  # the record being written (+ padding)
        self.rbuf = bytearray(R.MAX_SIZE)  # the record the reader looks at
        self._sh = bytearray(SH_SIZE)
        self._scan = bytearray(256)
        # sector counters: needed by mount only (node.logmount), kept afterwards for readonly (--inspect) use
        self.cnt = array("I", [0] * self.n)
        self.base = array("I", [0] * self.n)
        self._emax = 0  # the highest erase count seen (for a sector whose own count is unreadable)
        self.state = bytearray(self.n)
        self.end = array("H", [SECTOR] * self.n)  # end of valid data per sector (from the next one's header)
        self._closed = False  # the head has a torn tail: never program it again
        # Counters since boot (status), plus what mount found.
        self.logged = 0
        self.dropped = 0
        self.corrupt = 0
        self.torn = 0
        self.formatted = False  # this boot formatted the log (new log id)
        self.channels = {}  # sensor name -> channel names, registered by the app / first reading
        self._recovered = False
        self.on_flush = None  # callback when a new record became durable (wakes the publisher)
        self._ack_saved = 0  # the acked value last persisted
        self._ack_t = ticks_ms()
        self.readonly = readonly
        self.mount()
        self.log = log_id_hex(self.log_id) if self.log_id else ""

    def _pad(self, size):
        a = self.align
        return (size + a - 1) // a * a

    # ---- mount ----

    def _read_header(self, s):
        sh = self._sh
        self.part.readblocks(s, sh, 0)
        if R.all_erased(sh, 0, SH_SIZE):
            return ST_ERASED, None
        magic, cnt, base, acked, prev_end, lid, er = R.struct.unpack_from(_SH, sh, 0)
        if magic != MAGIC or not R.crc_check(sh, 0, SH_SIZE - 4):
            return ST_BAD, None
        return ST_VALID, (cnt, base, acked, prev_end, lid, er)

    def mount(self):
        # The mount code lives in node.logmount, loaded for the boot and released after it: it runs once, and
        # its bytecode would otherwise hold ~2 KB of the board's heap for good.
        import sys

        from node import logmount

        try:
            logmount.mount(self)
            if not self.readonly:
                self.cnt = None  # 4 bytes per sector of heap the running node does not need
        finally:
            sys.modules.pop("node.logmount", None)
            import node

            if getattr(node, "logmount", None) is not None:
                del node.logmount

    def _read_record(self, s, off):
        # Reads the record at (s, off) into rbuf. >0: its length; 0: end of data; -1: bad record.
        if off + R.MIN_SIZE > SECTOR:
            return 0
        rb = self.rbuf
        mv = memoryview(rb)
        self.part.readblocks(s, mv[: R.HDR_SIZE], off)
        ln = rb[0]
        if ln == 0xFF:
            return 0
        if ln < R.MIN_SIZE or ln > R.MAX_SIZE or off + ln > SECTOR:
            return -1
        self.part.readblocks(s, mv[R.HDR_SIZE : ln], off + R.HDR_SIZE)
        if not R.crc_check(rb, 0, ln - R.CRC_SIZE):
            return -1
        return ln

    def _seek_reader(self):
        # Reader starts at the first record after the stored mark.
        want = self.acked + 1
        s = self.tail
        best = self.tail
        while True:
            if self.state[s] == ST_VALID and self.base[s] <= want:
                best = s
            if s == self.head:
                break
            s = (s + 1) % self.n
        self.rsec, self.roff = best, SH_SIZE
        self._peeked = 0
        while True:
            ln = self.peek()
            if ln <= 0:
                return
            if R.header(self.rbuf)[3] >= want:
                return
            self.skip()

    # ---- writing ----

    def _open_next(self):
        n = self.n
        s = 0 if self.head < 0 else (self.head + 1) % n
        # Erase count: from this sector's own header (read now: no per-sector table in RAM); unknown (bad
        # header) = the highest seen; erased = 0 (fresh flash).
        er = self._erases_of(s) + 1
        if er > self._emax:
            self._emax = er
        if self.state[s] == ST_VALID:
            self._drop(s)
        self.state[s] = ST_BAD  # until its header is programmed
        self.part.ioctl(_IOCTL_BLOCK_ERASE, s)
        self.counter += 1
        sh = self._sh
        prev_end = self.woff if self.head >= 0 else SECTOR
        R.struct.pack_into(_SH, sh, 0, MAGIC, self.counter, self.next_seq, self.acked, prev_end, self.log_id, er)
        R.crc_seal(sh, 0, SH_SIZE - 4)
        self.part.writeblocks(s, sh, 0)
        self.state[s] = ST_VALID
        if self.cnt is not None:
            self.cnt[s] = self.counter
        self.base[s] = self.next_seq
        if self.head >= 0:
            self.end[self.head] = prev_end
        self.head = s
        self.woff = SH_SIZE
        self.end[s] = SECTOR
        self._closed = False
        self._ack_saved = self.acked
        if self.tail < 0:
            self.tail = s
            self.rsec, self.roff = s, SH_SIZE
        elif self.rsec == s or self.rsec < 0:
            self.rsec, self.roff = s, SH_SIZE

    def _drop(self, s):
        # The ring is full: the oldest sector goes. Records in it that were never stored are dropped (counted).
        nxt = (s + 1) % self.n
        end = self.base[nxt] if self.state[nxt] == ST_VALID else self.next_seq
        first = max(self.base[s], self.acked + 1)
        if end > first:
            self.dropped += end - first
        if self.acked < end - 1:
            self.acked = end - 1
        self.state[s] = ST_BAD  # not part of the ring any more
        if self.tail == s:
            self.tail = nxt
        if self.rsec == s:
            self.rsec, self.roff = nxt, SH_SIZE
            self._peeked = 0

    def _write(self, size):
        # Programs the record encoded at buf[:size] (padded) at the head; durable when this returns.
        step = self._pad(size)
        b = self.buf
        for i in range(size, step):
            b[i] = 0xFF
        if self._closed or self.woff + step > SECTOR:
            self._open_next()
        self.part.writeblocks(self.head, memoryview(b)[:step], self.woff)
        self.woff += step

    def reading(self, sensor_name, ts_ms, flags, channels, values):
        # Sink API (docs/architecture.md): log one reading, return its seq once it is on flash.
        n = len(channels)
        if sensor_name not in self.channels:
            self.channels[sensor_name] = tuple(channels)
        size = R.reading_size(sensor_name, n)
        if size > R.MAX_SIZE:
            raise ValueError("reading too large for a record: %d channels, name %r" % (n, sensor_name))
        seq = self.next_seq
        R.put_reading(self.buf, 0, seq, ts_ms, flags, sensor_name, values, n)
        self._write(size)
        return self._logged(seq)

    def event(self, ts_ms, flags, kind, label, score, model_id, action, sensor):
        # Sink API: log one event, return its seq once it is on flash.
        seq = self.next_seq
        size = R.put_event(self.buf, 0, seq, ts_ms, flags, kind, label, score, model_id, action, sensor)
        self._write(size)
        return self._logged(seq)

    def _logged(self, seq):
        self.next_seq = seq + 1
        self.durable = seq
        self.logged += 1
        if self.on_flush is not None:
            self.on_flush()
        return seq

    def ack(self, seq):
        # Everything up to seq is stored in the database (end-to-end ack): the flash below it may be reused.
        # Persisted at most every ack_persist_ms (and by close()): forgetting it only causes resends.
        if seq <= self.acked:
            return
        self.acked = seq
        if time.ticks_diff(self._ticks(), self._ack_t) >= self.ack_persist_ms:
            self.save_ack()

    def save_ack(self):
        # Writes an ack marker for the current stored mark, if it moved since the last one.
        if self.acked <= self._ack_saved:
            return
        R.put_ack(self.buf, 0, self.acked)
        self._write(R.MIN_SIZE)
        self._ack_saved = self.acked
        self._ack_t = self._ticks()

    def flush(self):
        # Nothing to do: every record is on flash when reading()/event() return. Kept for the `flush`
        # command (node.commands), which asks for the durable seq.
        return self.durable

    def close(self):
        # Clean shutdown: persist the stored mark.
        self.save_ack()

    def _erases_of(self, s):
        st, h = self._read_header(s)
        if st == ST_VALID:
            return h[5]
        return 0 if st == ST_ERASED else self._emax

    def erase_counts(self):
        # Erases per sector (from the sector headers), for the bench and `provision --inspect`.
        return [self._erases_of(s) for s in range(self.n)]

    # ---- reading (the publisher drains in seq order) ----

    _peeked = 0

    def peek(self):
        # Loads the next durable, unread record into rbuf; returns its length or 0 when there is none yet.
        # Ack markers are skipped; a bad record skips the rest of its sector (counted in `corrupt`).
        if self._peeked:
            return self._peeked
        while self.rsec >= 0:
            s = self.rsec
            limit = self.woff if s == self.head else self.end[s]
            ln = 0
            if self.roff + R.MIN_SIZE <= limit:
                ln = self._read_record(s, self.roff)
                if ln > 0 and self.roff + ln > limit:
                    ln = 0
            if ln > 0:
                if R.rtype(self.rbuf) == R.REC_ACK:
                    self.roff += self._pad(ln)
                    continue
                if self._recovered:
                    self.rbuf[1] |= FLAG_RECOVERED << 2  # the flags live above the type bits
                    self._recovered = False
                self._peeked = ln
                self._pnext = self.roff + self._pad(ln)
                return ln
            if ln < 0:
                self.corrupt += 1
                self._recovered = True
            if s == self.head:
                if ln < 0:
                    self.roff = limit
                return 0
            self.rsec, self.roff = self._next_sector(s), SH_SIZE
        return 0

    def skip(self):
        # Moves past the record returned by peek().
        if self._peeked:
            self.roff = self._pnext
            self._peeked = 0

    def _next_sector(self, s):
        n = self.n
        t = (s + 1) % n
        while t != self.head and self.state[t] != ST_VALID:
            t = (t + 1) % n
        return t

    def rewind(self):
        # Back to the first record above the stored mark (stored timeout, reconnect): it is sent again.
        self._peeked = 0
        if self.tail >= 0:
            self._seek_reader()

    def last_seq(self):
        return self.next_seq - 1

    def pending(self):
        # Records logged but not stored yet.
        return self.next_seq - 1 - self.acked
