"""Firmware modules the host runs too: the files written in the Python subset both runtimes run.

Loading them from firmware/ (rather than keeping a host copy) is what keeps a contract defined once: the
window features (node/features.py) and the node config rules (node/config.py).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from types import ModuleType

from .paths import firmware_dir


@cache
def firmware_module(relpath: str) -> ModuleType:
    """firmware/<relpath> imported under CPython, once per process."""
    path = firmware_dir() / relpath
    name = "edgefleet_fw_" + relpath.removesuffix(".py").replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
