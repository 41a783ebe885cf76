# Mounting the flash log (node.flashlog, whose header describes the layout): finds the head, the ring's tail,
# the stored mark, the log id and where writing continues; counts torn writes and corruption. Imported by
# FlashLog.mount() for the boot and released after it (a function per step, `self` is the FlashLog).
#
# It does not import node.flashlog (which imports it): the sector format it needs is repeated here as private
# constants, compiled into the code (a shared module would cost the running node heap for names only the boot
# uses); tests/firmware/test_firmware_layout.py checks that they equal node.flashlog's.
import os

from micropython import const

from node import records as R

_SECTOR = const(4096)
_SH_SIZE = const(32)
_ST_ERASED = const(0)
_ST_VALID = const(1)
_ST_BAD = const(2)
_ST_STALE = const(3)  # a valid header of another log (not part of this ring); only mount sets it


def _new_log_id():
    # A fresh log's id, written in every sector header; chosen when mount formats the log.
    b = os.urandom(4)
    v = b[0] | (b[1] << 8) | (b[2] << 16) | ((b[3] & 0x7F) << 24)  # small int on a 32-bit port
    return v or 1


def mount(self):
    n = self.n
    self.head = -1
    self.acked = 0
    self.log_id = 0
    best = -1
    bad = []
    heads = [None] * n
    for s in range(n):
        st, h = self._read_header(s)
        self.state[s] = st
        if st == _ST_VALID:
            heads[s] = h
            if h[5] > self._emax:
                self._emax = h[5]
            if best < 0 or h[0] > best:
                best = h[0]
                self.head = s
        elif st == _ST_BAD:
            bad.append(s)
    if self.head < 0:
        # A blank or unreadable log: format it, i.e. a new log id in the first sector's header.
        self.corrupt += len(bad)
        self.log_id = _new_log_id()
        self.formatted = True
        self.counter = 0
        self.clean = True
        self.next_seq = 1
        self.durable = 0
        self.woff = _SH_SIZE
        self.tail = -1
        self.rsec, self.roff = -1, 0
        if self.readonly:
            self.log_id = 0
            self.formatted = False
        else:
            self._open_next()
        return
    self.log_id = heads[self.head][4]
    self.acked = heads[self.head][2]
    for s in range(n):
        h = heads[s]
        if h is None:
            continue
        if h[4] != self.log_id:
            self.state[s] = _ST_STALE
            continue
        self.cnt[s] = h[0]
        self.base[s] = h[1]
        self.end[(s - 1) % n] = h[3]
    heads = None
    self.counter = best
    for s in range(n):
        # prev_end is only meaningful when the previous sector is the one opened just before.
        p = (s - 1) % n
        if self.state[s] != _ST_VALID or self.state[p] != _ST_VALID or self.cnt[p] + 1 != self.cnt[s]:
            self.end[p] = _SECTOR
    _scan_head(self)
    for s in bad:
        # A bad header right after the head is a header write torn by a power cut, unless records follow
        # it: then it was the head and its header got corrupted. Its records cannot be placed in the ring,
        # but their seqs must never be used again.
        if s == (self.head + 1) % n:
            last = _last_seq_in(self, s)
            if last < 0:
                self.torn += 1
                continue
            if last >= self.next_seq:
                self.next_seq = last + 1
                self.durable = last
        self.corrupt += 1
    # Tail: walk back from the head while sectors are valid with decreasing counters.
    t = self.head
    while True:
        p = (t - 1) % n
        if p == self.head or self.state[p] != _ST_VALID or self.cnt[p] >= self.cnt[t]:
            # Skip one bad sector inside the ring (it may be corruption between two valid sectors).
            if self.state[p] == _ST_BAD:
                pp = (p - 1) % n
                if pp != self.head and self.state[pp] == _ST_VALID and self.cnt[pp] < self.cnt[t]:
                    t = pp
                    continue
            break
        t = p
    self.tail = t
    if self.base[t] > self.acked + 1:
        # Unstored records before the oldest sector still in the ring (a sector erased or unreadable in
        # between): lost to corruption. Counted, and the next record delivered carries flag 4.
        self.corrupt += 1
        self._recovered = True
    self._ack_saved = self.acked
    self._seek_reader()

def _scan_head(self):
    # Finds the durable end of the head sector, the last seq and the newest ack marker.
    s = self.head
    off = _SH_SIZE
    last = self.base[s] - 1
    rb = self.rbuf
    while off + R.MIN_SIZE <= _SECTOR:
        ln = self._read_record(s, off)
        if ln <= 0:
            break
        _, typ, _, seq, _ = R.header(rb)
        if typ >= R.REC_ACK:
            if seq > self.acked:
                self.acked = seq
        else:
            last = seq
        off += self._pad(ln)
    self.durable = last
    self.woff = off
    self.clean = True
    # Anything but erased bytes after the last good record is a torn write: never program over it.
    if not _erased_from(self, s, off):
        self.torn += 1
        self._closed = True
        self.clean = False
    self.end[s] = off
    self.next_seq = last + 1

def _last_seq_in(self, s):
    off = _SH_SIZE
    last = -1
    while True:
        ln = self._read_record(s, off)
        if ln <= 0:
            return last
        if R.rtype(self.rbuf) != R.REC_ACK:
            last = R.header(self.rbuf)[3]
        off += self._pad(ln)

def _erased_from(self, s, off):
    sc = self._scan
    while off < _SECTOR:
        k = min(len(sc), _SECTOR - off)
        mv = memoryview(sc)[:k]
        self.part.readblocks(s, mv, off)
        if not R.all_erased(sc, 0, k):
            return False
        off += k
    return True

