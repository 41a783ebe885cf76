"""The device registry: which devices the fleet has, and the broker logins that follow from it (docs/fleet.md).

What is stored where, and why:

- **The fleet database** (the collector's, SQLite or PostgreSQL; tables `fleet_devices` and `fleet_logins`)
  holds what is not secret: id, board, groups, what was last deployed, and for each broker login only the hash
  mosquitto checks (its password-file format, made by mosquitto_passwd). The database is read by many
  processes (collectors, the console, exports, backups); a hash there lets nobody log in.
- **The secrets directory** (mode 0700, every file 0600 from creation) holds what is: each device's broker
  password (`<id>.secret`, given to the user this once: the broker only ever sees the hash) and its model key
  (`<id>.key`, 32 random bytes), and the passwords of the collector and operator identities (`collector.secret`,
  `operator.secret`, the files `collect --password-file` and `fleet cmd --password-file` read). The model key
  is a file, not a database column, because it is a signing key: anyone who can read it can sign a model this
  device will load, and the database is readable far more widely than one operator's directory. The database
  keeps its fingerprint, so `device show` tells which key a device has and deploy notices a stale key file.
- **The broker's directory** (`edgefleet broker --data-dir`) gets the password file (`passwd`) rendered from
  the hashes and the ACL (`acl`, the same file `edgefleet broker` writes: broker.mosquitto.write_acl) after every
  change; a running broker is told to reread them (SIGHUP to the pid in its `mosquitto.pid`).

The registry keeps its own schema version (`registry_schema_version`) beside the collector's `schema_version`:
its tables are created the first time a registry command opens the database, and upgraded in place like the
collector's, on SQLite and PostgreSQL alike (the DDL below is valid on both).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..broker.mosquitto import (
    COLLECTOR_USER,
    OPERATOR_USER,
    password_hash,
    reload_broker,
    write_acl,
    write_hashed_password_file,
)
from ..collect.storage import Storage, open_storage
from ..collect.storage.base import now_ms
from ..errors import EdgefleetError
from ..redact import write_secret_file
from ..wire import protocol

log = logging.getLogger(__name__)

VERSION_TABLE = "registry_schema_version"
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE fleet_devices (id TEXT PRIMARY KEY, board TEXT NOT NULL, groups_json TEXT NOT NULL,"
        " pw_hash TEXT, key_sha256 TEXT, deployed_json TEXT, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL,"
        " rotated_ms BIGINT, revoked_ms BIGINT)",
        "CREATE TABLE fleet_logins (login TEXT PRIMARY KEY, role TEXT NOT NULL, pw_hash TEXT NOT NULL,"
        " created_ms BIGINT NOT NULL)",
    ],
]
PASSWORD_FILE = "passwd"
KEY_BYTES = 32  # an HMAC-SHA256 key as long as its output
PASSWORD_BYTES = 24  # 192 random bits, URL-safe text (no ':' or newline, which the password file cannot hold)
DEFAULT_SECRETS_DIR = "secrets"
DEFAULT_BROKER_DIR = "broker"
COLUMNS = "id, board, groups_json, pw_hash, key_sha256, deployed_json, created_ms, updated_ms, rotated_ms, revoked_ms"


def valid_id(name: object) -> bool:
    """The protocol's device-id rule (topics and records): 1 to 32 of A-Z a-z 0-9 _ -, the whole string."""
    return type(name) is str and protocol.DEVICE_RE.fullmatch(name) is not None


def check_password(hashed: str, password: str) -> bool:
    """Whether `password` matches a mosquitto password-file hash: `$7$` (PBKDF2-SHA512, mosquitto 2) or `$6$`
    (salted SHA-512, mosquitto 1.x). Lets deploy refuse a secrets file that no longer matches the broker's hash
    (a board that could never log in) without asking the broker."""
    parts = hashed.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            salt, want = base64.b64decode(parts[3]), base64.b64decode(parts[4])
            got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), len(want))
        elif len(parts) == 4 and parts[1] == "6":
            salt, want = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            got = hashlib.sha512(password.encode() + salt).digest()
        else:
            return False
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def key_fingerprint(key: bytes) -> str:
    """A model key's public name: the first 16 hex digits of its sha256 (tells keys apart, reveals nothing)."""
    return hashlib.sha256(key).hexdigest()[:16]


