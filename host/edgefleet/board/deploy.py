"""`edgefleet deploy` and `edgefleet repl`: put the node's files on a board's filesystem over its serial REPL.

What goes on the board (paths on the board's flash root): the files firmware/manifest.py lists (boot.py, main.py,
the node package; on the sim board firmware/manifest_sim.py, which adds the simulated board, simboard/), as .mpy
compiled for the board's arch (firmware_build, the same tree the unix-port runs use), board.json (the board definition,
which the node reads and which the next deploy checks), config.json (the node config, see docs/sensors.md "Node
config"), model.efm when --model is given, and C module .mpy files built for the board's arch (from
build/cmodule/<arch>/) into /lib. Only files whose sha256 differs from the board's copy are sent, and every
file is hashed again on the board afterwards: a deploy that reports success has verified every byte.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from ..errors import EdgefleetError
from ..model.modelfile import read_key
from ..paths import firmware_dir, project_root
from ..wire.url import parse_broker_url
from . import nodeconfig
from .boards import Board, load_board
from .manifest import MANIFEST, SIM_MANIFEST, manifest_files

log = logging.getLogger(__name__)

CHUNK = 512  # bytes per raw-REPL write; a few hundred bytes keep each exec well inside a 110 KB heap


# The snippet that runs ON the board: sha256 of each named file (None if absent) and, for the directories we
# own, every file that is there, so stale modules from an older firmware can be removed.
HASH_SNIPPET = """
import hashlib, binascii, os
def _efh(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(256)
    m = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(m[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
def _efw(d, out):
    try:
        it = os.ilistdir(d)
    except OSError:
        return
    for e in it:
        p = d + '/' + e[0]
        if e[1] & 0x4000:
            _efw(p, out)
        else:
            out.append(p)
_efo = []
for _d in %(dirs)r:
    _efw(_d, _efo)
print(repr(({p: _efh(p) for p in %(paths)r}, _efo)))
del _efh, _efw, _efo
"""


class Link(Protocol):
    def exec(self, code: str) -> str: ...
    def write_file(self, path: str, data: bytes) -> None: ...
    def close(self, reset: bool) -> None: ...


def check_port(port: str) -> None:
    """A missing serial port as one clear message before mpremote or esptool try it (their errors for a board
    that is not plugged in are long tracebacks); flash, deploy and repl all check here. URLs (rfc2217://,
    socket://) are left to the tool."""
    if "://" not in port and not os.path.exists(port):
        raise EdgefleetError(
            f"no such serial port: {port}",
            hint="plug the board in and check `ls /dev/ttyUSB* /dev/ttyACM*` (Linux) or `mpremote connect list`",
        )


class MpremoteLink:
    """mpremote's serial transport (its Python API): raw REPL with raw-paste, as `mpremote` itself uses it."""

    def __init__(self, port: str, baud: int) -> None:
        from mpremote.transport import TransportError

        check_port(port)
        from mpremote.transport_serial import SerialTransport

        try:
            self.t = SerialTransport(port, baudrate=baud)
            # Ctrl-C stops main.py, then a soft reset in the raw REPL (which runs boot.py, not main.py) frees the
            # heap the stopped node still holds: on a 110 KB board the hashing and copying need it.
            self.t.enter_raw_repl(soft_reset=True)
        except TransportError as e:
            raise EdgefleetError(f"cannot get a MicroPython REPL on {port}: {e}",
                                 hint="is MicroPython flashed (`edgefleet flash`)? is another program using the port?") from None  # fmt: skip

    def exec(self, code: str) -> str:
        from mpremote.transport import TransportError, TransportExecError

        try:
            return self.t.exec(code).decode(errors="replace")
        except TransportExecError as e:
            raise EdgefleetError(f"the board reported an error:\n{e.error_output.strip()}") from None
        except TransportError as e:
            raise EdgefleetError(f"lost the board's REPL: {e}") from None

    def write_file(self, path: str, data: bytes) -> None:
        self.t.fs_writefile(path, data, chunk_size=CHUNK)

    def close(self, reset: bool) -> None:
        self.t.exit_raw_repl()
        if reset:  # Ctrl-D in the friendly REPL: soft reset, the node boots the new files (boot.py, main.py)
            self.t.serial.write(b"\x04")
            self.t.serial.flush()
        self.t.close()


class AmpyLink:
    """adafruit-ampy, for boards or adapters where mpremote's raw-paste mode misbehaves."""

    def __init__(self, port: str, baud: int) -> None:
        from ampy.files import Files
        from ampy.pyboard import Pyboard, PyboardError

        check_port(port)
        self.error = PyboardError
        try:
            self.pyb = Pyboard(port, baudrate=baud)
            self.pyb.serial.timeout = 10  # ampy reads block forever by default; a silent board must end in an error
        except PyboardError as e:
            raise EdgefleetError(f"cannot open {port} with ampy: {e}") from None
        self.files = Files(self.pyb)

    def exec(self, code: str) -> str:
        try:
            self.pyb.enter_raw_repl()
            out = self.pyb.exec_(code)
            self.pyb.exit_raw_repl()
        except self.error as e:
            raise EdgefleetError(f"the board reported an error (ampy): {e}") from None
        return out.decode(errors="replace")

    def write_file(self, path: str, data: bytes) -> None:
        self.files.put(path, data)

    def close(self, reset: bool) -> None:
        if reset:
            self.pyb.serial.write(b"\x04")
        self.pyb.close()


def open_link(transport: str, port: str, baud: int) -> Link:
    if transport == "mpremote":
        return MpremoteLink(port, baud)
    if transport == "ampy":
        return AmpyLink(port, baud)
    raise EdgefleetError(f"unknown transport {transport!r}", hint="use mpremote or ampy")


def _literal(text: str) -> Any:
    """The last line a snippet printed, as a Python literal (boards print \\r\\n; boot output may precede)."""
    lines = [ln for ln in text.replace("\r", "").split("\n") if ln.strip()]
    if not lines:
        raise EdgefleetError("the board printed nothing where a result was expected")
    try:
        return ast.literal_eval(lines[-1])
    except (ValueError, SyntaxError):
        raise EdgefleetError(f"unexpected answer from the board: {lines[-1][:200]!r}") from None


# --- what to deploy ----------------------------------------------------------------------------------


@dataclass
class Plan:
    files: dict[str, bytes] = field(default_factory=dict)  # remote path -> content
    owned_dirs: tuple[str, ...] = ("/node", "/simboard")


def node_config(
    board: Board,
    device_id: str,
    config_file: Path | None,
    broker: str | None,
    model: Path | None,
    model_key: bytes | None = None,
    ca: Path | None = None,
    broker_login: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """config.json for the board: the node's defaults, the user's file, the flags; checked by the node's rules.
    `broker_login` (user, password), from the device registry, replaces the file's broker.username/password."""
    overrides: dict[str, Any] = {}
    if config_file is not None:
        try:
            overrides = json.loads(config_file.read_text())
        except FileNotFoundError:
            raise EdgefleetError(f"no such config file: {config_file}") from None
        except json.JSONDecodeError as e:
            raise EdgefleetError(f"config file {config_file} is not valid JSON: line {e.lineno}: {e.msg}") from None
        if not isinstance(overrides, dict):
            raise EdgefleetError(f"config file {config_file} must hold a JSON object")
    if broker:
        try:  # the host's parser first, for a clear message; nodeconfig.build then applies the node's own rules
            parse_broker_url(broker, node=True, login=False)
        except EdgefleetError as e:
            raise EdgefleetError(f"invalid broker URL for the node: {e.args[0]}", hint=e.hint) from None
        overrides["broker"] = {**overrides.get("broker", {}), "url": broker}
    if ca is not None:
        overrides["broker"] = {**overrides.get("broker", {}), "ca": CA_NAME}
    if broker_login is not None:
        overrides["broker"] = {**overrides.get("broker", {}), "username": broker_login[0], "password": broker_login[1]}
    return nodeconfig.build(board, device_id, overrides, model, model_key=model_key)


def model_file(model: str, key: bytes | None = None) -> Path:
    """The model file to deploy, decoded and verified first (sha256, and the signature with `key`): a
    truncated, random or wrongly signed file is refused here, not by the node booting into safe mode."""
    p = Path(model)
    if not p.exists() and not p.is_absolute():
        p = project_root() / model
    f = p / "model.efm" if p.is_dir() else p
    if not f.is_file():
        raise EdgefleetError(f"no model file {f}", hint="train and convert one first: edgefleet train / convert")
    data = f.read_bytes()
    if not data:
        raise EdgefleetError(f"model file {f} is empty")
    from ..model.modelfile import decode

    try:
        mf = decode(data, key)
    except EdgefleetError as e:
        raise EdgefleetError(
            f"refusing to deploy {f}: {e}",
            hint="convert the model again (edgefleet convert), signed with the key the nodes hold",
        ) from None
    if key is None and mf.signed:
        log.info("%s is signed; without --model-key-file the node checks only its sha256", f)
    return f


CA_NAME = "ca.pem"  # the broker's CA on the board (config broker.ca), from deploy --ca


def ca_file(path: Path) -> Path:
    """The CA certificate for the node, checked to be a PEM or DER certificate (not a key, not empty)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EdgefleetError(f"cannot read CA file {path}: {e.strerror}") from None
    if b"PRIVATE KEY" in data:
        raise EdgefleetError(f"{path} holds a private key, not the CA certificate", hint="use ca.pem, never ca.key")
    from cryptography import x509

    try:
        x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_certificate(
            data
        )
    except ValueError:
        raise EdgefleetError(
            f"{path} is not a certificate", hint="the broker's CA: ca.pem from edgefleet broker pki"
        ) from None
    return path


def build_plan(
    board: Board,
    cfg: dict[str, Any],
    model: Path | None,
    extra_cmodules: list[Path],
    ca: Path | None = None,
    model_bytes: bytes | None = None,
) -> Plan:
    """Every file for the board. `model_bytes` replaces the model file's content (the model signed with the
    device's own key, deploy --from-registry)."""
    from .firmware_build import SOURCE_ONLY, compiled_firmware

    tree = compiled_firmware(board.arch)
    src = firmware_dir()
    plan = Plan()
    for py in manifest_files(src / (SIM_MANIFEST if board.is_sim else MANIFEST)):
        rel = py.relative_to(src)
        dst = rel if rel.name in SOURCE_ONLY else rel.with_suffix(".mpy")
        plan.files["/" + dst.as_posix()] = (tree / dst).read_bytes()
    plan.files["/board.json"] = board.path.read_bytes()
    plan.files["/config.json"] = json.dumps(cfg, indent=1).encode()
    if model is not None:
        plan.files["/model.efm"] = model_bytes if model_bytes is not None else model.read_bytes()
    if ca is not None:
        plan.files["/" + CA_NAME] = ca.read_bytes()
    cdir = project_root() / "build" / "cmodule" / board.arch
    for m in [*sorted(cdir.glob("*.mpy")), *extra_cmodules]:
        plan.files[f"/lib/{m.name}"] = m.read_bytes()
    if not any(p.endswith("main.py") for p in plan.files):
        log.warning("the firmware has no main.py yet (%s): the node will not start by itself", firmware_dir())
    return plan


# --- the board side ----------------------------------------------------------------------------------

CHIP_MARKERS = {"esp32": "ESP32", "esp32s3": "ESP32S3", "esp32c3": "ESP32C3", "esp32c6": "ESP32C6", "sim": "linux"}


def chip_matches(machine: str, chip: str) -> bool:
    """Whether MicroPython's `sys.implementation._machine` ("Generic ESP32S3 module with ESP32S3") is `chip`.

    The esp32 port ends the string with "with <IDF target>"; the unix port (our virtual board) says "linux".
    """
    marker = CHIP_MARKERS[chip]
    if chip == "sim":
        return machine.lower().startswith(marker)
    _head, sep, target = machine.upper().replace("-", "").rpartition(" WITH ")
    return bool(sep) and target.strip() == marker


def check_board_type(link: Link, board: Board) -> None:
    """Refuse to deploy onto a board of another type: its board.json, else the interpreter's machine string."""
    info = _literal(
        link.exec(
            "import sys\ntry:\n with open('/board.json') as f: _b = f.read()\nexcept OSError:\n _b = None\n"
            "print(repr((_b, sys.implementation._machine)))\ndel _b"
        )
    )
    on_board, machine = info
    if on_board:
        try:
            other = json.loads(on_board)
            name, chip = other.get("name"), other.get("chip")
        except (ValueError, AttributeError):
            name = chip = None
        if name and name != board.name:
            raise EdgefleetError(
                f"the board on this port is {name} ({chip}), not {board.name} ({board.chip})",
                hint=f"deploy with --board {name}, or --force to replace it anyway",
            )
    if not chip_matches(machine, board.chip):
        raise EdgefleetError(
            f"the board on this port runs MicroPython for {machine!r}, not {board.chip} ({board.name})",
            hint="pick the matching --board, or --force to deploy anyway",
        )


def remote_state(link: Link, paths: list[str], owned_dirs: tuple[str, ...]) -> tuple[dict[str, str | None], list[str]]:
    hashes, present = _literal(link.exec(HASH_SNIPPET % {"paths": paths, "dirs": list(owned_dirs)}))
    return hashes, present


def _mkdirs(link: Link, paths: list[str]) -> None:
    dirs = sorted({"/".join(p.split("/")[:i]) for p in paths for i in range(2, p.count("/") + 1)})
    if dirs:
        link.exec(
            "import os\nfor d in %r:\n try:\n  os.mkdir(d)\n except OSError:\n  pass" % dirs  # noqa: UP031
        )


@dataclass
class DeployResult:
    copied: list[str]
    unchanged: list[str]
    removed: list[str]


def deploy(link: Link, plan: Plan, progress: bool = True) -> DeployResult:
    local = {p: hashlib.sha256(d).hexdigest() for p, d in plan.files.items()}
    paths = sorted(plan.files)
    remote, present = remote_state(link, paths, plan.owned_dirs)
    todo = [p for p in paths if remote.get(p) != local[p]]
    stale = sorted(p for p in present if p not in plan.files)
    log.info("%d files: %d changed, %d unchanged, %d stale", len(paths), len(todo), len(paths) - len(todo), len(stale))
    _mkdirs(link, todo)
    with tqdm(total=sum(len(plan.files[p]) for p in todo), unit="B", unit_scale=True, desc="deploy",
              disable=not progress or not todo) as bar:  # fmt: skip
        for p in todo:
            link.write_file(p, plan.files[p])
            bar.update(len(plan.files[p]))
    if stale:
        link.exec("import os\nfor p in %r:\n os.remove(p)" % stale)  # noqa: UP031
    after, _ = remote_state(link, paths, ())
    bad = [p for p in paths if after.get(p) != local[p]]
    if bad:
        raise EdgefleetError(f"verification failed: {len(bad)} files differ on the board after copying: {bad[:5]}",
                             hint="the board's filesystem may be full or damaged; try again, or reflash with --erase")  # fmt: skip
    return DeployResult(copied=todo, unchanged=[p for p in paths if p not in todo], removed=stale)


def run_deploy(*, board: str, port: str, device_id: str, model: str | None = None,
               model_key_file: str | None = None, config: str | None = None, broker: str | None = None,
               ca: str | None = None, cmodule: list[str] | None = None, transport: str = "mpremote",
               baud: int = 115200, force: bool = False, reset: bool = True, progress: bool = True,
               from_registry: bool = False, db: str | None = None, secrets_dir: str | None = None) -> DeployResult:  # fmt: skip
    """`edgefleet deploy` (and the HIL fixture): plan the board's files, check the board type unless `force`,
    copy what changed, verify everything, and soft-reset the board afterwards when `reset`. With
    `from_registry`, the node's login and model key come from the device registry in `db` (the model is signed
    for the device) and what was deployed is recorded there."""
    b = load_board(board)
    key = read_key(Path(model_key_file)) if model_key_file else None
    efm = model_file(model, key) if model else None
    ca_data = ca_file(Path(ca)) if ca else None
    registry = None
    login = model_bytes = None
    node_key = key
    if from_registry:
        from ..fleetops.devices import Registry, sign_for_device

        registry = Registry.open(db, secrets_dir=secrets_dir, create=False)
    try:
        if registry is not None:
            found = registry.deploy_secrets(device_id, b.name)
            login, node_key = (found.username, found.password), found.model_key
            if efm is not None:  # checked above with --model-key-file if given; now signed for this device
                model_bytes = sign_for_device(efm.read_bytes(), found.model_key, key)
        cfg = node_config(b, device_id, Path(config) if config else None, broker, efm, node_key, ca_data, login)
        plan = build_plan(b, cfg, efm, [Path(m) for m in cmodule or []], ca_data, model_bytes)
        link = open_link(transport, port, baud)
        ok = False
        try:
            if not force:
                check_board_type(link, b)
            result = deploy(link, plan, progress=progress)
            ok = True
        finally:
            link.close(reset=ok and reset)
        if registry is not None:
            from ..fleetops.devices import deployed_record

            registry.record_deploy(device_id, deployed_record(plan.files, b.name, port, efm))
    finally:
        if registry is not None:
            registry.close()
    return result


def open_repl(port: str) -> int:
    """`edgefleet repl`: mpremote's interactive REPL on the port (checked first); its exit code."""
    check_port(port)
    return subprocess.call([sys.executable, "-m", "mpremote", "connect", port, "repl"])
