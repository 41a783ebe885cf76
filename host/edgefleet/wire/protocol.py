"""Wire protocol v2 (contract 2; v1 still accepted): the one place on the host that knows topics and payloads.

docs/protocol.md is the prose of this module; the two must agree. Everything here is pure (no I/O), so the
collector, the node simulator, the tests and the benchmark all build and check messages the same way.
Validation is written for speed (the collector runs it on every record at >100k records/s): plain type checks,
no schema library, and one `ProtocolError` with a short reason that the collector stores in its dead letters.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

try:  # optional speed-up, same results (see decode)
    from orjson import dumps as _orjson_dumps
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - exercised where orjson is absent
    _orjson_dumps = _orjson_loads = None

VERSION = 2  # what the host builds (nodes send 2; v1 nodes are still accepted, their log id is "")
VERSIONS = (1, 2)
CMD_VERSION = 1  # commands stay v1 until every node firmware accepts v2 commands (docs/protocol.md)
DEFAULT_PREFIX = "edgefleet"
KINDS = ("telemetry", "event", "status", "cmd", "ack", "stored")

MAX_PAYLOAD = 65_536  # bytes the collector accepts; larger is a dead letter
NODE_MAX_BATCH_BYTES = 2_048  # default `max_batch_bytes` of a node
MAX_RECORDS = 500  # records per telemetry/event message
MAX_CHANNELS = 16  # channels per reading
MAX_LABEL = 32  # UTF-8 bytes of an event label, a command id
MAX_TEXT = 64  # UTF-8 bytes of an event's model/action, a status's fw/board/model/error
MAX_INT = 2**63 - 1  # seq, ts, flags and counters fit a signed 64-bit column
MAX_RANGES = 32  # seq ranges per `stored` message

# fullmatch everywhere: `$` would also match before a trailing newline.
DEVICE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,15}")  # sensor and channel names
LOG_RE = re.compile(r"[0-9a-f]{8}")  # a flash-log id (v2)
# Text the database could not store or a log line would garble: C0 controls (NUL included), DEL, C1 controls
# and lone surrogates (json.loads turns "\ud800" into one; it cannot be encoded to UTF-8).
_BAD_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
EVENT_KINDS = frozenset({"class", "anomaly", "forecast", "fault"})
FAULT_LABELS = frozenset({"unplugged", "stuck", "dropout", "range"})
COMMANDS = frozenset({"ping", "set_config", "flush", "reboot", "ota", "ota_rollback"})
STATES = frozenset({"online", "offline"})
# Over-the-air artifact kinds and the states of a status' `ota` report (docs/protocol.md); wire/ota.py uses these.
OTA_KINDS = ("model", "config", "code")
OTA_STATES = ("downloading", "pending", "confirmed", "rolled_back", "failed")
FLAG_UNSYNCED, FLAG_SUSPECT, FLAG_RECOVERED = 1, 2, 4

# Fields an `online` status must carry, with their types (None allowed where listed).
_STATUS_ONLINE: dict[str, tuple[type, ...]] = {
    "ts": (int,),
    "fw": (str,),
    "board": (str,),
    "model": (str, type(None)),
    "uptime_s": (int,),
    "heap_free": (int,),
    "boot": (int,),
    "seq": (int,),
    "safe_mode": (bool,),
    "error": (str, type(None)),
    "counters": (dict,),
    "e_buffer": (int, float),
    "r_noise": (int, float),
}


class ProtocolError(ValueError):
    """A message that breaks the protocol. `reason` is short and stable enough to group dead letters by."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """A validated message. `records` holds tuples for telemetry and events (see reading()/event()), else ()."""

    kind: str
    device: str
    body: dict
    records: tuple = ()
    log: str = ""  # the flash-log id of telemetry/event/status ("" for a v1 node)


# ---------------------------------------------------------------- topics


def topic(prefix: str, device: str, kind: str) -> str:
    """The topic of `kind` for `device`; raises ProtocolError for a bad device id or kind."""
    if type(device) is not str or not DEVICE_RE.fullmatch(device):
        raise ProtocolError("bad device id")
    if kind not in KINDS:
        raise ProtocolError("unknown topic")
    return f"{prefix}/{device}/{kind}"


ANY_DEVICE = "+"  # MQTT's one-level wildcard in the device position
ACL_OWN_DEVICE = "%u"  # mosquitto's ACL pattern for the client's own user name, which is its device id


def topic_filter(prefix: str, kind: str | None = None, device: str = ANY_DEVICE) -> str:
    """A subscription filter or broker ACL topic: `kind` of every device (or of `device`: one id, ANY_DEVICE or
    ACL_OWN_DEVICE); without `kind`, everything under the prefix. Subscribers and the broker's ACL build their
    filters here so that they always cover exactly the topics topic() builds."""
    if kind is None:
        return f"{prefix}/#"
    if device not in (ANY_DEVICE, ACL_OWN_DEVICE):
        return topic(prefix, device, kind)
    if kind not in KINDS:
        raise ProtocolError("unknown topic")
    return f"{prefix}/{device}/{kind}"


def subscriptions(prefix: str, group: str | None = None) -> list[str]:
    """Topic filters the collector subscribes to: everything under the prefix, so that stray topics under it
    become dead letters instead of vanishing. With a group, MQTT 5 shared subscriptions split the load."""
    filt = topic_filter(prefix)
    return [f"$share/{group}/{filt}" if group else filt]


def parse_topic(prefix: str, topic_name: str) -> tuple[str, str]:
    """Split `<prefix>/<device>/<kind>` into (device, kind); anything else is a ProtocolError."""
    head = prefix + "/"
    if not topic_name.startswith(head):
        raise ProtocolError("wrong prefix")
    parts = topic_name[len(head) :].split("/")
    if len(parts) != 2:
        raise ProtocolError("unknown topic")
    device, kind = parts
    if kind not in KINDS:
        raise ProtocolError("unknown topic")
    if not DEVICE_RE.fullmatch(device):
        raise ProtocolError("bad device id")
    return device, kind


# ---------------------------------------------------------------- payloads


def _no_constants(name: str) -> Any:
    raise ProtocolError("non-finite number")


def _decode_stdlib(payload: bytes) -> Any:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constants)
    except ProtocolError:
        raise
    except (ValueError, RecursionError):
        raise ProtocolError("malformed JSON") from None


def decode(payload: bytes) -> dict:
    """Bytes -> JSON object, enforcing the size limit, UTF-8, finite numbers and a known version.

    orjson (when installed) parses valid payloads about 3x faster than the standard library; anything it
    refuses goes through the standard library, which gives the precise reason (or accepts what orjson is stricter
    about, such as lone surrogates), so acceptance never depends on which parser is installed.
    """
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError("payload too large")
    if _orjson_loads is not None:
        try:
            obj = _orjson_loads(payload)
        except ValueError:
            obj = _decode_stdlib(payload)
    else:
        obj = _decode_stdlib(payload)
    if type(obj) is not dict:
        raise ProtocolError("not a JSON object")
    v = obj.get("v")
    if type(v) is not int or v not in VERSIONS:
        raise ProtocolError("unknown version")
    return obj


def encode(obj: dict) -> bytes:
    """Compact JSON as the node sends it; refuses NaN/Infinity like the collector does."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def compact(obj: dict) -> str:
    """Compact JSON text of validated values (the collector stores a reading's vals like this)."""
    if _orjson_dumps is not None:
        return _orjson_dumps(obj).decode()
    return json.dumps(obj, separators=(",", ":"))


