"""Hostile payloads against protocol.parse (issue 10 items 1 and 3, issue 11 v2/log/stored/strings).

parse must give a Message or a ProtocolError for anything, never another exception: the collector relies on
it to dead-letter a bad message instead of stopping. Valid messages come from the builders in
edgefleet.sim.fleetsim and edgefleet.wire.protocol.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.sim import fleetsim as fs
from edgefleet.wire import protocol
from edgefleet.wire.protocol import ProtocolError

P = "edgefleet"
DEV = "n1"


def _valid(kind: str) -> dict:
    """One valid message of each kind the collector receives."""
    if kind == "telemetry":
        return protocol.telemetry(DEV, [fs.reading(1, 5)], log=fs.LOG)
    if kind == "event":
        return protocol.events(DEV, [fs.event(2)], log=fs.LOG)
    if kind == "status":
        return fs.online_status(DEV)
    if kind == "ack":
        return fs.ack(DEV)
    if kind == "stored":
        return protocol.stored(fs.LOG, [(1, 4), (7, 7)])
    return protocol.command("c-1", "ping")


KINDS = ("telemetry", "event", "status", "ack", "cmd", "stored")


def _parse(kind: str, obj: object) -> protocol.Message:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return protocol.parse(P, f"{P}/{DEV}/{kind}", raw)


def test_every_builder_makes_a_valid_message() -> None:
    for kind in KINDS:
        m = _parse(kind, _valid(kind))
        assert m.kind == kind
    assert _parse("telemetry", _valid("telemetry")).log == fs.LOG


def _with(kind: str, path: tuple, value: object) -> dict:
    obj = json.loads(json.dumps(_valid(kind)))
    target = obj
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return obj


# The nine shapes of issue 10 that stopped the collector, plus NUL (PostgreSQL cannot store it in text).
HOSTILE = [
    ("telemetry", ("recs", 0, "sensor"), [], "rec 0: bad sensor"),
    ("telemetry", ("recs", 0, "sensor"), {}, "rec 0: bad sensor"),
    ("event", ("recs", 0, "kind"), [], "rec 0: bad kind"),
    ("event", ("recs", 0, "kind"), {}, "rec 0: bad kind"),
    ("status", ("state",), [], "bad state"),
    ("status", ("state",), {}, "bad state"),
    ("cmd", ("cmd",), [], "unknown command"),
    ("event", ("recs", 0, "label"), "\ud800", "rec 0: bad label"),
    ("ack", ("id",), "\ud800", "bad id"),
    ("event", ("recs", 0, "label"), "a\x00b", "rec 0: bad label"),
    ("ack", ("result",), {"x": "nul\x00"}, "bad text"),
    ("status", ("error",), "line\nbreak\x1b[2J", "bad error"),
    ("event", ("recs", 0, "action"), "\x7f", "rec 0: bad model or action"),
    ("cmd", ("id",), "c-1\u0085", "bad id"),
    ("telemetry", ("recs", 0, "vals", "t"), 1e999, "non-finite number"),
    # issue 13: the status' over-the-air fields, which the rollout gate acts on
    ("status", ("ota",), "downloading", "bad ota"),
    ("status", ("ota",), [], "bad ota"),
    ("status", ("ota",), {}, "bad ota"),
    ("status", ("ota_ver",), None, "bad ota_ver"),
    ("status", ("ota_ver",), {"model": 1, "config": 0}, "bad ota_ver"),
    ("status", ("ota_ver",), {"model": 1, "config": 0, "code": -1}, "bad ota_ver"),
    ("status", ("ota_ver",), {"model": 1, "config": 0, "code": True}, "bad ota_ver"),
    ("status", ("ota_ver",), {"model": 1, "config": 0, "code": 0, "x": 0}, "bad ota_ver"),
]

OTA_REPORT = {"kind": "model", "ver": 7, "state": "downloading", "got": 8192, "size": 30123, "reason": None}
HOSTILE_OTA = [
    ("state", "current"),  # an ack's state, not a report's
    ("state", None),
    ("state", ["failed"]),
    ("kind", "firmware"),
    ("kind", {}),
    ("ver", -1),
    ("ver", 1.0),
    ("ver", "7"),
    ("ver", 2**64),
    ("got", None),
    ("got", 30124),  # more than the size
    ("size", False),
    ("reason", 5),
    ("reason", "x" * 257),
    ("reason", "line\nbreak"),
    ("extra", 1),
]


def test_integers_beyond_64_bits_are_refused_whichever_parser_reads_them() -> None:
    # orjson turns 2**64 into a float; a lone surrogate elsewhere sends the payload through the standard
    # library, which keeps the int, and storing it (orjson.dumps) used to raise TypeError, not ProtocolError.
    obj = _with("telemetry", ("recs", 0, "vals", "t"), 2**64)
    obj["pad"] = "\ud800"
    with pytest.raises(ProtocolError, match="bad value for 't'"):
        protocol.parse(P, f"{P}/{DEV}/telemetry", json.dumps(obj).encode(), received_ms=1)


@pytest.mark.parametrize(("kind", "path", "value", "reason"), HOSTILE)
def test_hostile_shapes_are_protocol_errors(kind: str, path: tuple, value: object, reason: str) -> None:
    with pytest.raises(ProtocolError) as e:
        _parse(kind, _with(kind, path, value))
    assert e.value.reason == reason


def test_status_ota_fields_valid_shapes() -> None:
    """The report of docs/protocol.md parses, null too, with every state; the ack-only `current` does not."""
    from edgefleet.wire import ota

    assert _parse("status", _with("status", ("ota",), None)).body["ota"] is None
    for state in ota.STATES:
        body = _with("status", ("ota",), {**OTA_REPORT, "state": state, "reason": "boot loop"})
        body["ota_ver"] = {"model": 7, "config": 0, "code": 2}
        m = _parse("status", body)
        assert m.body["ota"]["state"] == state and m.body["ota_ver"]["code"] == 2


@pytest.mark.parametrize(("field", "value"), HOSTILE_OTA)
def test_hostile_ota_reports_are_protocol_errors(field: str, value: object) -> None:
    report = {**OTA_REPORT, field: value}
    with pytest.raises(ProtocolError) as e:
        _parse("status", _with("status", ("ota",), report))
    assert e.value.reason == "bad ota"
    missing = dict(OTA_REPORT)
    del missing["reason" if field == "extra" else field]
    with pytest.raises(ProtocolError, match="bad ota"):
        _parse("status", _with("status", ("ota",), missing))


def test_ota_commands() -> None:
    from edgefleet.wire import ota

    offer = ota.offer_for(DEV, "model", 7, b"EFML" + bytes(100))
    assert _parse("cmd", protocol.command("o-1", "ota", offer.args(b"k" * 32))).body["cmd"] == "ota"
    assert _parse("cmd", protocol.command("o-2", "ota_rollback", {"kind": "model"})).body["cmd"] == "ota_rollback"


def test_ids_with_a_trailing_newline_are_refused() -> None:
    for bad in ("n1\n", "n1\r\n"):
        with pytest.raises(ProtocolError, match="bad device id"):
            protocol.parse_topic(P, f"{P}/{bad}/telemetry")
        with pytest.raises(ProtocolError):
            protocol.topic(P, bad, "telemetry")
    with pytest.raises(ProtocolError, match="bad sensor"):
        _parse("telemetry", _with("telemetry", ("recs", 0, "sensor"), "env\n"))
    with pytest.raises(ProtocolError, match="bad value"):
        _parse("telemetry", _with("telemetry", ("recs", 0, "vals"), {"t\n": 1.0}))
    with pytest.raises(ProtocolError, match="bad log"):
        _parse("telemetry", _with("telemetry", ("log",), fs.LOG + "\n"))


def test_v2_log_is_required_and_v1_is_log_empty() -> None:
    for kind in ("telemetry", "event", "status"):
        obj = _valid(kind)
        del obj["log"]
        with pytest.raises(ProtocolError, match="missing log"):
            _parse(kind, obj)
        for bad in ("0A1B2C3D", "0a1b2c3", "0a1b2c3d0", 12345678, None, "zzzzzzzz"):
            with pytest.raises(ProtocolError, match="bad log"):
                _parse(kind, _with(kind, ("log",), bad))
    old = protocol.telemetry(DEV, [fs.reading(1, 5)], log=None)
    assert old["v"] == 1 and "log" not in old
    m = protocol.parse(P, f"{P}/{DEV}/telemetry", protocol.encode(old), received_ms=7)
    assert m.log == "" and m.records[0][:3] == (DEV, "", 1)
    lwt = protocol.offline_status(DEV)
    assert _parse("status", lwt).body["state"] == "offline"


def test_stored_message() -> None:
    assert protocol.stored(fs.LOG, [(1, 4), (7, 7)]) == {"v": 2, "log": fs.LOG, "ranges": [[1, 4], [7, 7]]}
    for ranges in ([], [(4, 1)], [(1, 4), (5, 6)], [(5, 6), (1, 2)], [(0, 1)], [(i * 3, i * 3) for i in range(1, 34)]):
        with pytest.raises(ProtocolError, match="bad ranges"):
            protocol.stored(fs.LOG, ranges)
    with pytest.raises(ProtocolError):
        protocol.stored("nope", [(1, 1)])
    assert protocol.topic(P, DEV, "stored") == f"{P}/{DEV}/stored"


def test_labels_are_bounded_in_utf8_bytes_and_may_be_non_ascii() -> None:
    ok = "läuft" * 5 + "abcdef"  # 25 characters + 6 = 31 chars, 36 bytes: over
    assert len(ok) <= protocol.MAX_LABEL < len(ok.encode())
    with pytest.raises(ProtocolError, match="bad label"):
        _parse("event", _with("event", ("recs", 0, "label"), ok))
    fits = "läuft" * 5  # 30 bytes
    m = _parse("event", _with("event", ("recs", 0, "label"), fits))
    assert m.records[0][4] == fits
    assert _parse("event", _with("event", ("recs", 0, "action"), "Lüfter an")).records[0][7] == "Lüfter an"


# ---------------------------------------------------------------- fuzzing (bounded: ~10 s)

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
EVERY_TYPE = st.sampled_from([None, True, 0, -1, 2**63, 1.5, "", "x", "\ud800", "\x00", [], [1], {}, {"a": 1}])


def _only_message_or_protocol_error(kind: str, raw: bytes) -> None:
    try:
        m = protocol.parse(P, f"{P}/{DEV}/{kind}", raw, received_ms=1)
    except ProtocolError:
        return
    assert m.kind == kind


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), tree=JSON, v=st.sampled_from([1, 2, None]))
def test_fuzz_arbitrary_json_trees(kind: str, tree: object, v: int | None) -> None:
    if isinstance(tree, dict) and v is not None:
        tree = {**tree, "v": v, "dev": DEV}
    _only_message_or_protocol_error(kind, json.dumps(tree).encode())


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), data=st.data(), value=EVERY_TYPE)
def test_fuzz_each_field_replaced_by_every_json_type(kind: str, data: st.DataObject, value: object) -> None:
    path = data.draw(st.sampled_from(_paths(_valid(kind))))
    _only_message_or_protocol_error(kind, json.dumps(_with(kind, path, value)).encode())


def _status_with_ota() -> dict:
    body = _valid("status")
    body["ota"] = dict(OTA_REPORT)
    body["ota_ver"] = {"model": 7, "config": 0, "code": 0}
    return body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=EVERY_TYPE)
def test_fuzz_status_ota_fields_replaced_by_every_json_type(data: st.DataObject, value: object) -> None:
    base = _status_with_ota()
    path = data.draw(st.sampled_from([p for p in _paths(base) if p[0] in ("ota", "ota_ver")]))
    obj = json.loads(json.dumps(base))
    target = obj
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    _only_message_or_protocol_error("status", json.dumps(obj).encode())


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    for kind in KINDS:
        _only_message_or_protocol_error(kind, raw)
