# Durable append-only log of records on the board's raw `log` partition: a circular log of 4 KB sectors.
#
# Layout (docs/firmware.md has the full description):
#   sector = header (24 bytes) | records (records.py) ... | erased tail (0xFF)
#   header = u32 magic "EFL1" | u32 counter (grows by 1 per opened sector) | u32 seq_base (seq of the first
#            record in the sector) | u32 acked (acknowledged seq when the sector was opened) | u32 prev_end
#            (where the valid data of the previous sector ends) | u32 crc32
# Sectors are used in physical order, wrapping around; the newest (head) has the highest counter.
#
# Why it looks like this:
# - NOR flash can only clear bits, so nothing is ever rewritten in place: records and "acked up to seq N"
#   markers are appended; a sector is erased as a whole when the ring wraps onto it.
# - Records are batched in RAM and programmed when `flush_bytes` are pending or `flush_ms` after the first
#   pending record, whichever comes first. Each byte is programmed once, so write amplification stays near 1
#   (littlefs append+flush per record measured 53x). The price: a power cut loses the unflushed batch.
# - seq needs no flash write of its own: on mount it follows the last valid record of the head sector (or
#   the head's seq_base - 1). After a clean shutdown (close(): flush + a close marker) the next seq is the
#   next one. After a power cut the records of the lost RAM batch had seqs too, and the sampler may have
#   used them (events): so the next seq skips `lost_window()` values, the most a batch can hold. seq is
#   thus never reused, and a crash shows at the collector as a gap of at most that many seqs.
# - A torn write (power cut) leaves a record with a bad CRC at the end of the head sector: mount keeps
#   everything before it and continues in a fresh sector. A bad record anywhere else is corruption: the rest
#   of that sector is skipped and counted (`corrupt`), the next record delivered carries flag 4.
import time
from array import array

from micropython import const

from node import records as R

SECTOR = const(4096)
SH_SIZE = const(24)
MAGIC = const(0x314C4645)  # b"EFL1" little-endian
_SH = "<IIIII"
_ERASED = const(0)
_VALID = const(1)
_BAD = const(2)
_IOCTL_BLOCK_COUNT = const(4)
_IOCTL_BLOCK_SIZE = const(5)
_IOCTL_BLOCK_ERASE = const(6)
FLAG_RECOVERED = const(4)

FLUSH_BYTES = const(256)
FLUSH_MS = const(5000)


class LogError(Exception):
    pass


