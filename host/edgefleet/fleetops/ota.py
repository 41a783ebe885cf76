"""Over-the-air updates, the host's side (issue 13 item 3; messages in docs/protocol.md "Over-the-air updates"):
load an artifact, make each device's copy and its signed offer, publish the chunks retained, send the offers,
follow the devices' reports, remove the chunks, roll devices back.

The message formats are wire/ota.py's (shared with the node's tests); this module adds what needs the registry
and the broker. The trust chain (docs/security.md): every offer carries a MAC with the addressed device's own
model key, and a model is re-signed with that key, so the per-device copy of a model has its own sha256 and
its own chunk set. A config or a code bundle is the same bytes for every device (one chunk set), which is why a
config artifact must not carry a secret: any device may read any chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgefleetError
from ..wire import ota, protocol
from .commands import OK, CmdResult, OperatorLink

log = logging.getLogger(__name__)

# Final states of a device's update (the node's reports, plus what the host concludes itself).
CONFIRMED, ROLLED_BACK, FAILED, TIMEOUT = "confirmed", "rolled_back", "failed", "timeout"
FINAL = (CONFIRMED, ROLLED_BACK, FAILED, TIMEOUT)
OFFER_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Artifact:
    """An artifact as loaded from its file: what it is, its version and bytes (before any per-device signing)."""

    path: str
    kind: str
    version: int
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def per_device(self) -> bool:
        """A model is re-signed for each device (its own bytes); a config or code bundle is shared."""
        return self.kind == "model"


def highest_recorded(registry, kind: str) -> int:
    """The highest version of `kind` the registry records any device running (0 when none)."""
    best = 0
    for dev in registry.devices():
        rec = ((dev.deployed or {}).get("ota") or {}).get(kind) or {}
        ver = rec.get("ver")
        if isinstance(ver, int) and not isinstance(ver, bool):
            best = max(best, ver)
        if kind == "model":
            mv = (dev.deployed or {}).get("model_version")
            if isinstance(mv, int) and not isinstance(mv, bool):
                best = max(best, mv)
    return best


def load_artifact(path: str | Path, kind: str | None = None, version: int | None = None, registry=None) -> Artifact:
    """Read and check an artifact file (a model directory means its model.efm). The kind comes from its first
    bytes (wire.ota.detect_kind) unless given. The version is `version`, else (a model) the one in its file when
    it is above every version the registry records, else one above the highest the registry records for that
    kind: a model straight from `edgefleet train` (version 0) rolls out with no step between. A model's version
    is the node's anti-rollback counter inside the file, so the file is re-encoded with it (each device's copy is
    signed with its key anyway). A config carrying a secret is refused: chunks are readable by every device."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.efm"
    try:
        data = p.read_bytes()
    except OSError as e:
        raise EdgefleetError(f"cannot read artifact {p}: {e.strerror}") from None
    if not data:
        raise EdgefleetError(f"artifact {p} is empty")
    try:
        found = ota.detect_kind(data)
    except protocol.ProtocolError as e:
        raise EdgefleetError(f"{p}: {e.reason}") from None
    if kind is not None and kind != found:
        raise EdgefleetError(f"{p} is a {found} artifact, not {kind}", hint=f"leave out --kind or use --kind {found}")
    kind = found
    if version is not None and not 1 <= version <= 0xFFFF:
        raise EdgefleetError(f"--version must be 1 to 65535 (got {version})")
    if kind == "model":
        from ..model.modelfile import decode, encode

        mf = decode(data)
        if version is None and registry is not None and mf.model_version <= highest_recorded(registry, kind):
            version = highest_recorded(registry, kind) + 1
        if version is None and mf.model_version < 1:
            raise EdgefleetError(f"{p} has model version 0 and there is no registry to count from",
                                 hint="give --version N (above the version the nodes run)")  # fmt: skip
        if version is not None and version != mf.model_version:
            if version > 0xFFFF:
                raise EdgefleetError(f"model version {version} is beyond 65535")
            mf.model_version = version
            data = encode(mf)  # unsigned here: each device's copy is signed with its own key (device_copy)
        version = mf.model_version
    elif kind == "config":
        cfg = json.loads(data)
        leaked = ota.config_secrets(cfg)
        if leaked:
            raise EdgefleetError(
                f"{p} carries secrets ({', '.join(leaked)}): every device can read a chunk, so a config artifact "
                "must not",
                hint="remove them; each node keeps its own (docs/protocol.md)",
            )
    else:
        try:
            ota.unbundle(data)
        except protocol.ProtocolError as e:
            raise EdgefleetError(f"{p}: {e.reason}") from None
    if version is None:
        if registry is None:
            raise EdgefleetError(f"a {kind} artifact needs --version N (or a registry to count from)")
        version = highest_recorded(registry, kind) + 1
        if version > 0xFFFF:
            raise EdgefleetError(f"{kind} version {version} is beyond 65535")
    return Artifact(str(p.resolve()), kind, version, data)  # absolute: `rollout resume` may run elsewhere