@dataclass
class Device:
    """One registered device as the database has it (no secret: the password hash is not even carried)."""

    id: str
    board: str
    groups: list[str]
    active: bool
    key_sha256: str | None
    deployed: dict | None
    created_ms: int
    updated_ms: int
    rotated_ms: int | None
    revoked_ms: int | None

    @property
    def state(self) -> str:
        return "active" if self.active else "revoked"

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["state"] = self.state
        return d


@dataclass
class BrokerFiles:
    """What a registry change did to the broker: the files rendered and the broker process told to reload."""

    password_file: Path
    acl_file: Path
    reloaded_pid: int | None
    new_logins: list[Path] = field(default_factory=list)  # secrets files of collector/operator logins just made


@dataclass
class Change:
    """The result of add/rotate/revoke: the device afterwards, the secrets files written, the broker update."""

    device: Device | None
    secret_file: Path | None
    key_file: Path | None
    broker: BrokerFiles


@dataclass
class DeploySecrets:
    """What `deploy --from-registry` puts into a node's config."""

    device: Device
    username: str
    password: str
    model_key: bytes


class Registry:
    """The device registry in an open fleet database, with its secrets directory and the broker's directory."""

    def __init__(
        self,
        store: Storage,
        secrets_dir: Path,
        broker_dir: Path,
        prefix: str = protocol.DEFAULT_PREFIX,
        collector_users: Sequence[str] = (COLLECTOR_USER,),
        operator_users: Sequence[str] = (OPERATOR_USER,),
    ) -> None:
        self.store = store
        self.secrets_dir = Path(secrets_dir)
        self.broker_dir = Path(broker_dir)
        self.prefix = prefix
        self.collector_users = list(collector_users)
        self.operator_users = list(operator_users)
        for u in (*self.collector_users, *self.operator_users):
            if not valid_id(u):
                raise EdgefleetError(f"invalid broker user name {u!r}", hint="1-32 characters of A-Z a-z 0-9 _ -")
        store.apply_migrations(VERSION_TABLE, MIGRATIONS)

    @classmethod
    def open(
        cls,
        db_url: str,
        secrets_dir: str | Path = DEFAULT_SECRETS_DIR,
        broker_dir: str | Path = DEFAULT_BROKER_DIR,
        prefix: str = protocol.DEFAULT_PREFIX,
        collector_users: Sequence[str] = (COLLECTOR_USER,),
        operator_users: Sequence[str] = (OPERATOR_USER,),
        create: bool = True,
    ) -> Registry:
        """Open the fleet database (created only when `create`: adding the first device may start a fleet,
        reading commands must not make an empty database out of a typo)."""
        store = open_storage(db_url, create=create)
        try:
            return cls(store, Path(secrets_dir), Path(broker_dir), prefix, collector_users, operator_users)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading

    def _row(self, r: tuple) -> Device:
        return Device(
            id=r[0],
            board=r[1],
            groups=json.loads(r[2]),
            active=r[3] is not None,
            key_sha256=r[4],
            deployed=json.loads(r[5]) if r[5] else None,
            created_ms=int(r[6]),
            updated_ms=int(r[7]),
            rotated_ms=None if r[8] is None else int(r[8]),
            revoked_ms=None if r[9] is None else int(r[9]),
        )

    def get(self, device_id: str) -> Device:
        row = self.store.execute(f"SELECT {COLUMNS} FROM fleet_devices WHERE id = ?", (device_id,)).fetchone()
        self.store.conn.rollback()  # end the read transaction (PostgreSQL would hold its snapshot)
        if row is None:
            raise EdgefleetError(f"device {device_id!r} is not registered", hint="edgefleet device list")
        return self._row(row)

    def find(self, device_id: str) -> Device | None:
        try:
            return self.get(device_id)
        except EdgefleetError:
            return None

    def devices(self, group: str | None = None, include_revoked: bool = True) -> list[Device]:
        rows = self.store.execute(f"SELECT {COLUMNS} FROM fleet_devices ORDER BY id").fetchall()
        self.store.conn.rollback()
        out = [self._row(r) for r in rows]
        if group is not None:
            out = [d for d in out if group in d.groups]
        if not include_revoked:
            out = [d for d in out if d.active]
        return out

    def targets(self, target: str) -> list[str]:
        """The active devices a command TARGET names: `all`, `group:NAME`, or one device id."""
        if target == "all":
            ids = [d.id for d in self.devices(include_revoked=False)]
            if not ids:
                raise EdgefleetError("the registry has no active device", hint="edgefleet device add ID --board B")
            return ids
        if target.startswith("group:"):
            group = target[len("group:") :]
            if not valid_id(group):
                raise EdgefleetError(f"invalid group name {group!r}", hint="1-32 characters of A-Z a-z 0-9 _ -")
            ids = [d.id for d in self.devices(group, include_revoked=False)]
            if not ids:
                raise EdgefleetError(f"no active device in group {group!r}", hint="edgefleet device list")
            return ids
        if not valid_id(target):
            raise EdgefleetError(
                f"invalid target {target!r}", hint="a device id, group:NAME or all (see edgefleet device list)"
            )
        dev = self.get(target)
        if not dev.active:
            raise EdgefleetError(f"device {target!r} is revoked", hint="edgefleet device add it again to readmit it")
        return [dev.id]

    # -- changes

    def _service_users(self) -> list[tuple[str, str]]:
        return [(u, "collector") for u in self.collector_users] + [(u, "operator") for u in self.operator_users]

    def _check_new_id(self, device_id: str) -> None:
        if not valid_id(device_id):
            raise EdgefleetError(
                f"invalid device id {device_id!r}",
                hint="1-32 characters of A-Z a-z 0-9 _ - (the protocol's rule: it is the device's topic level)",
            )
        collectors, operators = self.acl_users()
        if device_id in {*collectors, *operators, COLLECTOR_USER, OPERATOR_USER}:
            raise EdgefleetError(
                f"device id {device_id!r} is the name of a collector or operator login", hint="rename the device"
            )

    def secret_path(self, name: str) -> Path:
        """Where the password of a device or login is (first line: what --password-file options read)."""
        return self.secrets_dir / f"{name}.secret"

    def key_path(self, device_id: str) -> Path:
        """Where a device's model key is (raw bytes: what --model-key-file options read)."""
        return self.secrets_dir / f"{device_id}.key"

    def _secrets_dir(self) -> Path:
        """The secrets directory, 0700 (created so; an existing one readable by others is tightened)."""
        d = self.secrets_dir
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if d.stat().st_mode & 0o077:
            os.chmod(d, 0o700)
        return d

    def _stage(self, path: Path, data: bytes) -> Path:
        """Write a secret next to its final name (0600 from creation); `_commit_files` moves it into place only
        after the database committed, so a failed change never leaves a secrets file that does not match."""
        self._secrets_dir()
        staged = path.with_name(path.name + ".new")
        write_secret_file(staged, data)
        return staged

    @staticmethod
    def _commit_files(staged: dict[Path, Path]) -> None:
        for final, tmp in staged.items():
            os.replace(tmp, final)

    @contextlib.contextmanager
    def _committing(self, staged: dict[Path, Path]) -> Iterator[None]:
        """The database change of the block and the staged secrets files land together: commit, then move the
        files into place; on any error roll back and delete the staged files, so neither half is left."""
        try:
            yield
            self.store.conn.commit()
        except BaseException:
            self.store.conn.rollback()
            self._discard(staged)
            raise
        self._commit_files(staged)

    @staticmethod
    def _discard(staged: dict[Path, Path]) -> None:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)

    def add(self, device_id: str, board: str, groups: Sequence[str] = ()) -> Change:
        """Register a device (or readmit a revoked one): new broker password and model key, written to 0600 files
        in the secrets directory; the database gets their hash and fingerprint; the broker reloads."""
        from ..board.boards import load_board

        self._check_new_id(device_id)
        bad = [g for g in groups if not valid_id(g)]
        if bad:
            raise EdgefleetError(f"invalid group name {bad[0]!r}", hint="1-32 characters of A-Z a-z 0-9 _ -")
        board_name = load_board(board).name
        old = self.find(device_id)
        if old is not None and old.active:
            raise EdgefleetError(
                f"device {device_id!r} is already registered",
                hint=f"edgefleet device rotate {device_id} for new credentials",
            )
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        key = secrets.token_bytes(KEY_BYTES)
        hashed = password_hash(device_id, password)
        staged = {
            self.secret_path(device_id): self._stage(self.secret_path(device_id), (password + "\n").encode()),
            self.key_path(device_id): self._stage(self.key_path(device_id), key),
        }
        now = now_ms()
        groups_json = json.dumps(sorted(set(groups)))
        with self._committing(staged):
            if old is None:
                self.store.execute(
                    f"INSERT INTO fleet_devices ({COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, NULL, NULL)",
                    (device_id, board_name, groups_json, hashed, key_fingerprint(key), now, now),
                )
            else:
                self.store.execute(
                    "UPDATE fleet_devices SET board = ?, groups_json = ?, pw_hash = ?, key_sha256 = ?, updated_ms = ?,"
                    " rotated_ms = ?, revoked_ms = NULL WHERE id = ?",
                    (board_name, groups_json, hashed, key_fingerprint(key), now, now, device_id),
                )
        log.info("device %s %s (board %s)", device_id, "readmitted" if old else "added", board_name)
        return Change(self.get(device_id), self.secret_path(device_id), self.key_path(device_id), self.sync_broker())

    def rotate(self, name: str, model_key: bool = False) -> Change:
        """New broker password for a device (or for a collector/operator login), and with `model_key` a new model
        key too (the node gets it at its next deploy; until then it refuses models signed with the new key)."""
        services = dict(self._service_users())
        if name in services:
            if model_key:
                raise EdgefleetError(f"{name!r} is a {services[name]} login: it has no model key")
            self._ensure_logins()
            password = secrets.token_urlsafe(PASSWORD_BYTES)
            staged = {self.secret_path(name): self._stage(self.secret_path(name), (password + "\n").encode())}
            with self._committing(staged):
                self.store.execute(
                    "UPDATE fleet_logins SET pw_hash = ? WHERE login = ?", (password_hash(name, password), name)
                )
            return Change(None, self.secret_path(name), None, self.sync_broker())
        dev = self.get(name)
        if not dev.active:
            raise EdgefleetError(
                f"device {name!r} is revoked", hint=f"edgefleet device add {name} --board B readmits it"
            )
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        staged = {self.secret_path(name): self._stage(self.secret_path(name), (password + "\n").encode())}
        key = secrets.token_bytes(KEY_BYTES) if model_key else None
        if key is not None:
            staged[self.key_path(name)] = self._stage(self.key_path(name), key)
        now = now_ms()
        with self._committing(staged):
            self.store.execute(
                "UPDATE fleet_devices SET pw_hash = ?, key_sha256 = ?, updated_ms = ?, rotated_ms = ? WHERE id = ?",
                (password_hash(name, password), key_fingerprint(key) if key else dev.key_sha256, now, now, name),
            )
        log.info("device %s: new credentials%s", name, " and model key" if key else "")
        return Change(self.get(name), self.secret_path(name), self.key_path(name) if key else None, self.sync_broker())

    def revoke(self, device_id: str) -> Change:
        """Remove the device's login: its hash leaves the database and the broker's password file, the broker
        reloads (and drops the device if it is connected), and its secrets files are deleted (a lost or stolen
        board's key and password are worthless from now on). The row stays, marked revoked, for the record."""
        dev = self.get(device_id)
        if not dev.active:
            raise EdgefleetError(f"device {device_id!r} is already revoked")
        now = now_ms()
        try:
            self.store.execute(
                "UPDATE fleet_devices SET pw_hash = NULL, key_sha256 = NULL, updated_ms = ?, revoked_ms = ? WHERE id = ?",
                (now, now, device_id),
            )
            self.store.conn.commit()
        except BaseException:
            self.store.conn.rollback()
            raise
        broker = self.sync_broker()  # first the broker forgets the login, then the files go
        for p in (self.secret_path(device_id), self.key_path(device_id)):
            p.unlink(missing_ok=True)
        log.info("device %s revoked", device_id)
        return Change(self.get(device_id), None, None, broker)

    def record_deploy(self, device_id: str, info: dict[str, Any]) -> Device:
        """Note what `deploy` put on the device (firmware digest, model, when, where)."""
        self.store.execute(
            "UPDATE fleet_devices SET deployed_json = ?, updated_ms = ? WHERE id = ?",
            (json.dumps(info, sort_keys=True), now_ms(), device_id),
        )
        self.store.conn.commit()
        return self.get(device_id)

    def record_ota(self, device_id: str, kind: str, info: dict[str, Any]) -> Device:
        """Note what an over-the-air update installed (`deployed.ota.<kind>`: version, sha256, rollout, when),
        keeping the rest of the deploy record; a rollback records the version the device went back to."""
        dev = self.get(device_id)
        rec = dict(dev.deployed or {})
        rec["ota"] = {**(rec.get("ota") or {}), kind: {**info, "ms": now_ms()}}
        return self.record_deploy(device_id, rec)

    def deploy_secrets(self, device_id: str, board: str | None = None) -> DeploySecrets:
        """The credentials and model key `deploy --from-registry` writes into the node's config, checked
        against the database first (a revoked device, another board, a stale password or key file are refused:
        each would deploy a board that cannot log in or cannot load its models)."""
        dev = self.get(device_id)
        if not dev.active:
            raise EdgefleetError(f"device {device_id!r} is revoked", hint=f"edgefleet device add {device_id} --board B")
        if board is not None and board != dev.board:
            raise EdgefleetError(
                f"device {device_id!r} is registered as a {dev.board} board, not {board}",
                hint=f"deploy with --board {dev.board}, or register it again",
            )
        secret, keyfile = self.secret_path(device_id), self.key_path(device_id)
        try:
            password = secret.read_text().split("\n", 1)[0]
            key = keyfile.read_bytes()
        except OSError as e:
            raise EdgefleetError(
                f"cannot read {device_id}'s secrets in {self.secrets_dir}: {e.strerror}",
                hint=f"--secrets-dir must be the directory `device add` wrote; or edgefleet device rotate {device_id} "
                "--model-key",
            ) from None
        row = self.store.execute("SELECT pw_hash FROM fleet_devices WHERE id = ?", (device_id,)).fetchone()
        self.store.conn.rollback()
        if not row or not row[0] or not check_password(row[0], password):
            raise EdgefleetError(
                f"{secret} does not hold {device_id}'s current password", hint=f"edgefleet device rotate {device_id}"
            )
        if key_fingerprint(key) != dev.key_sha256:
            raise EdgefleetError(
                f"{keyfile} is not {device_id}'s registered model key",
                hint=f"edgefleet device rotate {device_id} --model-key",
            )
        return DeploySecrets(dev, device_id, password, key)

    # -- the broker

    def _ensure_logins(self) -> list[Path]:
        """Create the collector and operator logins the password file needs and the registry does not have yet
        (password in `<secrets>/<login>.secret`, hash in fleet_logins); returns the files written."""
        have = {r[0] for r in self.store.execute("SELECT login FROM fleet_logins").fetchall()}
        self.store.conn.rollback()
        made = []
        for login, role in self._service_users():
            if login in have:
                continue
            clash = self.find(login)
            if clash is not None:
                raise EdgefleetError(f"{role} login {login!r} is also a registered device id")
            password = secrets.token_urlsafe(PASSWORD_BYTES)
            staged = {self.secret_path(login): self._stage(self.secret_path(login), (password + "\n").encode())}
            with self._committing(staged):
                self.store.execute(
                    "INSERT INTO fleet_logins (login, role, pw_hash, created_ms) VALUES (?, ?, ?, ?)",
                    (login, role, password_hash(login, password), now_ms()),
                )
            made.append(self.secret_path(login))
            log.info("%s login %s created (password in %s)", role, login, self.secret_path(login))
        return made

    def password_hashes(self) -> dict[str, str]:
        """Every login the broker should accept: the collector and operator logins, then each active device."""
        logins = self.store.execute("SELECT login, pw_hash FROM fleet_logins ORDER BY login").fetchall()
        devices = self.store.execute(
            "SELECT id, pw_hash FROM fleet_devices WHERE pw_hash IS NOT NULL ORDER BY id"
        ).fetchall()
        self.store.conn.rollback()
        return {**{r[0]: r[1] for r in logins}, **{r[0]: r[1] for r in devices}}

    def acl_users(self) -> tuple[list[str], list[str]]:
        """(collector logins, operator logins) for the ACL: the ones this command was given, then any other the
        registry created earlier (a login made once with --operator-user keeps its rights in every later render,
        instead of turning into a 'device' without them)."""
        rows = self.store.execute("SELECT login, role FROM fleet_logins ORDER BY login").fetchall()
        self.store.conn.rollback()
        collectors = self.collector_users + [u for u, r in rows if r == "collector" and u not in self.collector_users]
        operators = self.operator_users + [u for u, r in rows if r == "operator" and u not in self.operator_users]
        return collectors, operators

    def sync_broker(self) -> BrokerFiles:
        """Render the password file and ACL into the broker's directory and make a running broker reload them."""
        made = self._ensure_logins()
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        pw = write_hashed_password_file(self.password_hashes(), self.broker_dir / PASSWORD_FILE)
        collectors, operators = self.acl_users()
        acl = write_acl(self.broker_dir, self.prefix, collectors, operators)
        pid = reload_broker(self.broker_dir)
        return BrokerFiles(pw, acl, pid, made)


