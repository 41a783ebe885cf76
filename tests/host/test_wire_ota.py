"""The host side of the OTA contract (wire/ota.py, docs/protocol.md "Over-the-air updates"): chunks that
reassemble to the artifact with a CRC each, a MAC bound to the device and every offered field, code bundles that
round-trip and refuse what is not one, and config artifacts that must not carry secrets."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.wire import ota
from edgefleet.wire.protocol import ProtocolError

KEY = bytes(range(32))


@given(st.binary(min_size=1, max_size=5000), st.integers(ota.MIN_CHUNK, ota.MAX_CHUNK))
def test_chunks_reassemble_with_a_crc_each(data: bytes, chunk: int) -> None:
    parts = list(ota.chunks(data, chunk))
    assert [n for n, _ in parts] == list(range(ota.n_chunks(len(data), chunk)))
    body = b""
    for _, p in parts:
        (crc,) = struct.unpack(">I", p[:4])
        assert crc == binascii.crc32(p[4:]) and 0 < len(p) - 4 <= chunk
        body += p[4:]
    assert body == data


def test_the_mac_covers_the_device_and_every_field() -> None:
    data = b"EFML" + bytes(3000)
    offer = ota.offer_for("node-1", "model", 3, data, chunk=512, confirm_s=30)
    args = offer.args(KEY)
    text = f"efota1|node-1|model|3|{len(data)}|{hashlib.sha256(data).hexdigest()}|512|30".encode()
    assert args["mac"] == hmac.new(KEY, text, hashlib.sha256).hexdigest()
    assert args["art"] == hashlib.sha256(data).hexdigest()[:16]
    macs = {args["mac"], offer.mac(bytes(32))}
    for change in ({"dev": "node-2"}, {"ver": 4}, {"size": 3005}, {"chunk": 1024}, {"confirm_s": 31},
                   {"kind": "config"}, {"sha256": "0" * 64}):  # fmt: skip
        fields = {**offer.__dict__, **change}
        macs.add(ota.Offer(**fields).mac(KEY))
    assert len(macs) == 9  # each change gives another MAC


@pytest.mark.parametrize(
    "bad",
    [{"dev": "a/b"}, {"kind": "firmware"}, {"ver": 0}, {"ver": 70000}, {"size": 0}, {"chunk": 100},
     {"chunk": 4096}, {"confirm_s": 5}, {"sha256": "ABC"}],
)  # fmt: skip
def test_a_bad_offer_is_refused(bad: dict) -> None:
    fields = {"dev": "n1", "kind": "model", "ver": 1, "size": 10, "sha256": "a" * 64, **bad}
    with pytest.raises(ProtocolError):
        ota.Offer(**fields)


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,8}(/[a-z_]{1,8})?\.mpy", fullmatch=True), st.binary(max_size=300),
                       max_size=6))  # fmt: skip
def test_code_bundles_round_trip(files: dict[str, bytes]) -> None:
    b = ota.bundle(files)
    assert ota.unbundle(b) == files and ota.detect_kind(b) == "code"


@pytest.mark.parametrize("name", ["../boot.py", "/abs.mpy", "a/../../x.mpy", "", "x" * 70])
def test_a_bundle_never_names_a_path_outside(name: str) -> None:
    with pytest.raises(ProtocolError):
        ota.bundle({name: b"x"})


def test_a_damaged_bundle_is_refused() -> None:
    b = ota.bundle({"node/app.mpy": b"abcdef", "node/x.mpy": b"12"})
    for bad in (b[:-1], b + b"z", b"EFCB" + b[4:6], b[:10], b"EFCX" + b[4:]):
        with pytest.raises(ProtocolError):
            ota.unbundle(bad)
    evil = bytearray(b)
    evil[7 : 7 + len("node/app.mpy")] = b"../x/app.mpy"
    with pytest.raises(ProtocolError):
        ota.unbundle(bytes(evil))


def test_kinds_and_config_secrets() -> None:
    assert ota.detect_kind(b"EFML\x01\x00") == "model"
    assert ota.detect_kind(b'{"rates": {"env": 2}}') == "config"
    for junk in (b"[1, 2]", b"\xff\xfe", b"hello"):
        with pytest.raises(ProtocolError):
            ota.detect_kind(junk)
    assert ota.config_secrets({"rates": {"env": 2}, "broker": {"url": "mqtt://h:1"}}) == []
    cfg = {"device_id": "x", "broker": {"password": "p", "username": "u"}, "wifi": {"password": "w"},
           "model_key": "00" * 16}  # fmt: skip
    assert sorted(ota.config_secrets(cfg)) == sorted(
        ["device_id", "broker.username", "broker.password", "wifi.password", "model_key"]
    )


def test_chunk_topics_never_collide_with_device_topics() -> None:
    t = ota.chunk_topic("edgefleet", "0123456789abcdef", 7)
    assert t == "edgefleet/ota/0123456789abcdef/7" and ota.is_chunk_topic("edgefleet", t)
    assert not ota.is_chunk_topic("edgefleet", "edgefleet/ota/cmd")  # a device named "ota"
    assert not ota.is_chunk_topic("edgefleet", "edgefleet/ota/status")
    assert not ota.is_chunk_topic("site/a", "edgefleet/ota/0123456789abcdef/7")
    assert ota.is_chunk_topic("site/a", "site/a/ota/0123456789abcdef/7")