def device_copy(art: Artifact, device_key: bytes) -> bytes:
    """The bytes one device gets: a model re-signed with the device's key, anything else as is."""
    if not art.per_device:
        return art.data
    from .devices import sign_for_device

    return sign_for_device(art.data, device_key)


@dataclass
class DeviceOffer:
    """One device's copy, its offer (whose args carry the MAC with that device's key) and where its chunks go."""

    device: str
    data: bytes
    offer: ota.Offer
    args: dict

    @property
    def art(self) -> str:
        return self.offer.art


def make_offer(
    art: Artifact,
    device: str,
    device_key: bytes,
    chunk: int = ota.DEFAULT_CHUNK,
    confirm_s: int = ota.DEFAULT_CONFIRM_S,
) -> DeviceOffer:
    data = device_copy(art, device_key)
    try:
        offer = ota.offer_for(device, art.kind, art.version, data, chunk, confirm_s)
    except protocol.ProtocolError as e:
        raise EdgefleetError(f"cannot offer {art.path} to {device}: {e.reason}") from None
    return DeviceOffer(device, data, offer, offer.args(device_key))


def device_key(registry, device: str) -> bytes:
    """A device's model key from the registry's secrets directory (checked against its registered fingerprint)."""
    from .devices import key_fingerprint

    dev = registry.get(device)
    path = registry.key_path(device)
    try:
        key = path.read_bytes()
    except OSError as e:
        raise EdgefleetError(
            f"cannot read {device}'s model key {path}: {e.strerror}",
            hint="--secrets-dir must be the directory `device add` wrote",
        ) from None
    if key_fingerprint(key) != dev.key_sha256:
        raise EdgefleetError(f"{path} is not {device}'s registered model key", hint=f"edgefleet device rotate {device}")
    return key


def chunk_messages(prefix: str, data: bytes, chunk: int) -> list[tuple[str, bytes]]:
    art = ota.art_id(hashlib.sha256(data).hexdigest())
    return [(ota.chunk_topic(prefix, art, n), payload) for n, payload in ota.chunks(data, chunk)]


def clear_messages(prefix: str, size: int, sha256: str, chunk: int) -> list[tuple[str, bytes]]:
    """Empty retained payloads: the broker then forgets the chunks."""
    art = ota.art_id(sha256)
    return [(ota.chunk_topic(prefix, art, n), b"") for n in range(ota.n_chunks(size, chunk))]


@dataclass
class DeviceReport:
    """What a device last said about this update: its `ota` report, or the host's conclusion (timeout)."""

    device: str
    state: str
    got: int = 0
    size: int = 0
    reason: str | None = None
    since: float = field(default_factory=time.monotonic)


def report_for(status: dict | None, kind: str, ver: int | None) -> dict | None:
    """The device's `ota` report if it is about this update (kind, and version unless `ver` is None), else None."""
    rep = (status or {}).get("ota")
    if isinstance(rep, dict) and rep.get("kind") == kind and (ver is None or rep.get("ver") == ver):
        return rep
    return None


def running(status: dict | None, kind: str, ver: int) -> bool:
    """Whether a device's status says it runs `ver` of `kind` (ota_ver)."""
    vers = (status or {}).get("ota_ver")
    return isinstance(vers, dict) and vers.get(kind) == ver


