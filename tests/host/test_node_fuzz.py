"""Fuzzing the node's input surfaces ON MicroPython (issue 10 item 3, node parts), and signed models enforced
on the node (item 5). Cases are generated on the host with hypothesis and run in batches, one MicroPython
process per batch (tests/host/mpy_cases.py) at the ESP32-DevKitC's heap:

- /cmd payloads: always exactly one ack (ok or a clear error), never a crash;
- config.json contents: config.load never raises; a bad file gives an error naming the field and a config the
  node can still connect with;
- model files (truncation, bit flips, random bytes): a ModelError with a message, never a crash or a hang.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.board.boards import load_board
from edgefleet.model.modelfile import decode, encode
from edgefleet.runtime import find_micropython, micropython_env, unix_heap_bytes

CASES = Path(__file__).parents[1] / "firmware" / "mpy_cases.py"
BAD_TEXT = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
SIM = load_board("sim")
MODEL = (SIM.path.parents[1] / "models" / "basicmotions-rf" / "model.efm").read_bytes()
KEY = bytes(range(32))
SETTINGS = settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def run_batch(tmp: Path, cases: list[dict], timeout: float = 60) -> list[dict]:
    """One MicroPython process for the whole batch; every case must give a result line (no crash, no hang)."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    heap = unix_heap_bytes(load_board("esp32-devkitc").heap_bytes)
    r = subprocess.run(
        [find_micropython(), "-X", f"heapsize={heap}", str(CASES), "cases.jsonl", str(SIM.path)],
        cwd=tmp, env=micropython_env(), capture_output=True, text=True, errors="replace", timeout=timeout,
    )  # fmt: skip
    results = [json.loads(ln[7:]) for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and "DONE" in r.stdout and len(results) == len(cases), (r.stdout + r.stderr)[-3000:]
    return results


# ---- /cmd payloads

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
_cmd_obj = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, "1", None]) | _json,
        "id": st.text(min_size=0, max_size=40) | _json,
        "cmd": st.sampled_from(["ping", "set_config", "flush", "explode", ""]) | _json,
        "args": st.sampled_from([{}, None, {"status_interval_s": 5}, {"rates": {"env": 99}}, {"rule": None}]) | _json,
    },
)
_payload = (
    _cmd_obj.map(lambda d: json.dumps(d).encode())
    | _json.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=200)
    | st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass"))
)


@SETTINGS
@given(st.lists(_payload, min_size=150, max_size=150))
def test_every_command_payload_gets_one_ack(tmp_path_factory, payloads) -> None:
    cases = [{"kind": "cmd", "data": p.hex()} for p in payloads]
    for p, r in zip(payloads, run_batch(tmp_path_factory.mktemp("cmd"), cases), strict=True):
        assert "crash" not in r, (p, r)
        assert len(r["acks"]) == 1, (p, r)
        raw = bytes.fromhex(r["acks"][0]).decode()  # strict UTF-8: what the collector stores
        ack = json.loads(raw)
        assert not any(BAD_TEXT.search(str(v)) for v in ack.values()), ack  # storable text (protocol.py)
        assert ack["dev"] == "f1" and isinstance(ack["ok"], bool), ack
        if not ack["ok"]:
            assert isinstance(ack["error"], str) and ack["error"], ack


# ---- config.json

_FIELDS = ["device_id", "prefix", "broker", "wifi", "rates", "log_every", "status_interval_s", "max_batch_bytes",
           "ntp_host", "model", "model_key", "rule", "log", "mqtt", "bogus"]  # fmt: skip
_leaf = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12)
_small = _leaf | st.lists(_leaf, max_size=3) | st.dictionaries(st.text(max_size=8), _leaf, max_size=3)
_config = st.dictionaries(st.sampled_from(_FIELDS), _small, max_size=4).map(json.dumps) | st.text(max_size=40)


@SETTINGS
@given(st.lists(_config, min_size=100, max_size=100))
def test_config_load_never_raises_and_names_the_field(tmp_path_factory, texts) -> None:
    cases = [{"kind": "config", "text": t} for t in texts]
    for t, r in zip(texts, run_batch(tmp_path_factory.mktemp("cfg"), cases), strict=True):
        assert "crash" not in r, (t, r)
        assert isinstance(r["dev"], str) and r["url"].startswith(("mqtt://", "mqtts://")), (t, r)
        if r["err"] is not None:
            field = r["err"].split(":", 1)[0].split(".")[0]
            assert field in _FIELDS or field == "config", (t, r["err"])
            assert "model_key" not in t or KEY.hex() not in r["err"]


# ---- model files


def _mutations():
    n = len(MODEL)
    trunc = st.integers(0, n - 1).map(lambda k: MODEL[:k])
    flips = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 7)), min_size=1, max_size=4).map(
        lambda fl: _flip(MODEL, fl)
    )
    return trunc | flips | st.binary(min_size=0, max_size=300)


def _flip(data: bytes, flips) -> bytes:
    b = bytearray(data)
    for pos, bit in flips:
        b[pos] ^= 1 << bit
    return bytes(b)


@SETTINGS
@given(st.lists(_mutations(), min_size=80, max_size=80))
def test_corrupt_model_files_are_a_model_error(tmp_path_factory, blobs) -> None:
    cases = [{"kind": "model", "data": b.hex()} for b in blobs]
    for b, r in zip(blobs, run_batch(tmp_path_factory.mktemp("model"), cases), strict=True):
        assert "crash" not in r, r
        if len(b) == len(MODEL) and b[:-32] == MODEL[:-32]:
            continue  # only the signature field of an unsigned file changed: not read without a key
        assert r["ok"] is False and r["error"], (len(b), r)


# ---- signed models, versions and rollback (item 5)


def _model(version: int, key: bytes | None, downgrade: bool = False) -> bytes:
    mf = decode(MODEL)
    mf.model_version = version
    mf.downgrade = downgrade
    return encode(mf, key)


def test_node_enforces_signatures_versions_and_anti_rollback(tmp_path) -> None:
    v1, v3 = _model(1, KEY), _model(3, KEY)
    body = bytearray(v1[:-64])
    body[30:32] = (7).to_bytes(2, "little")  # the version lives in the header's flags: covered by the MAC
    forged = bytes(body) + hashlib.sha256(body).digest() + v1[-32:]  # a consistent sha256, the old MAC
    steps = [
        (_model(5, None), KEY, "model file is not signed but a key is configured"),
        (_model(5, bytes(32)), KEY, "signature does not verify"),
        (v3, KEY, 3),
        (v1, KEY, "model version 1 is older than version 3 this node ran: rollback refused"),
        (bytes(forged), KEY, "signature does not verify"),
        (v3, KEY, 3),
        (_model(1, KEY, downgrade=True), KEY, 1),  # the operator signed an explicit downgrade
        (v1, KEY, 1),
        (_model(0, None), None, "model version 0 is older than version 1"),  # the floor persists without a key
    ]
    cases = [{"kind": "model", "data": d.hex(), "key": k.hex() if k else None} for d, k, _ in steps]
    results = run_batch(tmp_path, cases)
    for (_, _, want), r in zip(steps, results, strict=True):
        if isinstance(want, int):
            assert r == {"ok": True, "version": want}, r
        else:
            assert r["ok"] is False and want in r["error"], (want, r)
    assert (tmp_path / "model.ver").read_text() == "1"  # persisted on the node's filesystem
