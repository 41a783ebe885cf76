"""tests/firmware holds MicroPython tests (tests/plugins/mpy_plugin.py runs every test_*.py here on the
unix port), except the few listed in CPYTHON, which check the firmware's source from the host and run as
ordinary pytest modules."""

from __future__ import annotations

from pathlib import Path

import pytest

CPYTHON = {"test_firmware_layout.py"}


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if module_path.name in CPYTHON:
        return pytest.Module.from_parent(parent, path=module_path)
    return None
