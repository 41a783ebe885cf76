"""Where the project's non-Python trees live.

edgefleet is used from a checkout: firmware/, boards/ and models/ sit beside host/. The package finds them
relative to its own source file, and EDGEFLEET_HOME overrides that for installs outside a checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import EdgefleetError


def project_root() -> Path:
    env = os.environ.get("EDGEFLEET_HOME")
    root = Path(env) if env else Path(__file__).resolve().parents[2]
    if not (root / "firmware").is_dir() or not (root / "boards").is_dir():
        raise EdgefleetError(
            f"cannot find edgefleet's firmware/ and boards/ under {root}",
            hint="run from an edgefleet checkout, or set EDGEFLEET_HOME to one",
        )
    return root


def firmware_dir() -> Path:
    return project_root() / "firmware"


def boards_dir() -> Path:
    return project_root() / "boards"


def models_dir() -> Path:
    return project_root() / "models"
