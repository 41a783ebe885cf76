"""Per-device model keys for the fleet simulator (host/edgefleet/sim/simulate.py `Fleet(keys=...)`): a keyed node's
config carries its key and its model file is the fleet's re-signed with that key (same version), which the node's own
loader accepts; unkeyed nodes are unchanged; a bad key file is one clear error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edgefleet.errors import EdgefleetError
from edgefleet.model.modelfile import decode, resign
from edgefleet.runtime import find_micropython, micropython_env
from edgefleet.sim.simulate import Fleet

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "basicmotions-rf" / "model.efm"
KEY = bytes(range(32))


def test_keyed_node_gets_its_key_and_a_model_signed_with_it(tmp_path: Path) -> None:
    v3 = tmp_path / "v3.efm"
    v3.write_bytes(resign(MODEL.read_bytes(), b"\x07" * 32, model_version=3))
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"node-001": KEY.hex()}))
    fleet = Fleet(tmp_path / "fleet", 2, broker_url="mqtt://127.0.0.1:1883", model=v3, keys=keys)
    keyed, plain = fleet.nodes
    assert fleet.node_config(keyed)["model_key"] == KEY.hex()
    assert "model_key" not in fleet.node_config(plain)
    signed = fleet.node_model(keyed)
    mf = decode(signed.read_bytes(), KEY)  # verifies with the device's key
    assert mf.signed and mf.model_version == 3
    assert fleet.node_model(plain) == v3.resolve()
    # the node's own loader (firmware/node/model.py) accepts it with that key and refuses it with another
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys\nfrom node import model\n"
        "r = model.load(sys.argv[1], bytes(range(32)))\nprint('ok', r.version)\n"
        "try:\n    model.load(sys.argv[1], bytes(32))\nexcept model.ModelError as e:\n    print('refused', e)\n"
    )
    out = subprocess.run([find_micropython(), str(probe), str(signed)], env=micropython_env(), capture_output=True,
                         text=True, cwd=tmp_path, timeout=60)  # fmt: skip
    assert "ok 3" in out.stdout and "refused" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("text", ["[1]", '{"node-001": "zz"}', '{"node-001": "00"}'])
def test_bad_key_file(tmp_path: Path, text: str) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(text)
    with pytest.raises(EdgefleetError, match="key file"):
        Fleet(tmp_path / "fleet", 1, broker_url="mqtt://127.0.0.1:1883", keys=keys)