def broker_command(broker_dir: Path) -> str:
    """How to run the broker on the files the registry renders."""
    return f"edgefleet broker --data-dir {broker_dir} --password-file {broker_dir / PASSWORD_FILE}"


def _when(ms: int | None) -> str:
    import time

    return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def deployed_text(dev: Device) -> str:
    d = dev.deployed
    if not d:
        return "-"
    model = d.get("model") or "no model"
    return f"{model} at {_when(d.get('ms'))}"


def render_table(devices: Sequence[Device]) -> str:
    """`device list`: one line per device."""
    rows = [("DEVICE", "BOARD", "STATE", "GROUPS", "MODEL KEY", "DEPLOYED")]
    for d in devices:
        rows.append((d.id, d.board, d.state, ",".join(d.groups) or "-", d.key_sha256 or "-", deployed_text(d)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(r[i].ljust(w) for i, w in enumerate(widths)), r[-1]]).rstrip() for r in rows]
    active = sum(1 for d in devices if d.active)
    lines.append(f"{len(devices)} device(s): {active} active, {len(devices) - active} revoked")
    return "\n".join(lines)


def render_device(dev: Device, registry: Registry) -> str:
    """`device show`: every field of one device, and where its secrets are (never what they are)."""
    lines = [
        f"device      {dev.id}",
        f"board       {dev.board}",
        f"state       {dev.state}" + (f" since {_when(dev.revoked_ms)}" if dev.revoked_ms else ""),
        f"groups      {', '.join(dev.groups) or '-'}",
        f"added       {_when(dev.created_ms)}",
        f"rotated     {_when(dev.rotated_ms)}",
    ]
    if dev.active:
        lines += [
            f"login       user {dev.id}, password in {registry.secret_path(dev.id)}",
            f"model key   {dev.key_sha256} (sha256 prefix), in {registry.key_path(dev.id)}",
        ]
    if dev.deployed:
        lines.append("deployed    " + deployed_text(dev))
        for k in sorted(dev.deployed):
            if k != "ms":
                lines.append(f"  {k:<10}{dev.deployed[k]}")
    else:
        lines.append("deployed    -")
    return "\n".join(lines)