class FlashLog:
    def __init__(self, part, flush_bytes=FLUSH_BYTES, flush_ms=FLUSH_MS, ticks_ms=time.ticks_ms):
        if part.ioctl(_IOCTL_BLOCK_SIZE, 0) != SECTOR:
            raise LogError("log partition block size must be 4096")
        self.part = part
        self.n = part.ioctl(_IOCTL_BLOCK_COUNT, 0)
        if self.n < 3:
            raise LogError("log partition needs at least 3 sectors")
        self.flush_bytes = flush_bytes
        self.flush_ms = flush_ms
        self._ticks = ticks_ms
        self.tab = R.crc_table()
        self.buf = bytearray(flush_bytes + R.MAX_SIZE)  # pending records, not yet programmed
        self.blen = 0
        self._bt0 = 0  # ticks when the first pending record arrived
        self._ackpos = -1  # offset in buf of a pending ack marker, updated in place
        self.rbuf = bytearray(R.MAX_SIZE)  # the record the reader looks at
        self._sh = bytearray(SH_SIZE)
        self._scan = bytearray(256)
        self.cnt = array("I", [0] * self.n)
        self.base = array("I", [0] * self.n)
        self.state = bytearray(self.n)
        self.end = array("H", [SECTOR] * self.n)  # end of valid data per sector (from the next one's header)
        self._closed = False  # the head has a torn tail: never program it again
        # Counters since boot (status), plus what mount found.
        self.logged = 0
        self.dropped = 0
        self.corrupt = 0
        self.torn = 0
        self.channels = {}  # sensor name -> channel names, registered by the app / first reading
        self._recovered = False
        self.on_flush = None  # callback when new records became durable (wakes the publisher)
        self.mount()

    # ---- mount ----

    def _read_header(self, s):
        sh = self._sh
        self.part.readblocks(s, sh, 0)
        if R.all_erased(sh, 0, SH_SIZE):
            return _ERASED, None
        magic, cnt, base, acked, prev_end = R.struct.unpack_from(_SH, sh, 0)
        if magic != MAGIC or not R.crc_check(sh, 0, SH_SIZE - 4, self.tab):
            return _BAD, None
        return _VALID, (cnt, base, acked, prev_end)

    def mount(self):
        n = self.n
        self.head = -1
        self.acked = 0
        best = -1
        bad = []
        for s in range(n):
            st, h = self._read_header(s)
            self.state[s] = st
            if st == _VALID:
                self.cnt[s] = h[0]
                self.base[s] = h[1]
                self.end[(s - 1) % n] = h[3]
                if best < 0 or h[0] > best:
                    best = h[0]
                    self.head = s
                    self.acked = h[2]
            elif st == _BAD:
                bad.append(s)
        if self.head < 0:
            self.counter = 0
            self.clean = True
            self.next_seq = 1
            self.durable = 0
            self.woff = SH_SIZE
            self._closed = True  # forces opening a sector on the first append
            self.corrupt += len(bad)
            self.tail = -1
            self.rsec, self.roff = -1, 0
            return
        self.counter = best
        for s in range(n):
            # prev_end is only meaningful when the previous sector is the one opened just before.
            p = (s - 1) % n
            if self.state[s] != _VALID or self.state[p] != _VALID or self.cnt[p] + 1 != self.cnt[s]:
                self.end[p] = SECTOR
        self._scan_head()
        for s in bad:
            # A bad header right after the head is a header write torn by a power cut, unless records follow
            # it: then it was the head and its header got corrupted. Its records cannot be placed in the ring,
            # but their seqs must never be used again.
            if s == (self.head + 1) % n:
                last = self._last_seq_in(s)
                if last < 0:
                    self.torn += 1
                    continue
                if last >= self.next_seq:
                    self.next_seq = last + 1 + self.lost_window()
                    self.durable = last
            self.corrupt += 1
        # Tail: walk back from the head while sectors are valid with decreasing counters.
        t = self.head
        while True:
            p = (t - 1) % n
            if p == self.head or self.state[p] != _VALID or self.cnt[p] >= self.cnt[t]:
                # Skip one bad sector inside the ring (it may be corruption between two valid sectors).
                if self.state[p] == _BAD:
                    pp = (p - 1) % n
                    if pp != self.head and self.state[pp] == _VALID and self.cnt[pp] < self.cnt[t]:
                        t = pp
                        continue
                break
            t = p
        self.tail = t
        self._seek_reader()

    def _scan_head(self):
        # Finds the durable end of the head sector, the last seq and the newest ack marker.
        s = self.head
        off = SH_SIZE
        last = self.base[s] - 1
        rb = self.rbuf
        clean = False
        while off + R.MIN_SIZE <= SECTOR:
            ln = self._read_record(s, off)
            if ln <= 0:
                break
            _, typ, _, seq, _ = R.header(rb)
            if typ == R.REC_ACK:
                if seq > self.acked:
                    self.acked = seq
            elif typ == R.REC_CLOSE:
                clean = True
                off += ln
                continue
            else:
                last = seq
            clean = False
            off += ln
        self.durable = last
        self.woff = off
        # Anything but erased bytes after the last good record is a torn write: never program over it.
        if not self._erased_from(s, off):
            self.torn += 1
            self._closed = True
            clean = False
        self.end[s] = off
        self.clean = clean
        self.next_seq = last + 1 if clean else last + 1 + self.lost_window()

    def _last_seq_in(self, s):
        off = SH_SIZE
        last = -1
        while True:
            ln = self._read_record(s, off)
            if ln <= 0:
                return last
            if self.rbuf[2] < R.REC_ACK:
                last = R.header(self.rbuf)[3]
            off += ln

    def _erased_from(self, s, off):
        sc = self._scan
        while off < SECTOR:
            k = min(len(sc), SECTOR - off)
            mv = memoryview(sc)[:k]
            self.part.readblocks(s, mv, off)
            if not R.all_erased(sc, 0, k):
                return False
            off += k
        return True

    def _read_record(self, s, off):
        # Reads the record at (s, off) into rbuf. >0: its length; 0: end of data; -1: bad record.
        if off + R.MIN_SIZE > SECTOR:
            return 0
        rb = self.rbuf
        mv = memoryview(rb)
        self.part.readblocks(s, mv[:R.HDR_SIZE], off)
        ln = rb[0] | (rb[1] << 8)
        if ln == 0xFFFF:
            return 0
        if ln < R.MIN_SIZE or ln > R.MAX_SIZE or off + ln > SECTOR:
            return -1
        self.part.readblocks(s, mv[R.HDR_SIZE:ln], off + R.HDR_SIZE)
        if not R.crc_check(rb, 0, ln - R.CRC_SIZE, self.tab):
            return -1
        return ln

    def _seek_reader(self):
        # Reader starts at the first record after the acknowledged seq.
        want = self.acked + 1
        s = self.tail
        best = self.tail
        while True:
            if self.state[s] == _VALID and self.base[s] <= want:
                best = s
            if s == self.head:
                break
            s = (s + 1) % self.n
        self.rsec, self.roff = best, SH_SIZE
        while True:
            ln = self.peek()
            if ln <= 0:
                return
            if R.header(self.rbuf)[3] >= want:
                return
            self.skip()

    # ---- writing ----

    def _program(self, s, off, data):
        self.part.writeblocks(s, data, off)

    def _open_next(self):
        n = self.n
        s = 0 if self.head < 0 else (self.head + 1) % n
        if self.state[s] == _VALID:
            self._drop(s)
        self.part.ioctl(_IOCTL_BLOCK_ERASE, s)
        self.counter += 1
        sh = self._sh
        prev_end = self.woff if self.head >= 0 else SECTOR
        R.struct.pack_into(_SH, sh, 0, MAGIC, self.counter, self.next_seq, self.acked, prev_end)
        R.crc_seal(sh, 0, SH_SIZE - 4, self.tab)
        self.state[s] = _ERASED
        self._program(s, 0, sh)
        self.state[s] = _VALID
        self.cnt[s] = self.counter
        self.base[s] = self.next_seq
        if self.head >= 0:
            self.end[self.head] = prev_end
        self.head = s
        self.woff = SH_SIZE
        self.end[s] = SECTOR
        self._closed = False
        if self.tail < 0:
            self.tail = s
            self.rsec, self.roff = s, SH_SIZE
        elif self.rsec == s or self.rsec < 0:
            self.rsec, self.roff = s, SH_SIZE

    def _drop(self, s):
        # The ring is full: the oldest sector goes. Records in it that were never acknowledged are dropped.
        nxt = (s + 1) % self.n
        end = self.base[nxt] if self.state[nxt] == _VALID else self.next_seq
        first = max(self.base[s], self.acked + 1)
        if end > first:
            self.dropped += end - first
        if self.acked < end - 1:
            self.acked = end - 1
        self.state[s] = _BAD  # not part of the ring any more
        if self.tail == s:
            self.tail = nxt
        if self.rsec == s:
            self.rsec, self.roff = nxt, SH_SIZE
            self._peeked = 0

    def _reserve(self, size):
        # Makes room for `size` bytes in the RAM batch, flushing/opening a sector as needed; returns offset.
        if self._closed or self.woff + self.blen + size > SECTOR:
            self.flush()
            self._open_next()
        if self.blen == 0:
            self._bt0 = self._ticks()
        return self.blen

    def _appended(self, size):
        self.blen += size
        if self.blen >= self.flush_bytes:
            self.flush()

    def reading(self, sensor_name, ts_ms, flags, channels, values):
        # Sink API (docs/architecture.md): log one reading, return its seq.
        n = len(channels)
        if sensor_name not in self.channels:
            self.channels[sensor_name] = tuple(channels)
        size = R.reading_size(sensor_name, n)
        if size > R.MAX_SIZE:
            raise ValueError("reading too large for a record: %d channels, name %r" % (n, sensor_name))
        off = self._reserve(size)
        seq = self.next_seq
        R.put_reading(self.buf, off, self.tab, seq, ts_ms, flags, sensor_name, values, n)
        self._ackpos = -1
        self.next_seq = seq + 1
        self.logged += 1
        self._appended(size)
        return seq

    def event(self, ts_ms, flags, kind, label, score, model_id, action, sensor):
        # Sink API: log one event, return its seq.
        seq = self.next_seq
        off = self._reserve(R.MAX_SIZE)
        size = R.put_event(self.buf, off, self.tab, seq, ts_ms, flags, kind, label, score, model_id, action, sensor)
        self._ackpos = -1
        self.next_seq = seq + 1
        self.logged += 1
        self._appended(size)
        return seq

    def ack(self, seq):
        # The broker acknowledged every record up to seq: persist that with the next flush (an ack marker;
        # consecutive acks rewrite the same pending marker, so a burst of PUBACKs costs 20 bytes of flash).
        if seq <= self.acked:
            return
        self.acked = seq
        if self._ackpos >= 0:
            R.put_ack(self.buf, self._ackpos, self.tab, seq)
            return
        off = self._reserve(R.MIN_SIZE)
        R.put_ack(self.buf, off, self.tab, seq)
        self._ackpos = off
        self._appended(R.MIN_SIZE)

    def flush(self):
        # Programs the pending batch; afterwards its records are durable and visible to the reader.
        if self.blen == 0:
            return
        if self.head < 0 or self._closed or self.woff + self.blen > SECTOR:
            self._open_next()
        self._program(self.head, self.woff, memoryview(self.buf)[: self.blen])
        self.woff += self.blen
        self.blen = 0
        self.durable = self.next_seq - 1
        if self.on_flush is not None:
            self.on_flush()
        self._ackpos = -1

    def lost_window(self):
        # The most records a power cut can lose: those in the RAM batch (flush at flush_bytes).
        return self.flush_bytes // R.MIN_DATA_SIZE + 1

    def close(self):
        # Clean shutdown: flush and mark it, so the next mount continues seq without a gap.
        if self.head < 0 and self.blen == 0:
            return
        off = self._reserve(R.MIN_SIZE)
        R.put_ack(self.buf, off, self.tab, self.next_seq - 1, R.REC_CLOSE)
        self._ackpos = -1
        self.blen += R.MIN_SIZE
        self.flush()

    def flush_due(self):
        return self.blen > 0 and time.ticks_diff(self._ticks(), self._bt0) >= self.flush_ms

    def pending_bytes(self):
        return self.blen

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
                if self.rbuf[2] >= R.REC_ACK:
                    self.roff += ln
                    continue
                if self._recovered:
                    self.rbuf[3] |= FLAG_RECOVERED
                    self._recovered = False
                self._peeked = ln
                self._pnext = self.roff + ln
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
        while t != self.head and self.state[t] != _VALID:
            t = (t + 1) % n
        return t

    def rewind(self):
        # Back to the first unacknowledged record (after a reconnect that lost in-flight messages).
        self._peeked = 0
        if self.tail >= 0:
            self._seek_reader()

    def last_seq(self):
        return self.next_seq - 1

    def pending(self):
        # Records logged but not acknowledged (unflushed ones included).
        return self.next_seq - 1 - self.acked
