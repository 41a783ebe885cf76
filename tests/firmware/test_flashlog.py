# The flash log on the simulated NOR chip: seq across remounts, power cuts at any byte, corruption, wrap-around.
import gc
import random
from array import array

from node import records as R
from node.flashlog import FLAG_RECOVERED, SECTOR, FlashLog
from node.sim.flash import PowerCut, SimFlash

NSECT = 8
VALS = array("f", [21.5, 40.0, 1013.0])
CH = ("temperature", "humidity", "pressure")


def _part(path, nsect=NSECT):
    fl = SimFlash(path, nsect * SECTOR)
    return fl, fl.partition(0, nsect * SECTOR)


def _drain(log, ack=False):
    # The seqs the reader delivers now (an array, the heap is a board's), and the flags of each.
    seqs = array("I")
    flags = bytearray()
    while log.peek():
        seq = R.header(log.rbuf)[3]
        seqs.append(seq)
        flags.append(log.rbuf[3])
        log.skip()
        if ack:
            log.ack(seq)
    return seqs, flags


def test_append_remount_seq_and_ack(flash_image):
    fl, p = _part(flash_image)
    log = FlashLog(p, flush_bytes=256)
    for i in range(100):
        assert log.reading("env", 1000 + i, 0, CH, VALS) == i + 1
    log.event(2000, 0, "class", "running", 0.9, "m-1", "relay:on", None)
    log.flush()
    seqs, _ = _drain(log)
    assert list(seqs) == list(range(1, 102)), seqs
    # Decoded event round-trips.
    log.ack(50)
    log.close()  # clean shutdown: seq continues without a gap
    fl.close()
    fl, p = _part(flash_image)
    log = FlashLog(p)
    assert log.clean and log.next_seq == 102, log.next_seq
    assert log.acked == 50, log.acked
    seqs, _ = _drain(log)
    assert list(seqs) == list(range(51, 102)), seqs
    assert R.decode_event(log.rbuf)[:2] == ("class", "running")
    assert log.reading("env", 1, 0, CH, VALS) == 102
    log.flush()
    fl.close()
    # Unclean (no close): the next seq skips the window a lost RAM batch could have used.
    fl, p = _part(flash_image)
    log = FlashLog(p)
    assert not log.clean
    assert log.next_seq == 103 + log.lost_window(), (log.next_seq, log.lost_window())
    fl.close()


def test_power_cut_at_random_bytes(flash_image):
    """Power lost at a random byte, 60 times in a row on the same chip: mount keeps everything flushed."""
    random.seed(7)
    fl, p = _part(flash_image)
    log = FlashLog(p, flush_bytes=256)
    for trial in range(60):
        fl.lose_power_after(random.getrandbits(12))  # 0..4095 bytes from now
        durable = log.durable
        appended = 0
        try:
            while True:
                log.reading("env", trial, 0, CH, VALS)
                appended += 1
                if log.blen == 0:
                    durable = log.durable
                if random.getrandbits(4) == 0:
                    log.ack(log.durable)
        except PowerCut:
            pass
        last_before_cut = log.next_seq - 1
        fl.close()
        fl, p = _part(flash_image)
        log = FlashLog(p, flush_bytes=256)
        # Everything flushed before the cut survived; at most the batch in RAM (+ the torn one) was lost.
        assert log.durable >= durable, (trial, log.durable, durable)
        lost = last_before_cut - log.durable
        window = 256 // R.reading_size("env", 3) + 1
        assert 0 <= lost <= window, (trial, lost, window)
        # The reader delivers increasing seqs ending at the last stored one; the only gaps are the windows
        # skipped after earlier cuts.
        seqs, _ = _drain(log)
        if seqs:
            for i in range(1, len(seqs)):
                assert 0 < seqs[i] - seqs[i - 1] <= log.lost_window() + 1, (seqs[i - 1], seqs[i])
            assert seqs[-1] == log.durable
        assert log.corrupt == 0, log.corrupt
        # No seq the node handed out before the cut is ever used again.
        assert log.next_seq > last_before_cut, (log.next_seq, last_before_cut)
        assert log.next_seq - log.durable - 1 == log.lost_window()
        # seq continues past the last stored value.
        assert log.reading("env", 0, 0, CH, VALS) == log.last_seq()
        log.flush()
    fl.close()