def _is_int(x: object, lo: int = 0) -> bool:
    return type(x) is int and lo <= x <= MAX_INT


def _is_number(x: object) -> bool:
    t = type(x)
    # json.loads turns 1e999 into inf, so a float still needs the finiteness check.
    return t is int or (t is float and math.isfinite(x))


def text_ok(x: object, max_bytes: int = MAX_TEXT) -> bool:
    """A string every backend stores and every log prints as is: no control characters, no NUL, no lone
    surrogate, at most `max_bytes` in UTF-8 (bounds are bytes, not characters: the node copies bytes)."""
    if type(x) is not str or _BAD_TEXT.search(x):
        return False
    return len(x) <= max_bytes // 4 or len(x.encode()) <= max_bytes


def _opt_str(x: object, limit: int = MAX_TEXT) -> bool:
    return x is None or text_ok(x, limit)


def _check_tree(x: object, depth: int = 0) -> None:
    """Every string (keys too) of a body stored as a whole (status, ack) must be storable text."""
    t = type(x)
    if t is str:
        if _BAD_TEXT.search(x):  # type: ignore[arg-type]
            raise ProtocolError("bad text")
    elif t is dict:
        if depth > 16:
            raise ProtocolError("nested too deep")
        for k, v in x.items():  # type: ignore[attr-defined]
            if _BAD_TEXT.search(k):
                raise ProtocolError("bad text")
            _check_tree(v, depth + 1)
    elif t is list:
        if depth > 16:
            raise ProtocolError("nested too deep")
        for v in x:  # type: ignore[attr-defined]
            _check_tree(v, depth + 1)
    elif t is int and not -MAX_INT - 1 <= x <= MAX_INT:  # type: ignore[operator]
        raise ProtocolError("integer out of range")


