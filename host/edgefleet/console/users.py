"""Console users: a JSON file of names, roles and scrypt password hashes (0600 from creation).

Why scrypt from hashlib: memory-hard, in the standard library, so no extra dependency for the one thing that must
not be weak. Parameters are stored with each hash so they can be raised later without breaking old entries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgefleetError

ROLES = ("viewer", "operator")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 8


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def can_command(self) -> bool:
        return self.role == "operator"


def hash_password(
    password: str, salt: bytes | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> str:
    salt = salt or secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${dk.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, want = stored.split("$")
        if algo != "scrypt":
            return False
        got = hash_password(password, bytes.fromhex(salt), int(n), int(r), int(p)).split("$")[-1]
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


class UserStore:
    """The users file. Read on every login, so `serve user add` takes effect without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _load(self) -> dict:
        if not self.path.is_file():
            return {"users": {}}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise EdgefleetError(f"cannot read users file {self.path}: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("users"), dict):
            raise EdgefleetError(f"{self.path} is not a console users file")
        return data

    def _save(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path)

    def names(self) -> dict[str, str]:
        return {n: u["role"] for n, u in self._load()["users"].items()}

    def add(self, name: str, role: str, password: str, replace: bool = False) -> None:
        if not NAME_RE.match(name):
            raise EdgefleetError(f"bad user name {name!r}", hint="1-32 letters, digits, '_', '.', '-'")
        if role not in ROLES:
            raise EdgefleetError(f"unknown role {role!r}", hint="viewer or operator")
        if len(password) < MIN_PASSWORD:
            raise EdgefleetError(f"password too short (at least {MIN_PASSWORD} characters)")
        data = self._load()
        if name in data["users"] and not replace:
            raise EdgefleetError(f"user {name} exists", hint="use `serve user passwd` to change the password")
        data["users"][name] = {"role": role, "password": hash_password(password)}
        self._save(data)

    def remove(self, name: str) -> None:
        data = self._load()
        if data["users"].pop(name, None) is None:
            raise EdgefleetError(f"no user {name}")
        self._save(data)

    def check(self, name: str, password: str) -> User | None:
        entry = self._load()["users"].get(name)
        if entry is None:
            hash_password(password)  # same work either way: no user-name oracle from timing
            return None
        if not verify_password(password, entry.get("password", "")):
            return None
        return User(name, entry["role"])
