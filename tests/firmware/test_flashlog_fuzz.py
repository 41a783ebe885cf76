# Fuzzing flash images (issue 10 item 3, node part): random damage to a written log -> the log mounts,
# counts corruption, delivers increasing seqs, takes new records, and never raises or hangs. A boot mounts
# the log before anything else can run, so a log that always mounts is a node that never boot-loops on its
# flash. Hypothesis-style on MicroPython: many seeded random cases, each damage kind drawn at random.
import random
import time

from node import records as R
from node.flashlog import SECTOR, FlashLog
from simboard.flash import SimFlash
from array import array

NSECT = 12
CASES = 300
VALS = array("f", [21.5, 40.0, 1013.0])
CH = ("temperature", "humidity", "pressure")
MOUNT_MS = 3000  # bounded: a mount + full drain of a damaged 48 KB log


def _pristine(path):
    fl = SimFlash(path, NSECT * SECTOR)
    log = FlashLog(fl.partition(0, NSECT * SECTOR), ack_persist_ms=0)
    for i in range(900):  # ~8 sectors, with some wrap room left
        if i % 50 == 0:
            log.event(i, 0, "class", "läuft", 0.5, "m", "relay:on", None)
        else:
            log.reading("env", i, 0, CH, VALS)
        if i % 97 == 0:
            log.ack(log.durable - 40)
    fl.close()


def _copy(src, dst):
    buf = bytearray(SECTOR)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while fi.readinto(buf):
            fo.write(buf)


def _damage(path, rnd):
    # One to three hits of a random kind; returns their names (for the failure message).
    kinds = []
    with open(path, "r+b") as f:
        for _ in range(1 + rnd.getrandbits(2) % 3):
            k = rnd.getrandbits(3) % 6
            s = rnd.getrandbits(8) % NSECT
            if k == 0:  # bits cleared here and there (worn cells)
                for _ in range(1 + rnd.getrandbits(4)):
                    off = s * SECTOR + rnd.getrandbits(12)
                    f.seek(off)
                    b = f.read(1)[0]
                    f.seek(off)
                    f.write(bytes([b & ~(1 << (rnd.getrandbits(3)))]))
            elif k == 1:  # random bytes over a random range
                off = s * SECTOR + rnd.getrandbits(12)
                n = min(1 + rnd.getrandbits(7), NSECT * SECTOR - off)
                f.seek(off)
                f.write(bytes(rnd.getrandbits(8) for _ in range(n)))
            elif k == 2:  # a whole sector of noise
                f.seek(s * SECTOR)
                f.write(bytes(rnd.getrandbits(8) for _ in range(SECTOR)))
            elif k == 3:  # a sector erased (an interrupted erase, or a stale block)
                f.seek(s * SECTOR)
                f.write(b"\xff" * SECTOR)
            elif k == 4:  # a header zeroed
                f.seek(s * SECTOR)
                f.write(b"\x00" * 32)
            else:  # a record length field pointing anywhere
                off = s * SECTOR + 32 + rnd.getrandbits(11)
                f.seek(off)
                f.write(bytes([rnd.getrandbits(8), rnd.getrandbits(8)]))
            kinds.append((k, s))
    return kinds


def _mount_drain(path, known_bad=False):
    # known_bad: an earlier mount of this image already counted corruption (a loss is counted once, at the
    # boot that finds it; the sector may have been reused since).
    fl = SimFlash(path, NSECT * SECTOR)
    log = FlashLog(fl.partition(0, NSECT * SECTOR), ack_persist_ms=0)
    prev = 0
    n = 0
    first = log.acked
    while log.peek():
        seq = R.header(log.rbuf)[3]
        assert seq > prev, (prev, seq)
        # Without corruption counted, every record above the stored mark is delivered, no gap.
        assert known_bad or log.corrupt or log.torn or seq == (prev or first) + 1, (prev, first, seq, log.corrupt)
        prev = seq
        if R.rtype(log.rbuf) == R.REC_EVENT:
            R.decode_event(log.rbuf)
        else:
            R.reading_name(log.rbuf)
        log.skip()
        n += 1
        assert n < 5000
    return fl, log, prev


def test_random_flash_damage_never_crashes_or_hangs(flash_image):
    src = flash_image + ".pristine"
    _pristine(src)
    rnd = random.Random(11) if hasattr(random, "Random") else None
    if rnd is None:
        random.seed(11)
        rnd = random
    worst = 0
    counted = 0
    for case in range(CASES):
        _copy(src, flash_image)
        kinds = _damage(flash_image, rnd)
        t0 = time.ticks_ms()
        try:
            fl, log, last = _mount_drain(flash_image)
            # The damaged log still takes records, and they survive a remount.
            seq = 0
            for i in range(5):
                seq = log.reading("env", i, 0, CH, VALS)
            assert seq > last, (seq, last)
            lid = log.log
            bad = log.corrupt or log.torn
            fl.close()
            fl, log, last2 = _mount_drain(flash_image, bad)
            assert log.log == lid or log.formatted, (lid, log.log)
            assert log.next_seq == seq + 1 or log.corrupt, (log.next_seq, seq)
            fl.close()
        except Exception as e:
            raise AssertionError("case %d, damage %r: %r" % (case, kinds, e))
        dt = time.ticks_diff(time.ticks_ms(), t0)
        worst = max(worst, dt)
        assert dt < MOUNT_MS, (case, kinds, dt)
        if bad:
            counted += 1
    print("fuzz: %d damaged images, %d with corruption counted, slowest mount+drain %d ms" % (CASES, counted, worst))
    assert counted > CASES // 3, counted
