# Binary record format of the flash log (readings, events, ack markers), encoded into preallocated buffers.
#
# Record, little-endian:  u8 len | u8 type (bits 0-1) + flags << 2 | u32 seq | 6-byte ts_ms | payload | u32 crc32
# (len counts the whole record, at most 254; crc32 is binascii.crc32 of everything before it; ts_ms is the low 6
# bytes of a signed 64-bit millisecond time, +-4,400 years). An erased length (0xFF) ends the data of a sector.
# The header is 12 bytes so that a 3-channel reading is 32 bytes: with ESP32 flash encryption records are
# padded to 16-byte units (docs/firmware.md, write amplification). Payloads:
#   reading: u8 name_len, name, n x f32 (channel values in the order of the sensor's channels; n follows from
#            len)
#   event:   f32 score, then 5 strings kind, label, model, action, sensor, each u8 len + bytes (255 = None)
#   ack:     none; seq is the highest seq stored end to end (ack markers take no seq of their own)
# Channel names are not stored: they follow from the sensor (KIND_CHANNELS, or what the sampler registered).
# Flags are 6 bits here (1 unsynced clock, 2 stuck, 4 recovered, 8 suspect; docs/protocol.md).
import struct

import micropython
from micropython import const

REC_READING = const(1)
REC_EVENT = const(2)
REC_ACK = const(3)

HDR_SIZE = const(12)
CRC_SIZE = const(4)
MIN_SIZE = const(16)  # header + crc
MAX_SIZE = const(254)
MIN_DATA_SIZE = const(22)  # smallest reading (1-char name, 1 channel); events are larger
_NONE = const(255)
_TS = bytearray(8)  # scratch for the 6-byte timestamp (no allocation per record)

# Channels per sensor kind (docs/sensors.md), so records stay decodable after a reboot.
KIND_CHANNELS = {
    "bme280": ("temperature", "humidity", "pressure"),
    "mpu6050": ("ax", "ay", "az", "gx", "gy", "gz"),
    "dht22": ("temperature", "humidity"),
    "adc": ("value",),
}


def rtype(buf):
    return buf[1] & 3


def _put_hdr(buf, off, size, typ, flags, seq, ts):
    buf[off] = size
    buf[off + 1] = typ | ((flags & 0x3F) << 2)
    struct.pack_into("<I", buf, off + 2, seq)
    struct.pack_into("<q", _TS, 0, ts)
    copy_into(buf, off + 6, _TS, 6)


@micropython.viper
def crc_seal(buf: ptr8, off: int, n: int):
    # Writes crc32(buf[off:off+n]) little-endian at buf[off+n], computed bitwise (no 1 KB table on the heap).
    # The loop is inlined (not a call to _crc) so no int object is created: on a 32-bit board a CRC above
    # 2**30 would be a heap-allocated long.
    m = (uint(0xFFFF) << 16) | uint(0xFFFF)
    poly = (uint(0xEDB8) << 16) | uint(0x8320)
    c = m
    i = off
    end = off + n
    while i < end:
        c = c ^ uint(buf[i])
        k = 0
        while k < 8:
            if c & 1:
                c = (c >> 1) ^ poly
            else:
                c = c >> 1
            k += 1
        i += 1
    c = c ^ m
    p = off + n
    buf[p] = c & 0xFF
    buf[p + 1] = (c >> 8) & 0xFF
    buf[p + 2] = (c >> 16) & 0xFF
    buf[p + 3] = (c >> 24) & 0xFF


@micropython.viper
def crc_check(buf: ptr8, off: int, n: int) -> bool:
    m = (uint(0xFFFF) << 16) | uint(0xFFFF)
    poly = (uint(0xEDB8) << 16) | uint(0x8320)
    c = m
    i = off
    end = off + n
    while i < end:
        c = c ^ uint(buf[i])
        k = 0
        while k < 8:
            if c & 1:
                c = (c >> 1) ^ poly
            else:
                c = c >> 1
            k += 1
        i += 1
    c = c ^ m
    p = off + n
    s = uint(buf[p]) | (uint(buf[p + 1]) << 8) | (uint(buf[p + 2]) << 16) | (uint(buf[p + 3]) << 24)
    return c == s


@micropython.viper
def copy_into(dst: ptr8, doff: int, src: ptr8, n: int):
    i = 0
    while i < n:
        dst[doff + i] = src[i]
        i += 1