def sign_for_device(model: bytes, device_key: bytes, source_key: bytes | None = None) -> bytes:
    """The model file signed with the device's own key, same version and downgrade flag, after checking it
    (with `source_key`, the key it is signed with now, when given): with one key per device, the host signs
    each device's copy, so a key taken from one board signs models for that board only."""
    from ..model.modelfile import decode, resign

    mf = decode(model, source_key)
    return resign(model, device_key, downgrade=mf.downgrade, old_key=source_key)


def deployed_record(files: dict[str, bytes], board: str, port: str, model: Path | None) -> dict[str, Any]:
    """What `deploy` records in the registry: when, where, the board, the firmware's digest (every file except
    config.json, which holds secrets, and the model), the model's name, version and the sha256 of the copy the
    device got."""
    fw = hashlib.sha256()
    for path in sorted(files):
        if path not in ("/config.json", "/model.efm"):
            fw.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    rec: dict[str, Any] = {"ms": now_ms(), "board": board, "port": port, "firmware": fw.hexdigest()[:16]}
    rec["files"] = len(files)
    data = files.get("/model.efm")
    if data is not None and model is not None:
        from ..model.modelfile import decode

        mf = decode(data)
        rec["model"] = model.parent.name if model.name == "model.efm" else model.stem
        rec["model_version"] = mf.model_version
        rec["model_sha256"] = hashlib.sha256(data).hexdigest()
    return rec
