# The sensor kinds: the one table of what the node, the sim board and the host know about each kind
# (docs/sensors.md, contract 5 in docs/architecture.md). Anything else that needs a kind's channels, units,
# range limits, rate ceiling or stuck rule reads it from here; the host reads KINDS with ast.literal_eval
# (host/edgefleet/board/firmware_shared.py), so KINDS must stay a plain literal.
#
# kind: (max_rate_hz, stuck_s, channels); channel: (name, unit, limits); limits: (low, high, hampel floor) or
# None (no physical range: the board file's clean.limits must give one).
# max_rate_hz: highest sampling rate when the board file gives no max_rate_hz. stuck_s: how long identical
# readings last before the channel is flagged stuck (60 s for a DHT22, whose 0.1-unit resolution repeats
# readily in a calm room). A causal median lags a fast signal: at 10 Hz a 0.5 Hz, 0.5 g swing already deviates
# 0.56 g from the median of the previous 7 readings, so motion channels only reject gross glitches (2 g,
# 250 deg/s beyond the median); slow environmental channels are held much tighter.
KINDS = {
    "bme280": (25, 20, (
        ("temperature", "°C", (-40.0, 85.0, 0.5)),
        ("humidity", "%", (0.0, 100.0, 2.0)),
        ("pressure", "hPa", (300.0, 1100.0, 1.0)),
    )),
    "mpu6050": (100, 20, (
        ("ax", "g", (-16.0, 16.0, 2.0)), ("ay", "g", (-16.0, 16.0, 2.0)), ("az", "g", (-16.0, 16.0, 2.0)),
        ("gx", "°/s", (-2000.0, 2000.0, 250.0)), ("gy", "°/s", (-2000.0, 2000.0, 250.0)),
        ("gz", "°/s", (-2000.0, 2000.0, 250.0)),
    )),
    "dht22": (0.5, 60, (
        ("temperature", "°C", (-40.0, 80.0, 1.0)),
        ("humidity", "%", (0.0, 100.0, 3.0)),
    )),
    "adc": (100, 20, (("value", None, None),)),
}  # fmt: skip
DEFAULT_MAX_RATE = 100  # a kind not in KINDS (a board's own driver)
DEFAULT_STUCK_S = 20


def channels(kind):
    # channel names of a kind in record order, or None for a kind not in the table
    k = KINDS.get(kind)
    return None if k is None else tuple(c[0] for c in k[2])


def max_rate(kind):
    k = KINDS.get(kind)
    return DEFAULT_MAX_RATE if k is None else k[0]


def stuck_s(kind):
    k = KINDS.get(kind)
    return DEFAULT_STUCK_S if k is None else k[1]


def limits(kind, channel):
    # (low, high, hampel floor) of a channel, or None
    k = KINDS.get(kind)
    if k is not None:
        for c in k[2]:
            if c[0] == channel:
                return c[2]
    return None