def parse_log(obj: dict) -> str:
    """The flash-log id of a v2 message (8 lowercase hex digits, required); "" for v1 (which has none)."""
    if obj["v"] == 1:
        return ""
    lg = obj.get("log")
    if type(lg) is not str or not LOG_RE.fullmatch(lg):
        raise ProtocolError("bad log" if "log" in obj else "missing log")
    return lg


def _check_device(obj: dict, device: str) -> None:
    dev = obj.get("dev")
    if type(dev) is not str:
        raise ProtocolError("missing dev")
    if dev != device:
        raise ProtocolError("dev does not match topic")


def _records(obj: dict) -> list:
    recs = obj.get("recs")
    if type(recs) is not list:
        raise ProtocolError("missing recs")
    if not 1 <= len(recs) <= MAX_RECORDS:
        raise ProtocolError("bad record count")
    return recs


_good_names: set[str] = set()  # sensor/channel names already matched against NAME_RE (a fleet has few)


def _name_ok(name: object) -> bool:
    if type(name) is not str:  # before the set lookup: a list or dict is unhashable
        return False
    if name in _good_names:
        return True
    if not NAME_RE.fullmatch(name):
        return False
    if len(_good_names) < 4096:
        _good_names.add(name)
    return True


def parse_readings(obj: dict, device: str, received_ms: int | None = None) -> tuple:
    """Telemetry -> tuple of (seq, ts, flags, sensor, vals) per record; `vals` is the dict as received.

    With `received_ms` (the collector's hot path) each record comes out as the storage row instead:
    (device, log, seq, ts, sensor, flags, compact vals JSON, received_ms), built in the same pass.
    This loop runs for every reading the fleet sends, so it is written flat: type() identity checks, one
    membership test for names seen before, and the error path only decides which message to give.
    """
    _check_device(obj, device)
    lg = parse_log(obj)
    out = []
    append = out.append
    is_finite = math.isfinite
    good = _good_names
    rows = received_ms is not None
    enc = compact
    for r in _records(obj):
        try:
            seq, ts, flags, sensor, vals = r["seq"], r["ts"], r["flags"], r["sensor"], r["vals"]
            if (
                type(seq) is int
                and type(ts) is int
                and type(flags) is int
                and 1 <= seq <= MAX_INT
                and 0 <= ts <= MAX_INT
                and 0 <= flags <= 0xFFFF
                and (sensor in good or _name_ok(sensor))
                and type(vals) is dict
                and 1 <= len(vals) <= MAX_CHANNELS
            ):
                for k, x in vals.items():
                    t = type(x)
                    if not ((t is float and is_finite(x)) or (t is int and -MAX_INT <= x <= MAX_INT)) or not (
                        k in good or _name_ok(k)
                    ):
                        break
                else:
                    if rows:
                        append((device, lg, seq, ts, sensor, flags, enc(vals), received_ms))
                    else:
                        append((seq, ts, flags, sensor, vals))
                    continue
        except (KeyError, TypeError):
            pass
        raise ProtocolError(_reading_error(len(out), r))
    return tuple(out)


def _reading_error(i: int, r: object) -> str:
    """Why record i was refused (the slow path, only for bad input)."""
    if type(r) is not dict:
        return f"rec {i}: not an object"
    seq, ts, flags, sensor, vals = r.get("seq"), r.get("ts"), r.get("flags"), r.get("sensor"), r.get("vals")
    if not _is_int(seq, 1):
        return f"rec {i}: bad seq"
    if not _is_int(ts):
        return f"rec {i}: bad ts"
    if not _is_int(flags) or flags > 0xFFFF:
        return f"rec {i}: bad flags"
    if not _name_ok(sensor):
        return f"rec {i}: bad sensor"
    if type(vals) is not dict or not 1 <= len(vals) <= MAX_CHANNELS:
        return f"rec {i}: bad vals"
    for k, x in vals.items():
        if not _is_number(x) or (type(x) is int and abs(x) > MAX_INT) or not _name_ok(k):
            return f"rec {i}: bad value for {k[:16].encode('ascii', 'backslashreplace').decode()!r}"
    return f"rec {i}: invalid"


