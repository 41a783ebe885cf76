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


def writable_dir(path: str | Path, what: str) -> Path:
    """The directory a command writes into (--workdir, --dir), created with its parents if missing.

    Why: a file in its place, an empty argument or a read-only parent otherwise surface as a traceback from deep
    inside the command, sometimes after a broker was started. Refused here, before anything starts, in one line.
    """
    if not str(path).strip():
        raise EdgefleetError(f"{what} is empty", hint="give a directory path")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise EdgefleetError(f"{what} {p} is not a directory", hint="give a directory (it is created if missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgefleetError(f"cannot create {what} {p}: {e.strerror}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise EdgefleetError(f"{what} {p} is not writable", hint=f"check the permissions of {p}")
    return p
