# The flash log on the simulated NOR chip: per-record durability, seq and log id across remounts, power cuts
# at any byte (at most the record being written is lost), corruption, wrap-around, wear levelling.
import gc
import random
from array import array

from node import records as R
from node.flashlog import FLAG_RECOVERED, POWER_CUT_LOSS, SECTOR, FlashLog
from simboard.flash import PowerCut, SimFlash

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
        flags.append(R.header(log.rbuf)[2])
        log.skip()
        if ack:
            log.ack(seq)
    return seqs, flags


def test_append_remount_seq_log_id_and_ack(flash_image):
    fl, p = _part(flash_image)
    log = FlashLog(p, ack_persist_ms=0)
    assert log.formatted and len(log.log) == 8 and int(log.log, 16) > 0, log.log
    lid = log.log
    for i in range(100):
        assert log.reading("env", 1000 + i, 0, CH, VALS) == i + 1
    log.event(2000, 0, "class", "running", 0.9, "m-1", "relay:on", None)
    seqs, _ = _drain(log)  # durable without any flush
    assert list(seqs) == list(range(1, 102)), seqs
    log.ack(50)
    fl.close()  # no close(): every record and the stored mark (ack_persist_ms=0) are already on flash
    fl, p = _part(flash_image)
    log = FlashLog(p)
    assert not log.formatted and log.log == lid, (log.log, lid)
    assert log.next_seq == 102 and log.acked == 50, (log.next_seq, log.acked)
    seqs, _ = _drain(log)
    assert list(seqs) == list(range(51, 102)), seqs
    assert R.decode_event(log.rbuf)[:2] == ("class", "running")
    assert log.reading("env", 1, 0, CH, VALS) == 102
    fl.close()
    # Erasing the log (or a new board) formats a new log with a new id; seq restarts at 1.
    fl, p = _part(flash_image)
    for s in range(NSECT):
        fl.erase_block(s)
    log = FlashLog(p)
    assert log.formatted and log.log != lid and log.next_seq == 1, (log.log, lid)
    fl.close()


def test_stored_mark_persisted_lazily(flash_image):
    t = [0]
    fl, p = _part(flash_image)
    log = FlashLog(p, ack_persist_ms=30000, ticks_ms=lambda: t[0])
    for i in range(20):
        log.reading("env", i, 0, CH, VALS)
    t[0] = 1000
    log.ack(10)  # within 30 s of the last marker: RAM only
    prog = fl.programmed
    log.ack(12)
    assert fl.programmed == prog
    t[0] = 31000
    log.ack(15)  # due: one marker
    assert fl.programmed == prog + R.MIN_SIZE, fl.programmed - prog
    log.ack(18)
    fl.close()
    fl, p = _part(flash_image)
    log = FlashLog(p)
    assert log.acked == 15, log.acked  # 18 was not persisted: 16..18 are sent again (duplicates, not loss)
    log.ack(18)
    log.close()
    fl.close()
    fl, p = _part(flash_image)
    assert FlashLog(p).acked == 18
    fl.close()


def _cut_trials(flash_image, align, trials):
    random.seed(7 + align)
    fl, p = _part(flash_image)
    log = FlashLog(p, align=align, ack_persist_ms=0)
    lid = log.log
    for trial in range(trials):
        fl.lose_power_after(random.getrandbits(12))  # 0..4095 bytes from now
        returned = log.durable  # the last seq reading() returned
        try:
            while True:
                if random.getrandbits(3) == 0:
                    log.event(trial, 0, "class", "läuft", 0.5, "m", None, None)
                else:
                    log.reading("env", trial, 0, CH, VALS)
                returned = log.durable
                if random.getrandbits(4) == 0:
                    log.ack(log.durable - 3)
        except PowerCut:
            pass
        fl.close()
        fl, p = _part(flash_image)
        log = FlashLog(p, align=align, ack_persist_ms=0)
        assert log.log == lid
        # Every record whose reading() returned survived: a cut loses at most the one being programmed (which
        # survives when the cut hit only its padding).
        assert returned <= log.durable <= returned + 1, (trial, log.durable, returned)
        assert log.next_seq == log.durable + 1
        seqs, _ = _drain(log)
        for i in range(1, len(seqs)):
            assert seqs[i] == seqs[i - 1] + 1, (trial, seqs[i - 1], seqs[i])
        if seqs:
            assert seqs[-1] == log.durable
        assert log.corrupt == 0, log.corrupt
        log.ack(log.durable)
    fl.close()