def parse_events(obj: dict, device: str) -> tuple:
    """Events -> tuple of (seq, ts, flags, kind, label, score, model, action, sensor) per record."""
    _check_device(obj, device)
    parse_log(obj)
    out = []
    for i, r in enumerate(_records(obj)):
        if type(r) is not dict:
            raise ProtocolError(f"rec {i}: not an object")
        seq, ts, flags = r.get("seq"), r.get("ts"), r.get("flags")
        kind, label, score = r.get("kind"), r.get("label"), r.get("score")
        model, action, sensor = r.get("model"), r.get("action"), r.get("sensor")
        if not _is_int(seq, 1):
            raise ProtocolError(f"rec {i}: bad seq")
        if not _is_int(ts):
            raise ProtocolError(f"rec {i}: bad ts")
        if not _is_int(flags) or flags > 0xFFFF:
            raise ProtocolError(f"rec {i}: bad flags")
        if type(kind) is not str or kind not in EVENT_KINDS:
            raise ProtocolError(f"rec {i}: bad kind")
        if not text_ok(label, MAX_LABEL):
            raise ProtocolError(f"rec {i}: bad label")
        if not _is_number(score):
            raise ProtocolError(f"rec {i}: bad score")
        if not _opt_str(model) or not _opt_str(action):
            raise ProtocolError(f"rec {i}: bad model or action")
        if sensor is not None and not _name_ok(sensor):
            raise ProtocolError(f"rec {i}: bad sensor")
        if kind == "fault" and (label not in FAULT_LABELS or sensor is None):
            raise ProtocolError(f"rec {i}: bad fault")
        out.append((seq, ts, flags, kind, label, score, model, action, sensor))
    return tuple(out)


def check_status(obj: dict, device: str) -> None:
    """A status or last will. `online` needs every field of docs/protocol.md; `offline` only v/dev/state."""
    _check_device(obj, device)
    state = obj.get("state")
    if type(state) is not str or state not in STATES:
        raise ProtocolError("bad state")
    if state == "offline":
        if "log" in obj:
            parse_log(obj)
        _check_tree(obj)
        return
    parse_log(obj)
    for name, types in _STATUS_ONLINE.items():
        x = obj.get(name, ...)
        if type(x) not in types:
            raise ProtocolError("missing " + name if x is ... else "bad " + name)
    for name in ("ts", "uptime_s", "heap_free", "boot", "seq"):
        if not _is_int(obj[name]):
            raise ProtocolError("bad " + name)
    for name in ("e_buffer", "r_noise"):
        if not _is_number(obj[name]):
            raise ProtocolError("bad " + name)
    for name in ("fw", "board", "model", "error"):
        if not _opt_str(obj[name], MAX_TEXT if name != "error" else 256):
            raise ProtocolError("bad " + name)
    counters = obj["counters"]
    if len(counters) > 32 or not all(text_ok(k, MAX_LABEL) and _is_int(v) for k, v in counters.items()):
        raise ProtocolError("bad counters")
    if "ota" in obj:
        check_ota_report(obj["ota"])
    if "ota_ver" in obj:
        check_ota_versions(obj["ota_ver"])
    _check_tree(obj)


_OTA_REPORT_KEYS = frozenset({"kind", "ver", "state", "got", "size", "reason"})


def check_ota_report(ota: object) -> None:
    """A status' optional `ota` field (docs/protocol.md "Report"): null, or exactly {kind, ver, state, got, size,
    reason} with the contract's kinds and states. Strict, because the rollout gate acts on it: an unknown state
    must not read as "not failed"."""
    if ota is None:
        return
    if type(ota) is not dict or set(ota) != _OTA_REPORT_KEYS:
        raise ProtocolError("bad ota")
    if ota["kind"] not in OTA_KINDS or ota["state"] not in OTA_STATES:
        raise ProtocolError("bad ota")
    if not _is_int(ota["ver"]) or not _is_int(ota["got"]) or not _is_int(ota["size"]) or ota["got"] > ota["size"]:
        raise ProtocolError("bad ota")
    if not _opt_str(ota["reason"], 256):
        raise ProtocolError("bad ota")


def check_ota_versions(vers: object) -> None:
    """A status' optional `ota_ver`: {"model": int, "config": int, "code": int}, the running version of each kind."""
    if type(vers) is not dict or set(vers) != set(OTA_KINDS) or not all(_is_int(v) for v in vers.values()):
        raise ProtocolError("bad ota_ver")


def check_cmd(obj: dict) -> None:
    """A command from the host. The node answers a bad one with ok=false; the host must never send one."""
    cid = obj.get("id")
    if not text_ok(cid, MAX_LABEL) or not cid:
        raise ProtocolError("bad id")
    cmd = obj.get("cmd")
    if type(cmd) is not str or cmd not in COMMANDS:
        raise ProtocolError("unknown command")
    args = obj.get("args", {})
    if type(args) is not dict:
        raise ProtocolError("bad args")
    _check_tree(args)


