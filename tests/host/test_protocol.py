"""The wire protocol's one schema module: topics, valid payloads from docs/protocol.md, and every rejection."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgefleet.wire import protocol
from edgefleet.wire.protocol import ProtocolError

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _doc_examples() -> list[dict]:
    """The JSON examples of docs/protocol.md, so the doc and the module cannot drift apart."""
    text = DOC.read_text()
    out = []
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        for chunk in block.strip().split("\n{"):
            chunk = chunk if chunk.startswith("{") else "{" + chunk
            out.append(json.loads(chunk))
    return out


def test_doc_examples_are_valid() -> None:
    examples = _doc_examples()
    kinds = []
    for ex in examples:
        if "ranges" in ex:
            protocol.check_stored(ex)
            kinds.append("stored")
        elif "cmd" in ex:
            protocol.check_cmd(ex)
            kinds.append("cmd")
        elif "ok" in ex:
            protocol.check_ack(ex, ex["dev"])
            kinds.append("ack")
        elif "state" in ex:
            protocol.check_status(ex, ex["dev"])
            kinds.append("status")
        elif "sensor" in ex["recs"][0] and "vals" in ex["recs"][0]:
            assert len(protocol.parse_readings(ex, ex["dev"])) == len(ex["recs"])
            kinds.append("telemetry")
        else:
            assert len(protocol.parse_events(ex, ex["dev"])) == 1
            kinds.append("event")
    assert {"telemetry", "event", "status", "cmd", "ack", "stored"} <= set(kinds)


def test_topics() -> None:
    assert protocol.topic("edgefleet", "node-001", "telemetry") == "edgefleet/node-001/telemetry"
    assert protocol.parse_topic("site/a", "site/a/node_1/status") == ("node_1", "status")
    assert protocol.subscriptions("p", "g") == ["$share/g/p/#"]
    for bad, reason in [
        ("other/n1/telemetry", "wrong prefix"),
        ("edgefleet/n1/bogus", "unknown topic"),
        ("edgefleet/n1/telemetry/x", "unknown topic"),
        ("edgefleet/bad id/telemetry", "bad device id"),
        ("edgefleet/" + "x" * 33 + "/telemetry", "bad device id"),
    ]:
        with pytest.raises(ProtocolError) as e:
            protocol.parse_topic("edgefleet", bad)
        assert e.value.reason == reason
    with pytest.raises(ProtocolError):
        protocol.topic("edgefleet", "a/b", "telemetry")


def _tele(**rec) -> bytes:
    base = {"seq": 1, "ts": 5, "sensor": "env", "flags": 0, "vals": {"t": 1.5}}
    base.update(rec)
    return json.dumps({"v": 1, "dev": "n1", "recs": [base]}).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{nope", "malformed JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"v": 3, "dev": "n1", "recs": []}', "unknown version"),
        (b'{"v": true, "dev": "n1", "recs": []}', "unknown version"),
        (b'{"dev": "n1", "recs": []}', "unknown version"),
        (b'{"v": 1, "dev": "n2", "recs": [{}]}', "dev does not match topic"),
        (b'{"v": 1, "recs": [{}]}', "missing dev"),
        (b'{"v": 1, "dev": "n1", "recs": []}', "bad record count"),
        (b'{"v": 1, "dev": "n1", "recs": {}}', "missing recs"),
        (
            b'{"v": 1, "dev": "n1", "recs": [{"seq": 1, "ts": 5, "sensor": "env", "flags": 0, "vals": {"t": NaN}}]}',
            "non-finite number",
        ),
        (
            b'{"v": 1, "dev": "n1", "recs": [{"seq": 1, "ts": 5, "sensor": "env", "flags": 0, "vals": {"t": -Infinity}}]}',
            "non-finite number",
        ),
        (_tele(vals={"t": 1e999}).replace(b"Infinity", b"1e999"), "rec 0: bad value for 't'"),
        (_tele(seq="1"), "rec 0: bad seq"),
        (_tele(seq=0), "rec 0: bad seq"),
        (_tele(seq=True), "rec 0: bad seq"),
        (_tele(seq=2**63), "rec 0: bad seq"),
        (_tele(ts=-1), "rec 0: bad ts"),
        (_tele(ts=1.5), "rec 0: bad ts"),
        (_tele(flags=None), "rec 0: bad flags"),
        (_tele(sensor="Env!"), "rec 0: bad sensor"),
        (_tele(vals={}), "rec 0: bad vals"),
        (_tele(vals=[1]), "rec 0: bad vals"),
        (_tele(vals={"t": "hot"}), "rec 0: bad value for 't'"),
        (_tele(vals={"t": True}), "rec 0: bad value for 't'"),
        (_tele(vals={f"c{i}": 1 for i in range(17)}), "rec 0: bad vals"),
        (b" " * (protocol.MAX_PAYLOAD + 1), "payload too large"),
        (b"[" * 60_000, "malformed JSON"),
    ],
)
def test_bad_telemetry_is_rejected_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as e:
        protocol.parse("edgefleet", "edgefleet/n1/telemetry", payload)
    assert e.value.reason == reason


def test_records_limit() -> None:
    recs = [{"seq": i, "ts": 1, "sensor": "env", "flags": 0, "vals": {"t": 1}} for i in range(1, 502)]
    with pytest.raises(ProtocolError, match="bad record count"):
        protocol.parse_readings(protocol.telemetry("n1", recs), "n1")
    assert len(protocol.parse_readings(protocol.telemetry("n1", recs[:500]), "n1")) == 500


def test_events_status_ack_cmd() -> None:
    ev = {
        "seq": 3,
        "ts": 9,
        "flags": 0,
        "kind": "fault",
        "label": "stuck",
        "score": 1,
        "model": None,
        "action": None,
        "sensor": "env",
    }
    m = protocol.parse("edgefleet", "edgefleet/n1/event", protocol.encode(protocol.events("n1", [ev])))
    assert m.records == ((3, 9, 0, "fault", "stuck", 1, None, None, "env"),)
    for change, reason in [
        ({"kind": "boom"}, "bad kind"),
        ({"sensor": None}, "bad fault"),
        ({"label": "x" * 33}, "bad label"),
        ({"score": "1"}, "bad score"),
    ]:
        with pytest.raises(ProtocolError, match=reason):
            protocol.parse_events(protocol.events("n1", [{**ev, **change}]), "n1")
    lwt = protocol.offline_status("n1")
    assert protocol.parse("edgefleet", "edgefleet/n1/status", protocol.encode(lwt)).body["state"] == "offline"
    with pytest.raises(ProtocolError, match="missing fw"):
        protocol.check_status({"v": 1, "dev": "n1", "state": "online", "ts": 1}, "n1")
    with pytest.raises(ProtocolError, match="bad state"):
        protocol.check_status({"v": 1, "dev": "n1", "state": "asleep"}, "n1")
    with pytest.raises(ProtocolError, match="missing error"):
        protocol.check_ack({"v": 1, "dev": "n1", "id": None, "ok": False}, "n1")
    with pytest.raises(ProtocolError, match="unknown command"):
        protocol.command("c1", "explode")
    assert protocol.command("c1", "ping")["cmd"] == "ping"
    with pytest.raises(ValueError):
        protocol.encode({"x": float("nan")})
