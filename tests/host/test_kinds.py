"""Contract 5: the sensor kinds are defined in exactly one place (firmware/node/kinds.py), and every view of them
(the node on the unix port, the sim board, the host loader, the console's units) is that table."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

from edgefleet.board.firmware_shared import channel_units, kind_channels, kinds_table
from edgefleet.console.homeassistant import CHANNELS
from edgefleet.paths import firmware_dir
from edgefleet.runtime import find_micropython, micropython_env

ROOT = Path(__file__).resolve().parents[2]
KIND_NAMES = ("bme280", "mpu6050", "dht22", "adc")

_NODE_VIEW = """
import json
from node import kinds, cfgset, clean
from simboard import scenario
out = {}
for k in kinds.KINDS:
    ch = kinds.channels(k)
    out[k] = {"channels": list(ch), "max_rate": cfgset.max_rate({"type": k}),
              "stuck_n_1hz": clean.default_stuck_n(1, k),
              "limits": [list(kinds.limits(k, c)) if kinds.limits(k, c) else None for c in ch],
              "sim_channels": list(scenario.CHANNELS[k]), "sim_defaults": sorted(scenario.DEFAULTS[k])}
print(json.dumps(out))
"""


def test_node_and_sim_board_on_unix_port_read_the_host_table(tmp_path: Path) -> None:
    script = tmp_path / "view.py"
    script.write_text(_NODE_VIEW)
    env = micropython_env(source=True)
    res = subprocess.run([find_micropython(), str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr + res.stdout
    node = json.loads(res.stdout.strip().splitlines()[-1])
    table = kinds_table()
    assert sorted(node) == sorted(table) == sorted(KIND_NAMES)
    for kind, (rate, stuck_s, chans) in table.items():
        names = [c[0] for c in chans]
        assert node[kind]["channels"] == names == list(kind_channels()[kind])
        assert node[kind]["sim_channels"] == names
        assert node[kind]["sim_defaults"] == sorted(names), f"sim defaults of {kind} do not match the table"
        assert node[kind]["max_rate"] == rate
        assert node[kind]["stuck_n_1hz"] == max(8, stuck_s)
        assert node[kind]["limits"] == [list(c[2]) if c[2] else None for c in chans]


def test_console_units_come_from_the_table() -> None:
    units = channel_units()
    for kind, (_, _, chans) in kinds_table().items():
        for name, unit, _ in chans:
            assert units[name] == unit, f"{kind}.{name}: channel {name} has two units across kinds"
            assert CHANNELS[name][1] == unit
    assert CHANNELS["temperature"] == ("temperature", "°C") and CHANNELS["gx"] == (None, "°/s")


def _kind_tables(path: Path) -> list[str]:
    """Module-level dict literals in `path` keyed by two or more sensor kind names: a copy of the kinds table."""
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (SyntaxError, UnicodeDecodeError):
        return []
    found = []
    for node in tree.body:
        value = getattr(node, "value", None)
        if isinstance(value, ast.Dict):
            keys = {k.value for k in value.keys if isinstance(k, ast.Constant)}
            if len(keys & set(KIND_NAMES)) >= 2:
                targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
                found.append(f"{path.relative_to(ROOT)} {ast.unparse(targets[0])}")
    return found


def test_no_second_kinds_table() -> None:
    tables = []
    for top in ("firmware", "host", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            tables += _kind_tables(path)
    # the sim board's level/noise defaults are keyed by kind but are simulation data, checked against the
    # table above (sim_defaults); everything else keyed by kind is a copy
    assert tables == ["firmware/node/kinds.py KINDS", "firmware/simboard/scenario.py DEFAULTS"], tables
    assert firmware_dir() == ROOT / "firmware"