def check_ack(obj: dict, device: str) -> None:
    _check_device(obj, device)
    cid = obj.get("id")
    if cid is not None and not text_ok(cid, MAX_LABEL):
        raise ProtocolError("bad id")
    ok = obj.get("ok")
    if type(ok) is not bool:
        raise ProtocolError("bad ok")
    if not ok and type(obj.get("error")) is not str:
        raise ProtocolError("missing error")
    _check_tree(obj)


def check_stored(obj: dict) -> tuple[str, list[tuple[int, int]]]:
    """A `stored` ack (host -> node): (log, ranges). Ranges sorted, disjoint, not adjacent, 1..MAX_RANGES."""
    lg = parse_log(obj)
    ranges = obj.get("ranges")
    if type(ranges) is not list or not 1 <= len(ranges) <= MAX_RANGES:
        raise ProtocolError("bad ranges")
    out: list[tuple[int, int]] = []
    prev = 0
    for r in ranges:
        if type(r) is not list or len(r) != 2 or not _is_int(r[0], 1) or not _is_int(r[1], 1):
            raise ProtocolError("bad ranges")
        a, b = r
        if a > b or (a <= prev + 1 and out):
            raise ProtocolError("bad ranges")
        out.append((a, b))
        prev = b
    return lg, out


def parse(prefix: str, topic_name: str, payload: bytes, received_ms: int | None = None) -> Message:
    """Topic + payload -> validated Message, or ProtocolError with the reason. Never raises anything else.
    `received_ms`: telemetry records come out as storage rows (see parse_readings)."""
    device, kind = parse_topic(prefix, topic_name)
    obj = decode(payload)
    if kind == "telemetry":
        return Message(kind, device, obj, parse_readings(obj, device, received_ms), obj.get("log", ""))
    if kind == "event":
        return Message(kind, device, obj, parse_events(obj, device), obj.get("log", ""))
    if kind == "status":
        check_status(obj, device)
        return Message(kind, device, obj, (), obj.get("log", ""))
    if kind == "ack":
        check_ack(obj, device)
    elif kind == "stored":
        check_stored(obj)
    else:
        check_cmd(obj)
    return Message(kind, device, obj)


def readable_seqs(prefix: str, topic_name: str, payload: bytes) -> tuple[str, str, list[int]] | None:
    """(device, log, seqs) of a rejected v2 telemetry/event message whose topic, dev, log and every record's seq
    are valid, else None. The collector acks those seqs once the message is in dead_letter, so a node is not
    stuck re-sending a message that will never be accepted (docs/protocol.md, "stored")."""
    try:
        device, kind = parse_topic(prefix, topic_name)
        if kind not in ("telemetry", "event"):
            return None
        obj = decode(payload)
        if obj.get("dev") != device or obj["v"] != 2:
            return None
        lg = parse_log(obj)
        recs = obj.get("recs")
        if type(recs) is not list or not 1 <= len(recs) <= MAX_RECORDS:
            return None
        seqs = []
        for r in recs:
            seq = r.get("seq") if type(r) is dict else None
            if not _is_int(seq, 1):
                return None
            seqs.append(seq)
        return device, lg, seqs
    except ProtocolError:
        return None


# ---------------------------------------------------------------- builders (simulators, tests, bench, host cmds)


def _with_log(obj: dict, log: str | None) -> dict:
    """v2 with the log id, or v1 (no log) when `log` is None: tests of old nodes build through here too."""
    if log is None:
        obj["v"] = 1
    else:
        obj["log"] = log
    return obj


def telemetry(device: str, records: list[dict], log: str | None = "00000001") -> dict:
    return _with_log({"v": VERSION, "dev": device, "recs": records}, log)


def events(device: str, records: list[dict], log: str | None = "00000001") -> dict:
    return _with_log({"v": VERSION, "dev": device, "recs": records}, log)


def offline_status(device: str, log: str | None = None) -> dict:
    """The last will a node sets in CONNECT (retained, QoS 1)."""
    obj = {"v": VERSION, "dev": device, "state": "offline"}
    if log is not None:
        obj["log"] = log
    return obj


def stored(log: str, ranges: list[tuple[int, int]] | list[list[int]]) -> dict:
    """The end-to-end ack the collector publishes after COMMIT (at most MAX_RANGES sorted, merged ranges)."""
    obj = {"v": VERSION, "log": log, "ranges": [[int(a), int(b)] for a, b in ranges]}
    check_stored(obj)
    return obj


def command(cid: str, cmd: str, args: dict | None = None) -> dict:
    obj: dict = {"v": CMD_VERSION, "id": cid, "cmd": cmd}
    if args is not None:
        obj["args"] = args
    check_cmd(obj)
    return obj
