"""The over-the-air update messages on the host side (docs/protocol.md, "Over-the-air updates"): the offer and
its MAC, the chunk topics and payloads, the code bundle. Defined once here; the node's side is
firmware/node/ota.py, and tests check the two agree byte for byte.

Pure functions on bytes: no broker, no database, so the rollout code and the tests build the same messages.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .protocol import DEVICE_RE, OTA_KINDS, OTA_STATES, ProtocolError

KINDS = OTA_KINDS  # defined in protocol.py, which validates the status report with them (no import cycle)
MIN_CHUNK = 256
MAX_CHUNK = 2048
DEFAULT_CHUNK = 1024  # fits the node's 4 KB MQTT input limit with room; overhead per chunk ~ 4 % (CRC + topic)
MIN_CONFIRM_S = 10
MAX_CONFIRM_S = 3600
DEFAULT_CONFIRM_S = 60
MAC_TAG = "efota1"
CRC_BYTES = 4
STATES = OTA_STATES
BUNDLE_MAGIC = b"EFCB"
MODEL_MAGIC = b"EFML"
# Fields a config artifact must not carry: chunks are readable by every device. The node keeps its own.
SECRET_FIELDS = (("device_id",), ("broker", "username"), ("broker", "password"), ("wifi", "password"), ("model_key",))
_BUNDLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,62}")


def art_id(sha256_hex: str) -> str:
    """The artifact's short id in its chunk topics: equal bytes share one set of retained chunks."""
    return sha256_hex[:16]


def chunk_topic(prefix: str, art: str, n: int) -> str:
    """`<prefix>/ota/<art>/<n>`: four levels, so never a device's `<prefix>/<dev>/<kind>`."""
    return f"{prefix}/ota/{art}/{n}"


def chunk_filter(prefix: str) -> str:
    """Every chunk topic under the prefix (the ACL's and the collector's view of them)."""
    return f"{prefix}/ota/#"


def is_chunk_topic(prefix: str, topic: str) -> bool:
    return topic.startswith(f"{prefix}/ota/") and topic.count("/") == prefix.count("/") + 3


def n_chunks(size: int, chunk: int) -> int:
    return (size + chunk - 1) // chunk


def chunk_payload(data: bytes, n: int, chunk: int) -> bytes:
    """Chunk n of `data` as sent: CRC-32 of the piece (4 bytes big-endian), then the piece."""
    piece = data[n * chunk : (n + 1) * chunk]
    if not piece:
        raise ValueError(f"chunk {n} is past the end of a {len(data)}-byte artifact")
    return struct.pack(">I", binascii.crc32(piece) & 0xFFFFFFFF) + piece


def chunks(data: bytes, chunk: int) -> Iterator[tuple[int, bytes]]:
    for n in range(n_chunks(len(data), chunk)):
        yield n, chunk_payload(data, n, chunk)


def mac_text(dev: str, kind: str, ver: int, size: int, sha256_hex: str, chunk: int, confirm_s: int) -> bytes:
    """What the offer's MAC covers: the device (so an offer cannot be replayed to another one) and every field
    the node acts on."""
    return f"{MAC_TAG}|{dev}|{kind}|{ver}|{size}|{sha256_hex}|{chunk}|{confirm_s}".encode("ascii")


