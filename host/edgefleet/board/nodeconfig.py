"""The node's config.json as the host writes it (deploy, simulate), built and checked by the node's own code.

firmware/node/config.py defines the defaults, the merge rules and the validation the node applies at boot. The
host imports that same file (it is written in the Python subset both runtimes run), so a config the host
writes is the one the node accepts, and a bad one is refused here with the node's own message instead of
booting the node into safe mode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import EdgefleetError
from .boards import Board
from .firmware_shared import firmware_module


def rule_for_model(model_file: Path | None) -> dict[str, Any] | None:
    """A sensible output rule for a model: relay on "running" (or its first class), LED on an anomaly."""
    manifest = model_file.parent / "manifest.json" if model_file else None
    if manifest and manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("task") == "classify" and m.get("classes"):
            on = "running" if "running" in m["classes"] else m["classes"][0]
            return {"output": "relay", "on_class": on}
        if m.get("task") == "anomaly":
            return {"output": "led", "on_anomaly_over": 0.8}
    return None


def build(
    board: Board,
    device_id: str,
    overrides: dict[str, Any],
    model_file: Path | None,
    model_key: bytes | None = None,
    full: bool = True,
) -> dict[str, Any]:
    """The node's defaults for this board, with `overrides` merged the way the node merges them, validated.

    Without a model the decision stage is off (model and rule null); with one, the rule comes from the
    overrides or from the model's manifest. `model_key` (the signing key's bytes) goes into the config as hex:
    the node then loads only models signed with it (the config is a secret: ESP32 flash encryption,
    docs/security.md). With `full=False` only what the host decides is returned (the same config once the node
    merges it over its defaults at boot, validated the same way): the simulator writes that, a smaller file for
    a node to parse on a tight heap.
    """
    nc = firmware_module("node/config.py")
    if not nc.valid_device_id(device_id):
        raise EdgefleetError(f"invalid device id {device_id!r}", hint="1-32 characters of A-Z a-z 0-9 _ -")
    decided = {"model": "model.efm" if model_file else None, "rule": rule_for_model(model_file) if model_file else None}
    decided = nc.merge(decided, overrides)
    decided["device_id"] = device_id
    if model_key is not None:
        decided["model_key"] = model_key.hex()
    cfg = nc.merge(nc.defaults_for(board.data), decided)
    err = nc.validate(cfg, board.data)
    if err:
        raise EdgefleetError(f"invalid node config for board {board.name}: {err}")
    return cfg if full else decided