def test_power_cut_at_random_bytes_loses_at_most_the_record_being_written(flash_image):
    """Power lost at a random byte, 60 times on the same chip: every returned record survives, no seq gap."""
    assert POWER_CUT_LOSS == 1
    _cut_trials(flash_image, 1, 40)


def test_power_cut_16_byte_aligned_records(flash_image):
    _cut_trials(flash_image, 16, 25)
    fl, p = _part(flash_image)
    log = FlashLog(p, align=16)
    assert log.woff % 16 == 0 and log.rbuf is not None
    fl.close()


def test_corrupt_sector_skipped_counted_rest_delivered(flash_image):
    fl, p = _part(flash_image)
    log = FlashLog(p)
    for i in range(300):  # 32-byte records: ~126 per sector, so sectors 0..2 are used
        log.reading("env", i, 0, CH, VALS)
    first_of_1 = log.base[1]
    first_of_2 = log.base[2]
    fl.close()
    fl, p = _part(flash_image)
    # Clear bits in the middle of sector 1's records (what a worn or disturbed block looks like).
    fl.program(SECTOR + 1010, b"\x00\x00\x00")
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
    lid = log.log
    fl.program(2 * SECTOR + 4, b"\x00")
    fl.close()
    fl, p = _part(flash_image + "2")
    log = FlashLog(p)
    assert log.next_seq == 301 and log.corrupt == 1 and log.log == lid, (log.next_seq, log.corrupt)
    fl.close()


def test_full_log_drops_oldest_counts_and_levels_wear(flash_image):
    fl, p = _part(flash_image, 4)
    log = FlashLog(p)
    n = 1200  # ~9.5 sectors worth into 4
    for i in range(n):
        log.reading("env", i, 0, CH, VALS)
    log.close()
    first, count = _span(log)
    assert first + count - 1 == n, (first, count)
    assert log.dropped == first - 1, (log.dropped, first)
    assert fl.erased >= 9
    ec = log.erase_counts()
    assert max(ec) - min(ec) <= 1 and sum(ec) == fl.erased, (ec, fl.erased)
    fl.close()
    fl, p = _part(flash_image, 4)
    log = FlashLog(p)
    assert log.next_seq == n + 1
    assert _span(log) == (first, count)
    assert log.erase_counts() == ec, (log.erase_counts(), ec)
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


def test_event_strings_bounded_in_bytes_and_oversized_reading_refused(flash_image):
    fl, p = _part(flash_image)
    log = FlashLog(p)
    seq = log.event(1, 0, "anomaly" * 5, "x" * 100, 0.5, "m" * 200, "relay:on" * 20, "imu" * 10)
    assert log.peek() and R.header(log.rbuf)[3] == seq
    kind, label, score, model, action, sensor = R.decode_event(log.rbuf)
    assert (len(kind), len(label), len(model), len(action), len(sensor)) == (16, 32, 64, 64, 16)
    assert label == "x" * 32 and 0.49 < score < 0.51
    log.skip()
    # UTF-8: bounded by bytes, cut at a character boundary (40 "ä" = 80 bytes > 64: 32 characters kept).
    log.event(1, 0, "class", "läuft", float("nan"), "m", "ä" * 40, None)
    assert log.peek()
    kind, label, score, model, action, sensor = R.decode_event(log.rbuf)
    assert label == "läuft", label
    assert action == "ä" * 32, (len(action), action)
    assert score == 0.0
    log.skip()
    log.event(1, 0, "class", "ü" * 40, float("inf"), "m", None, None)
    assert log.peek()
    kind, label, score, model, action, sensor = R.decode_event(log.rbuf)
    assert label == "ü" * 16 and score > 3e38 and score == score, (label, score)
    big = array("f", [0.0] * 60)
    try:
        log.reading("env", 1, 0, ["c"] * 60, big)
    except ValueError:
        pass
    else:
        raise AssertionError("a reading larger than a record must be refused")
    fl.close()