@dataclass(frozen=True)
class Offer:
    """One device's offer of one artifact (the `args` of its `ota` command)."""

    dev: str
    kind: str
    ver: int
    size: int
    sha256: str
    chunk: int = DEFAULT_CHUNK
    confirm_s: int = DEFAULT_CONFIRM_S

    def __post_init__(self) -> None:
        if not DEVICE_RE.fullmatch(self.dev):
            raise ProtocolError("bad device id")
        if self.kind not in KINDS:
            raise ProtocolError(f"artifact kind must be one of {', '.join(KINDS)}")
        if not 1 <= self.ver <= 0xFFFF:
            raise ProtocolError("artifact version must be 1 to 65535")
        if self.size < 1:
            raise ProtocolError("empty artifact")
        if not MIN_CHUNK <= self.chunk <= MAX_CHUNK:
            raise ProtocolError(f"chunk size must be {MIN_CHUNK} to {MAX_CHUNK} bytes")
        if not MIN_CONFIRM_S <= self.confirm_s <= MAX_CONFIRM_S:
            raise ProtocolError(f"confirm time must be {MIN_CONFIRM_S} to {MAX_CONFIRM_S} s")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ProtocolError("sha256 must be 64 lowercase hex digits")

    @property
    def art(self) -> str:
        return art_id(self.sha256)

    def mac(self, key: bytes) -> str:
        text = mac_text(self.dev, self.kind, self.ver, self.size, self.sha256, self.chunk, self.confirm_s)
        return hmac.new(key, text, hashlib.sha256).hexdigest()

    def args(self, key: bytes) -> dict:
        """The command's args, signed with the device's key."""
        return {
            "kind": self.kind,
            "ver": self.ver,
            "size": self.size,
            "sha256": self.sha256,
            "art": self.art,
            "chunk": self.chunk,
            "confirm_s": self.confirm_s,
            "mac": self.mac(key),
        }


def offer_for(dev: str, kind: str, ver: int, data: bytes, chunk: int = DEFAULT_CHUNK,
              confirm_s: int = DEFAULT_CONFIRM_S) -> Offer:  # fmt: skip
    return Offer(dev, kind, ver, len(data), hashlib.sha256(data).hexdigest(), chunk, confirm_s)


def bundle(files: dict[str, bytes]) -> bytes:
    """A code bundle: `EFCB`, u16 count, then per file u8 name length, name, u32 size, bytes (little-endian)."""
    out = [BUNDLE_MAGIC, struct.pack("<H", len(files))]
    for name, data in sorted(files.items()):
        if not _BUNDLE_NAME.fullmatch(name) or ".." in name.split("/"):
            raise ProtocolError(f"bad file name in a code bundle: {name!r}")
        raw = name.encode("ascii")
        out += [struct.pack("<B", len(raw)), raw, struct.pack("<I", len(data)), data]
    return b"".join(out)


def unbundle(data: bytes) -> dict[str, bytes]:
    """The files of a code bundle; ProtocolError for anything that is not one."""
    if data[:4] != BUNDLE_MAGIC or len(data) < 6:
        raise ProtocolError("not a code bundle")
    (count,) = struct.unpack_from("<H", data, 4)
    pos, files = 6, {}
    for _ in range(count):
        if pos >= len(data):
            raise ProtocolError("code bundle cut short")
        n = data[pos]
        name = data[pos + 1 : pos + 1 + n].decode("ascii", "replace")
        pos += 1 + n
        if pos + 4 > len(data):
            raise ProtocolError("code bundle cut short")
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if not _BUNDLE_NAME.fullmatch(name) or ".." in name.split("/") or pos + size > len(data):
            raise ProtocolError(f"bad entry {name!r} in a code bundle")
        files[name] = data[pos : pos + size]
        pos += size
    if pos != len(data):
        raise ProtocolError("trailing bytes after a code bundle")
    return files


def detect_kind(data: bytes) -> str:
    """model, code or config, from the artifact's first bytes; ProtocolError for anything else."""
    if data[:4] == MODEL_MAGIC:
        return "model"
    if data[:4] == BUNDLE_MAGIC:
        return "code"
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        obj = None
    if isinstance(obj, dict):
        return "config"
    raise ProtocolError("not an artifact: a model file (EFML), a code bundle (EFCB) or a node config (JSON object)")


def config_secrets(cfg: dict) -> list[str]:
    """The secret fields a config artifact carries (must be none), as dotted names."""
    found = []
    for path in SECRET_FIELDS:
        node = cfg
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            found.append(".".join(path))
    return found