@micropython.viper
def all_erased(buf: ptr8, off: int, n: int) -> bool:
    i = off
    end = off + n
    while i < end:
        if buf[i] != 0xFF:
            return False
        i += 1
    return True


def _put_str(buf, off, s, maxlen):
    # Event strings are bounded in UTF-8 bytes so an event always fits MAX_SIZE (a longer one is cut at a
    # character boundary, not an overflow). len() of a str counts characters, not bytes: encode first.
    if s is None:
        buf[off] = _NONE
        return off + 1
    b = s.encode() if isinstance(s, str) else bytes(s)
    n = len(b)
    if n > maxlen:
        # Bounded in bytes, cut at a character boundary (never inside a UTF-8 sequence).
        n = maxlen
        while n > 0 and (b[n] & 0xC0) == 0x80:
            n -= 1
    buf[off] = n
    copy_into(buf, off + 1, b, n)
    return off + 1 + n


def reading_size(name, n):
    return MIN_SIZE + 1 + len(name) + 4 * n


def put_reading(buf, off, seq, ts, flags, name, values, n):
    # Encodes a reading at buf[off:], returns its length. values: array('f'), n channels.
    ln = len(name)
    size = MIN_SIZE + 1 + ln + 4 * n
    _put_hdr(buf, off, size, REC_READING, flags, seq, ts)
    p = off + HDR_SIZE
    buf[p] = ln
    copy_into(buf, p + 1, name, ln)
    copy_into(buf, p + 1 + ln, values, 4 * n)
    crc_seal(buf, off, size - CRC_SIZE)
    return size


FLT_MAX = 3.4028234e38


def finite_score(score):
    # A score that is not a finite float32 never leaves the node (the protocol takes finite numbers only):
    # NaN becomes 0.0, +-inf and anything beyond float32 the largest finite float32 of that sign.
    if score != score:
        return 0.0
    if score > FLT_MAX:
        return FLT_MAX
    if score < -FLT_MAX:
        return -FLT_MAX
    return score


def put_event(buf, off, seq, ts, flags, kind, label, score, model_id, action, sensor):
    p = off + HDR_SIZE
    score = finite_score(score)
    struct.pack_into("<f", buf, p, score)
    p += 4
    p = _put_str(buf, p, kind, 16)
    p = _put_str(buf, p, label, 32)
    p = _put_str(buf, p, model_id, 64)
    p = _put_str(buf, p, action, 64)
    p = _put_str(buf, p, sensor, 16)  # at most 4 + 17 + 33 + 65 + 65 + 17 + 20 = 221 bytes < MAX_SIZE
    size = p - off + CRC_SIZE
    _put_hdr(buf, off, size, REC_EVENT, flags, seq, ts)
    crc_seal(buf, off, size - CRC_SIZE)
    return size


def put_ack(buf, off, seq):
    _put_hdr(buf, off, MIN_SIZE, REC_ACK, 0, seq, 0)
    crc_seal(buf, off, HDR_SIZE)
    return MIN_SIZE


def header(buf, off=0):
    # (len, type, flags, seq, ts)
    t = _TS
    for i in range(6):
        t[i] = buf[off + 6 + i]
    t[6] = t[7] = 0xFF if t[5] & 0x80 else 0
    b = buf[off + 1]
    return buf[off], b & 3, b >> 2, struct.unpack_from("<I", buf, off + 2)[0], struct.unpack_from("<q", t, 0)[0]


def get_str(buf, off):
    # (str or None, next offset)
    n = buf[off]
    if n == _NONE:
        return None, off + 1
    try:
        v = str(buf[off + 1 : off + 1 + n], "utf-8")
    except UnicodeError:
        v = "?"  # a cut multi-byte character
    return v, off + 1 + n


def reading_name(buf):
    n = buf[HDR_SIZE]
    return str(buf[HDR_SIZE + 1 : HDR_SIZE + 1 + n], "utf-8")


def reading_values(buf):
    # (n, offset of the first f32)
    p = HDR_SIZE + 1 + buf[HDR_SIZE]
    return (buf[0] - CRC_SIZE - p) >> 2, p


def decode_event(buf):
    score = struct.unpack_from("<f", buf, HDR_SIZE)[0]
    p = HDR_SIZE + 4
    kind, p = get_str(buf, p)
    label, p = get_str(buf, p)
    model, p = get_str(buf, p)
    action, p = get_str(buf, p)
    sensor, p = get_str(buf, p)
    return kind, label, score, model, action, sensor
