"""Secrets out of sight: the one helper that hides passwords in URLs and text, and 0600 secret files.

Every place that prints or logs a broker or database URL goes through `redact_url`; every error text that may
quote one (a driver's message can) goes through `redact_text`. Passwords reach edgefleet from a file or the
environment, never from the command line (the process list shows every user the arguments); see
docs/collect.md "Credentials".
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import EdgefleetError

MASK = "***"
# scheme://user:password@ — the password part, whatever the scheme
_USERINFO_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")
# key=value connection strings (libpq): password=...
_KV_RE = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|\S+)", re.I)


def redact_url(url: str) -> str:
    """`url` with its password (if any) replaced by ***; anything unparsable goes through redact_text."""
    try:
        u = urlsplit(url)
        if u.password is None:
            return redact_text(url)
        host = u.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{u.username or ''}:{MASK}@{host}" + (f":{u.port}" if u.port else "")
        return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
    except ValueError:
        return redact_text(url)


def redact_text(text: str, *urls: str) -> str:
    """`text` with the passwords of `urls`, and of any URL or password=... it contains, replaced by ***."""
    for url in urls:
        try:
            pw = urlsplit(url).password
        except ValueError:
            pw = None
        if pw:
            text = text.replace(pw, MASK).replace(unquote(pw), MASK)
    text = _USERINFO_RE.sub(lambda m: m["head"] + MASK + m["tail"], text)
    return _KV_RE.sub(lambda m: m["head"] + MASK, text)


def url_password(url: str) -> str | None:
    try:
        pw = urlsplit(url).password
    except ValueError:
        return None
    return unquote(pw) if pw else None


def refuse_password_in_url(url: str, option: str, where: str) -> None:
    """A password on the command line is visible to every user (ps, /proc) and lands in shell history."""
    if url_password(url) is not None:
        raise EdgefleetError(
            f"{option} {redact_url(url)} has a password in it; a password on the command line is visible to "
            "every user of this machine",
            hint=where,
        )


def read_secret_file(path: str | Path) -> str:
    """A password file: its first line, without the line end (a password may contain spaces)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise EdgefleetError(f"cannot read password file {p}: {e.strerror}") from None
    line = text.split("\n", 1)[0].rstrip("\r")
    if not line:
        raise EdgefleetError(f"password file {p} is empty")
    if os.name == "posix" and p.stat().st_mode & 0o077:
        # A warning, not a refusal: the file may be on a filesystem without modes (a mounted secret).
        import logging

        logging.getLogger(__name__).warning("password file %s is readable by others (chmod 600 it)", p)
    return line


def write_secret_file(path: str | Path, data: bytes | str) -> Path:
    """Create (or replace) a file readable by its owner only, 0600 from the first byte: os.open with the mode,
    so there is no moment when the secret sits in a file with the umask's permissions."""
    p = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is ANDed with the umask; a stricter umask is fine, a file reused is not
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
    return p