class Sender:
    """Offers, chunks and rollbacks over one operator connection (commands.OperatorLink with status watching)."""

    def __init__(self, link: OperatorLink, prefix: str, offer_timeout_s: float = OFFER_TIMEOUT_S) -> None:
        self.link = link
        self.prefix = prefix
        self.offer_timeout_s = offer_timeout_s

    def publish_chunks(self, offers: Sequence[DeviceOffer]) -> int:
        """Publish each distinct artifact's chunks retained, QoS 1, acknowledged by the broker; returns bytes."""
        done: set[str] = set()
        sent = 0
        for o in offers:
            if o.art in done:
                continue
            done.add(o.art)
            msgs = chunk_messages(self.prefix, o.data, o.offer.chunk)
            self.link.publish(msgs, retain=True)
            sent += sum(len(p) for _, p in msgs)
        return sent

    def clear_chunks(self, offers: Sequence[tuple[int, str, int]]) -> None:
        """Remove the retained chunks of each (size, sha256, chunk)."""
        seen: set[str] = set()
        for size, sha, chunk in offers:
            if sha in seen:
                continue
            seen.add(sha)
            self.link.publish(clear_messages(self.prefix, size, sha, chunk), retain=True)

    def offer(self, offers: Sequence[DeviceOffer]) -> list[CmdResult]:
        return self.link.command([(o.device, "ota", o.args) for o in offers], self.offer_timeout_s)

    def rollback(self, devices: Sequence[str], kind: str) -> list[CmdResult]:
        return self.link.command([(d, "ota_rollback", {"kind": kind}) for d in devices], self.offer_timeout_s)


def offer_state(res: CmdResult) -> tuple[str, str]:
    """(state, detail) after an offer's ack: downloading, confirmed (the node runs that sha256 already), or
    failed / timeout with the node's reason."""
    if res.result != OK:
        return (TIMEOUT if res.result == "timeout" else FAILED), res.detail
    result = (res.ack or {}).get("result") or {}
    state = result.get("state") if isinstance(result, dict) else None
    if state == "current":
        return CONFIRMED, "already running it"
    return "downloading", f"resumed at {result.get('got')}" if isinstance(result, dict) and result.get("got") else ""


def wait_reports(
    link: OperatorLink,
    devices: Sequence[str],
    kind: str,
    ver: int,
    timeout_s: float,
    want: Sequence[str] = FINAL,
    on_change: Callable[[str, dict], None] | None = None,
    progress: Callable[[dict[str, str]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress_every_s: float = 10.0,
    any_version: bool = False,
) -> dict[str, DeviceReport]:
    """Follow the devices' retained status until each reports a state in `want` for this update (kind, ver), or
    `timeout_s` passes (those are `timeout`). `on_change(device, report)` at each new state (the rollout writes
    it to the database), `progress(states)` every `progress_every_s`, `should_stop()` checked between polls.
    `any_version`: a report of this kind in a wanted state counts whatever version it names (after an
    ota_rollback a node may report the version it went back to or the one it left)."""
    last: dict[str, str] = {d: "" for d in devices}
    reports: dict[str, DeviceReport] = {}
    deadline = time.monotonic() + timeout_s
    next_progress = time.monotonic() + progress_every_s
    while True:
        statuses = link.statuses()
        for d in devices:
            if d in reports:
                continue
            rep = report_for(statuses.get(d), kind, None if any_version else ver)
            if rep is None:
                continue
            key = f"{rep['state']}:{rep['got']}"
            if key != last[d]:
                last[d] = key
                if on_change is not None:
                    on_change(d, rep)
            if rep["state"] in want:
                reports[d] = DeviceReport(d, rep["state"], rep["got"], rep["size"], rep["reason"])
        if len(reports) == len(devices):
            return reports
        now = time.monotonic()
        lost = link.lost_detail()
        if lost is not None:
            raise EdgefleetError(lost)
        if should_stop is not None and should_stop():
            return reports
        if now >= deadline:
            for d in devices:
                if d not in reports:
                    cur = last[d].split(":")[0] or "no report"
                    reports[d] = DeviceReport(d, TIMEOUT, reason=f"no final state within {timeout_s:.0f} s ({cur})")
            return reports
        if progress is not None and now >= next_progress:
            next_progress = now + progress_every_s
            progress({d: (reports[d].state if d in reports else (last[d].split(":")[0] or "offered")) for d in devices})
        link.wait_status(min(1.0, max(0.05, deadline - now)))
