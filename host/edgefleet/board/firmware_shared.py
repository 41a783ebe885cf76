"""Firmware modules the host runs too: the files written in the Python subset both runtimes run.

Loading them from firmware/ (rather than keeping a host copy) is what keeps a contract defined once: the
window features (node/features.py) and the node config rules (node/config.py).
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from types import ModuleType

from ..paths import firmware_dir


@cache
def firmware_module(relpath: str) -> ModuleType:
    """firmware/<relpath> imported under CPython, once per process. Its own `from node.x import ...` find
    firmware/node/x.py (the node's config rules span node/config.py and node/cfgset.py)."""
    _node_package()
    path = firmware_dir() / relpath
    name = "edgefleet_fw_" + relpath.removesuffix(".py").replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _node_package() -> None:
    """`node` as a namespace over firmware/node/ for the firmware modules loaded here; never replaces an
    existing `node` module."""
    if "node" in sys.modules:
        return
    pkg = ModuleType("node")
    pkg.__path__ = [str(firmware_dir() / "node")]
    sys.modules["node"] = pkg