def test_corrupt_sector_skipped_counted_rest_delivered(flash_image):
    fl, p = _part(flash_image)
    log = FlashLog(p, flush_bytes=256)
    for i in range(300):  # 37-byte records: ~110 per sector, so sectors 0..2 are used
        log.reading("env", i, 0, CH, VALS)
    log.flush()
    first_of_1 = log.base[1]
    first_of_2 = log.base[2]
    fl.close()
    fl, p = _part(flash_image)
    # Clear bits in the middle of sector 1's records (what a worn or disturbed block looks like).
    fl.program(SECTOR + 1000, b"\x00\x00\x00")
    fl.close()
    fl, p = _part(flash_image)
    log = FlashLog(p)
    seqs, flags = _drain(log)
    seqs = list(seqs)
    assert log.corrupt == 1, log.corrupt
    assert list(seqs[: first_of_1 - 1]) == list(range(1, first_of_1)), seqs[:5]
    assert seqs[-1] == 300
    assert all(s in seqs for s in range(first_of_2, 301))
    lost = [s for s in range(1, 301) if s not in seqs]
    assert lost and min(lost) > first_of_1 and max(lost) < first_of_2, lost
    i = seqs.index(first_of_2)
    assert flags[i] & FLAG_RECOVERED, flags[i]
    assert not flags[0] & FLAG_RECOVERED
    # A corrupt sector header is detected too: that sector's records are skipped, the others delivered.
    fl.program(SECTOR + 4, b"\x00")
    fl.close()
    fl, p = _part(flash_image)
    log = FlashLog(p)
    assert log.corrupt >= 1
    seqs, _ = _drain(log)
    assert seqs[0] == 1 and seqs[-1] == 300, seqs
    seqs = list(seqs)
    assert first_of_1 not in seqs and first_of_2 in seqs
    fl.close()
    del seqs, flags, lost, log
    gc.collect()
    # Even the head's header corrupted: its records are lost but their seqs are never reused.
    fl, p = _part(flash_image + "2")
    log = FlashLog(p)
    for i in range(300):
        log.reading("env", i, 0, CH, VALS)
    log.flush()
    fl.program(2 * SECTOR + 4, b"\x00")
    fl.close()
    fl, p = _part(flash_image + "2")
    log = FlashLog(p)
    assert log.next_seq == 301 + log.lost_window() and log.corrupt == 1, (log.next_seq, log.corrupt)
    fl.close()


def test_full_log_drops_oldest_and_counts(flash_image):
    fl, p = _part(flash_image, 4)
    log = FlashLog(p, flush_bytes=256)
    n = 1000  # ~9 sectors worth into 4
    for i in range(n):
        log.reading("env", i, 0, CH, VALS)
    log.close()
    first, count = _span(log)
    assert first + count - 1 == n, (first, count)
    assert log.dropped == first - 1, (log.dropped, first)
    assert fl.erased >= 9
    fl.close()
    fl, p = _part(flash_image, 4)
    log = FlashLog(p)
    assert log.next_seq == n + 1
    assert _span(log) == (first, count)
    fl.close()


def _span(log):
    # (first seq, count) of what the reader delivers, checking there is no gap.
    first = prev = -1
    count = 0
    while log.peek():
        seq = R.header(log.rbuf)[3]
        if first < 0:
            first = seq
        else:
            assert seq == prev + 1, (prev, seq)
        prev = seq
        count += 1
        log.skip()
    return first, count


def test_event_strings_bounded_and_oversized_reading_refused(flash_image):
    fl, p = _part(flash_image)
    log = FlashLog(p)
    seq = log.event(1, 0, "anomaly" * 5, "x" * 100, 0.5, "m" * 200, "relay:on" * 20, "imu" * 10)
    log.flush()
    assert log.peek() and R.header(log.rbuf)[3] == seq
    kind, label, score, model, action, sensor = R.decode_event(log.rbuf)
    assert (len(kind), len(label), len(model), len(action), len(sensor)) == (16, 32, 64, 64, 16)
    assert label == "x" * 32 and 0.49 < score < 0.51
    big = array("f", [0.0] * 60)
    try:
        log.reading("env", 1, 0, ["c"] * 60, big)
    except ValueError:
        pass
    else:
        raise AssertionError("a reading larger than a record must be refused")
    assert log.next_seq == seq + 1  # the refused reading took no seq
    fl.close()
