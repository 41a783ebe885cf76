"""pytest plugin for hardware-in-the-loop tests: the same tests on a virtual board (default, CI) or a real ESP32.

    pytest tests/hil                                     # virtual board: `edgefleet board virtual` in-process
    pytest tests/hil --board-port /dev/ttyUSB0 --board esp32-devkitc --hil-config ~/.config/edgefleet/hil.json

Fixtures (see docs/hil.md): `hil_board` (the board under test: port, board definition, helpers),
`hil_broker` (a mosquitto the board can reach, and the URL the node must use), `collector` (a paho subscriber
recording everything under the fleet prefix), `fleet_collector` (the real `edgefleet collect` into SQLite,
started by edgefleet.collect.launch), `deploy_node` (a function that runs `edgefleet deploy` on the board),
`deployed_node` (the firmware deployed with a fresh device id and the test broker) and `start_node` (deploy,
copy scenario files, soft reset: a running node seen through the broker and the fleet collector).
Tests marked `hil` are the suite; they are collected from tests/hil/.

The broker runs the fleet's secure configuration (docs/security.md, the same functions as `edgefleet broker`
and `simulate`): a login per identity, the generated per-identity ACL, client ids pinned to user names, the
message size limit. The node under test logs in as its device id, the subscribers as collector identities,
commands go out as the operator.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgefleet import procs
from edgefleet.board.boards import Board, load_board
from edgefleet.broker.mosquitto import (
    COLLECTOR_USER,
    OPERATOR_USER,
    Mosquitto,
    fleet_credentials,
    render_acl,
    write_password_file,
)
from edgefleet.collect.launch import start_collector
from edgefleet.errors import EdgefleetError
from edgefleet.wire import protocol
from edgefleet.wire.url import parse_broker_url

PREFIX = protocol.DEFAULT_PREFIX
# Collector identities (read the prefix, write /stored): `collector` is the real `edgefleet collect`; the
# recording subscribers need logins of their own, because client ids are pinned to user names and two
# connections with one login would take each other's session over.
RECORDER_USERS = ("hil-recorder-1", "hil-recorder-2", "hil-recorder-3")
COLLECTOR_USERS = (COLLECTOR_USER, *RECORDER_USERS)
IDENTITIES = (*COLLECTOR_USERS, OPERATOR_USER)
_USED_EXTERNAL_IDS: set[str] = set()  # device logins of an external broker handed out in this pytest session


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("edgefleet hil", "hardware-in-the-loop (virtual board by default)")
    g.addoption("--board-port", default=None, help="serial port of a real board (default: a virtual board)")
    g.addoption("--board", default=None, help="board definition of the board under test (default: sim)")
    g.addoption("--hil-config", default=None, help="JSON with Wi-Fi and broker settings for a real board (docs/hil.md)")
    g.addoption(
        "--vboard-heap",
        type=int,
        default=None,
        help="heap bytes of the virtual board's interpreter (default: the board's heap, scaled for the 64-bit unix "
        "port); for finding out how far the node is from fitting, not for passing tests",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "hil: hardware-in-the-loop test (virtual board by default, real with --board-port)"
    )
    if config.getoption("board_port") and not config.getoption("hil_config"):
        raise pytest.UsageError(
            "--board-port needs --hil-config FILE (Wi-Fi and the broker address the board can reach; docs/hil.md)"
        )


@dataclass
class HilBoard:
    """The board under test, reached only through its serial port (as a user reaches a real board)."""

    port: str
    board: Board
    virtual: Any = None  # the VirtualBoard, None on real hardware
    flash_path: Path | None = None

    @property
    def is_virtual(self) -> bool:
        return self.virtual is not None

    def mpremote(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the stock mpremote against the board (`mpremote connect PORT ...`)."""
        proc = subprocess.run(
            [sys.executable, "-m", "mpremote", "connect", self.port, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode:
            raise AssertionError(f"mpremote {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def exec(self, code: str, timeout: float = 30) -> str:
        return self.mpremote("resume", "exec", code, timeout=timeout).stdout

    def read_console(self, until: bytes, timeout: float = 20.0, send: bytes = b"") -> bytes:
        """Open the port, optionally send bytes, and read the console until `until` appears (or time out)."""
        import serial

        with serial.Serial(self.port, 115200, timeout=0.1) as s:
            if send:
                s.write(send)
            data = b""
            end = time.monotonic() + timeout
            while until not in data and time.monotonic() < end:
                data += s.read(4096)
            return data

    def soft_reset(self) -> bytes:
        """Ctrl-C (stops main.py if it runs) then Ctrl-D in the friendly REPL: a soft reset, which runs boot.py
        and main.py, as after `edgefleet deploy`. Returns the console up to the reboot banner."""
        out = self.read_console(b"soft reboot", timeout=20, send=b"\r\x03\x04")
        if b"soft reboot" not in out:
            raise AssertionError(f"no soft reboot on {self.port}; console: {out[-500:]!r}")
        return out

    def put(self, files: dict[str, Path]) -> None:
        """Copy host files onto the board's filesystem (`mpremote fs cp`), e.g. {"scenario.json": path}."""
        for remote, local in files.items():
            self.mpremote("fs", "cp", str(local), ":" + remote)


@dataclass
class HilSettings:
    wifi: dict[str, str] = field(default_factory=lambda: {"ssid": "", "password": ""})
    broker_listen: str = "127.0.0.1"
    broker_address: str | None = None  # host/IP of this machine as the board sees it
    broker_url: str | None = None  # an external broker instead of ours
    event_class: str | None = None  # real board: the class the model must report (the board at rest: "standing")
    broker_credentials: str | None = None  # with broker_url: JSON {user: password} of that broker's logins


def load_settings(path: str | None, real: bool) -> HilSettings:
    if path is None:
        if real:
            raise EdgefleetError("a real board needs --hil-config FILE (Wi-Fi and broker address)", hint="docs/hil.md")
        return HilSettings()
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as e:
        raise EdgefleetError(f"cannot read --hil-config {path}: {e}") from None
    b = data.get("broker", {})
    return HilSettings(
        wifi=data.get("wifi", {"ssid": "", "password": ""}),
        broker_listen=b.get("listen", "0.0.0.0" if real else "127.0.0.1"),
        broker_address=b.get("address"),
        broker_url=b.get("url"),
        event_class=data.get("event_class"),
        broker_credentials=b.get("credentials"),
    )


@pytest.fixture(scope="session")
def hil_settings(pytestconfig: pytest.Config) -> HilSettings:
    return load_settings(pytestconfig.getoption("hil_config"), pytestconfig.getoption("board_port") is not None)


@pytest.fixture
def hil_board(pytestconfig: pytest.Config, tmp_path: Path):
    port = pytestconfig.getoption("board_port")
    board = load_board(pytestconfig.getoption("board") or ("sim" if port is None else "esp32-devkitc"))
    if port is not None:
        yield HilBoard(port=port, board=board)
        return
    if not board.is_sim:
        pytest.skip(f"board {board.name} needs a real ESP32: pass --board-port PORT")
    from edgefleet.board.vboard.board import VirtualBoard

    flash = tmp_path / "flash.img"
    vb = VirtualBoard(board, flash, pytestconfig.getoption("vboard_heap"))
    path = vb.start()
    try:
        yield HilBoard(port=path, board=board, virtual=vb, flash_path=flash)
    finally:
        vb.stop()


def connack(host: str, port: int, username: str | None, password: str | None, timeout: float = 10.0) -> Any:
    """Connect once (MQTT 3.1.1, clean session, as a node does) and return the CONNACK's reason code; the
    connection is closed again. For checking which logins the broker accepts."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hil-probe-{secrets.token_hex(3)}")
    if username is not None:
        c.username_pw_set(username, password)
    answer: list[Any] = []
    c.on_connect = lambda cl, ud, flags, rc, props: answer.append(rc)
    c.connect(host, port, keepalive=10)
    try:
        end = time.monotonic() + timeout
        while not answer and time.monotonic() < end:
            c.loop(0.1)
    finally:
        c.disconnect()
    if not answer:
        raise AssertionError(f"no CONNACK from {host}:{port} within {timeout} s")
    return answer[0]


@dataclass
class HilBroker:
    """The broker of the HIL tests and the logins on it (user -> password; never printed)."""

    broker: Mosquitto | None  # ours; None for an external broker (--hil-config broker.url)
    node_url: str  # the URL the node is given: reachable from the board
    host: str
    port: int
    credentials: dict[str, str] = field(default_factory=dict, repr=False)
    credentials_path: Path | None = None
    password_file: Path | None = None

    def login(self, user: str) -> tuple[str, str]:
        if user not in self.credentials:
            raise EdgefleetError(
                f"the HIL broker has no login for {user!r}" + (f" in {self.credentials_path}" if self.broker is None
                                                               else ""),
                hint="an external broker (--hil-config broker.url) needs a login for collector, operator, "
                f"{', '.join(RECORDER_USERS)} and every device id the tests deploy (docs/hil.md)",
            )  # fmt: skip
        return user, self.credentials[user]

    def add_device(self, device_id: str, timeout: float = 10.0) -> str:
        """The device's password, creating its login first if needed. Ours: the password file is rewritten and
        mosquitto rereads it on SIGHUP (as an operator adds a board to a running fleet); this returns once the
        broker accepts the new login. An external broker must already have it."""
        if device_id in self.credentials or self.broker is None:
            return self.login(device_id)[1]
        assert self.credentials_path is not None and self.password_file is not None and self.broker.proc
        self.credentials = fleet_credentials(self.credentials_path, [device_id], IDENTITIES)
        write_password_file(self.credentials, self.password_file)
        self.broker.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + timeout
        while connack(self.host, self.port, device_id, self.credentials[device_id]).is_failure:
            if time.monotonic() > end:
                raise AssertionError(f"mosquitto did not accept the new login {device_id!r} within {timeout} s")
            time.sleep(0.05)
        return self.credentials[device_id]

    def fresh_device(self) -> str:
        """A device id not deployed before in this session. Ours: a new random `hil-<6 hex>`. An external
        broker: the next device login of broker.credentials not yet used by this session, its retained status
        cleared first (as the device), so no test takes an earlier run's status for this node's."""
        if self.broker is not None:
            return f"hil-{secrets.token_hex(3)}"
        spare = sorted(u for u in self.credentials if u not in IDENTITIES and u not in _USED_EXTERNAL_IDS)
        if not spare:
            raise EdgefleetError(
                f"no unused device login left in {self.credentials_path}",
                hint="the HIL suite deploys a fresh device id per node test: give the external broker more device "
                "logins (e.g. hil-dev-1..hil-dev-10) and add them to broker.credentials (docs/hil.md)",
            )
        device_id = spare[0]
        _USED_EXTERNAL_IDS.add(device_id)
        self.clear_retained_status(device_id)
        return device_id

    def clear_retained_status(self, device_id: str) -> None:
        """Publish an empty retained status as the device: the broker drops the retained message."""
        import paho.mqtt.client as mqtt

        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        pub.username_pw_set(*self.login(device_id))
        pub.connect(self.host, self.port)
        pub.loop_start()
        try:
            pub.publish(protocol.topic(PREFIX, device_id, "status"), b"", qos=1, retain=True).wait_for_publish(10)
        finally:
            pub.loop_stop()
            pub.disconnect()

    def subscriber(self, user: str = RECORDER_USERS[0]) -> Collector:
        """A recording subscriber on `<prefix>/#`, logged in as the collector identity `user`."""
        return Collector(self.host, self.port, PREFIX, *self.login(user))


def secure_broker(data_dir: Path, host: str) -> tuple[Mosquitto, Path, Path]:
    """mosquitto as `edgefleet broker --password-file` runs it: logins for the collector identities and the
    operator (devices are added as tests deploy them), the generated ACL, client ids pinned to user names and
    the message size limit. Returns (broker, credentials JSON, password file), both secrets 0600."""
    creds_path = data_dir / "credentials.json"
    creds = fleet_credentials(creds_path, [], IDENTITIES)
    password_file = write_password_file(creds, data_dir / "passwd")
    acl = data_dir / "acl"
    acl.write_text(render_acl(PREFIX, COLLECTOR_USERS, OPERATOR_USER))
    return Mosquitto(data_dir=data_dir, host=host, password_file=password_file, acl_file=acl), creds_path, password_file


def external_credentials(settings: HilSettings) -> tuple[dict[str, str], Path]:
    """The logins of an external broker, from the --hil-config's broker.credentials (a JSON file, mode 600)."""
    if not settings.broker_credentials:
        raise EdgefleetError(
            "--hil-config broker.url needs broker.credentials: a JSON file {user: password} with that broker's logins",
            hint="docs/hil.md; or leave broker.url out and give broker.address: the tests then run their own broker",
        )
    path = Path(settings.broker_credentials).expanduser()
    try:
        if path.stat().st_mode & 0o077:
            raise EdgefleetError(f"{path} holds passwords and is readable by others", hint=f"chmod 600 {path}")
        creds = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EdgefleetError(f"cannot read broker.credentials {path}: {e}") from None
    if not isinstance(creds, dict) or not all(isinstance(v, str) for v in creds.values()):
        raise EdgefleetError(f"broker.credentials {path}: expected a JSON object of user name -> password")
    return creds, path


@pytest.fixture
def hil_broker(hil_board: HilBoard, hil_settings: HilSettings, tmp_path_factory: pytest.TempPathFactory):
    """A secure mosquitto the board can reach: on loopback for the virtual board; on broker.listen for a real
    board (the node is given broker.address); or an external broker from the --hil-config with its logins."""
    if hil_settings.broker_url and not hil_board.is_virtual:
        creds, path = external_credentials(hil_settings)
        u = parse_broker_url(hil_settings.broker_url)
        yield HilBroker(None, hil_settings.broker_url, u.host, u.port, creds, path)
        return
    listen = "127.0.0.1" if hil_board.is_virtual else hil_settings.broker_listen
    if not hil_board.is_virtual and not hil_settings.broker_address:
        raise EdgefleetError("--hil-config needs broker.address (this machine's IP as the board sees it)",
                             hint="docs/hil.md")  # fmt: skip
    broker, creds_path, password_file = secure_broker(tmp_path_factory.mktemp("hil-mosquitto"), listen)
    broker.start()
    try:
        local = "127.0.0.1" if listen == "0.0.0.0" else listen
        address = local if hil_board.is_virtual else hil_settings.broker_address
        yield HilBroker(
            broker, f"mqtt://{address}:{broker.port}", local, broker.port,
            json.loads(creds_path.read_text()), creds_path, password_file,
        )  # fmt: skip
    finally:
        broker.stop()


class Collector:
    """Records every message under `<prefix>/#`, logged in as a collector identity (the broker's ACL lets only
    those read the whole prefix). Raises at once if the broker refuses the login."""

    def __init__(
        self, host: str, port: int, prefix: str = PREFIX, username: str | None = None, password: str | None = None
    ) -> None:
        import paho.mqtt.client as mqtt

        self.host, self.port = host, port
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.connack: list[Any] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hil-{secrets.token_hex(4)}")
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, ud, flags, rc, props: self._on_connect(c, rc, prefix)
        self.client.connect(host, port)
        self.client.loop_start()
        with self.cond:
            self.cond.wait_for(lambda: self.connack, timeout=10)
        if not self.connack or self.connack[-1].is_failure:
            self.close()
            raise AssertionError(f"the broker at {host}:{port} refused {username or 'an anonymous'} subscriber: "
                                 f"{self.connack[-1] if self.connack else 'no CONNACK within 10 s'}")  # fmt: skip

    def _on_connect(self, client: Any, rc: Any, prefix: str) -> None:
        if not rc.is_failure:
            client.subscribe(protocol.topic_filter(prefix), qos=1)
        with self.cond:
            self.connack.append(rc)
            self.cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.cond:
            self.messages.append((msg.topic, msg.payload, msg.retain))
            self.cond.notify_all()

    def wait_for(self, topic_suffix: str, predicate=None, timeout: float = 30.0) -> tuple[str, bytes, bool]:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages:
                    if m[0].endswith(topic_suffix) and (predicate is None or predicate(m)):
                        return m
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no message on *{topic_suffix} within {timeout} s; got {[m[0] for m in self.messages][-10:]}"
                    )
                self.cond.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def collector(hil_broker: HilBroker):
    c = hil_broker.subscriber(RECORDER_USERS[0])
    yield c
    c.close()


@dataclass
class DeployedNode:
    device_id: str
    board: HilBoard
    broker_url: str
    result: Any


@pytest.fixture
def deploy_node(request: pytest.FixtureRequest, hil_board: HilBoard, hil_settings: HilSettings, tmp_path: Path):
    """deploy(device_id=None, model=None, broker_url=None, config=None, board=None, force=False) -> DeployedNode.

    Deployed to the HIL broker (broker_url = hil_broker.node_url), the device gets its own login there and its
    user name and password go into the node config file (0600), as `edgefleet deploy --config` takes them."""
    from edgefleet.board.deploy import run_deploy
    from edgefleet.broker.pki import write_secret

    def deploy(
        device_id: str | None = None,
        model: str | None = None,
        broker_url: str | None = None,
        config: dict[str, Any] | None = None,
        board: str | None = None,
        force: bool = False,
        reset: bool = True,
    ) -> DeployedNode:
        cfg = {"wifi": hil_settings.wifi, **(config or {})}
        hil_broker: HilBroker | None = request.getfixturevalue("hil_broker") if broker_url is not None else None
        if device_id is None:
            device_id = hil_broker.fresh_device() if hil_broker is not None else f"hil-{secrets.token_hex(3)}"
        if hil_broker is not None and broker_url == hil_broker.node_url and "username" not in cfg.get("broker", {}):
            login = {"username": device_id, "password": hil_broker.add_device(device_id)}
            cfg["broker"] = {**cfg.get("broker", {}), **login}
        cfg_path = tmp_path / f"config-{device_id}.json"
        write_secret(cfg_path, json.dumps(cfg).encode())  # the Wi-Fi and broker passwords
        result = run_deploy(
            board=board or str(hil_board.board.path), port=hil_board.port, device_id=device_id, model=model,
            config=str(cfg_path), broker=broker_url, cmodule=None, transport="mpremote", baud=115200,
            force=force, reset=reset, progress=False, model_key_file=None, ca=None,
        )  # fmt: skip
        return DeployedNode(device_id, hil_board, broker_url or "", result)

    return deploy


@pytest.fixture
def deployed_node(deploy_node, hil_broker: HilBroker) -> DeployedNode:
    return deploy_node(broker_url=hil_broker.node_url)


class FleetCollector:
    """The real `edgefleet collect` as a child process, storing into SQLite: what the fleet's collector makes
    of the node's records (each stored once by (device, seq); a seq that went back would count as a duplicate)."""

    def __init__(self, broker_url: str, db: Path, log: Path, password_file: Path | None = None) -> None:
        self.broker_url = broker_url
        self.db = db
        self.log = log
        self.password_file = password_file  # the password in a 0600 file, never on the command line
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FleetCollector:
        self.proc = start_collector(
            self.broker_url, self.db, self.log, f"hil-collector-{secrets.token_hex(3)}",
            password_file=self.password_file, stop_signal=signal.SIGINT, connect_timeout=30,
        )  # fmt: skip
        return self

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        import sqlite3

        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def wait_rows(self, sql: str, args: tuple = (), predicate=bool, timeout: float = 60.0) -> list[tuple]:
        """Poll a query until predicate(rows) holds (the collector commits in small batches)."""
        end = time.monotonic() + timeout
        rows: list[tuple] = []
        while time.monotonic() < end:
            rows = self.query(sql, args)
            if predicate(rows):
                return rows
            time.sleep(0.25)
        raise AssertionError(
            f"the collector's database never satisfied the check within {timeout} s: {sql} -> {rows[-5:]}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            procs.terminate(self.proc, signal.SIGINT, grace=30)


@pytest.fixture
def fleet_collector(hil_broker: HilBroker, tmp_path: Path):
    """`edgefleet collect` logged in as the collector identity (password in a 0600 file)."""
    from edgefleet.broker.pki import write_secret

    user, password = hil_broker.login(COLLECTOR_USER)
    secret = tmp_path / "collector.secret"
    write_secret(secret, (password + "\n").encode())
    url = f"mqtt://{user}@{hil_broker.host}:{hil_broker.port}"
    c = FleetCollector(url, tmp_path / "fleet.db", tmp_path / "collect.log", secret)
    c.start()
    yield c
    c.stop()


@dataclass
class RunningNode:
    """A node deployed and booted on the board under test, seen through the broker and the fleet collector."""

    device_id: str
    board: HilBoard
    messages: Collector
    fleet: FleetCollector
    operator: tuple[str, str] | None = field(default=None, repr=False)  # the login commands are sent with
    prefix: str = PREFIX

    def topic(self, suffix: str) -> str:
        return protocol.topic(self.prefix, self.device_id, suffix)

    def wait_status(self, predicate=lambda st: True, timeout: float = 60.0) -> dict[str, Any]:
        """The first status message of this node (retained or not) whose JSON body satisfies predicate."""
        _, payload, _ = self.messages.wait_for(
            "/" + self.device_id + "/status", lambda m: bool(m[1]) and predicate(json.loads(m[1])), timeout=timeout
        )
        return json.loads(payload)

    def cmd(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Publish a command on /cmd (QoS 1) as the operator identity and return the node's /ack for its id."""
        import paho.mqtt.client as mqtt

        cid = f"hil-{secrets.token_hex(4)}"
        body: dict[str, Any] = {"v": 1, "id": cid, "cmd": cmd}
        if args is not None:
            body["args"] = args
        host, port = self.messages.host, self.messages.port
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hil-cmd-{secrets.token_hex(3)}")
        if self.operator is not None:
            pub.username_pw_set(*self.operator)
        pub.connect(host, port)
        pub.loop_start()
        try:
            pub.publish(self.topic("cmd"), json.dumps(body), qos=1).wait_for_publish(10)
            _, payload, _ = self.messages.wait_for(
                "/" + self.device_id + "/ack", lambda m: json.loads(m[1]).get("id") == cid, timeout=timeout
            )
        finally:
            pub.loop_stop()
            pub.disconnect()
        return json.loads(payload)

    def seqs(self) -> list[int]:
        """Every seq the fleet collector stored for this node (readings and events), in order."""
        rows = self.fleet.query(
            "SELECT seq FROM readings WHERE device = ? UNION ALL SELECT seq FROM events WHERE device = ? ORDER BY 1",
            (self.device_id, self.device_id),
        )
        return [r[0] for r in rows]


@pytest.fixture
def start_node(deploy_node, hil_board: HilBoard, hil_broker: HilBroker, collector: Collector, fleet_collector):
    """start_node(model=None, config=None, files=None) -> RunningNode: deploy (no reset), copy `files`
    ({board path: host path}, e.g. a scenario for the virtual board), then soft-reset so the node boots."""

    def start(model: str | None = None, config: dict[str, Any] | None = None,
              files: dict[str, Path] | None = None) -> RunningNode:  # fmt: skip
        node = deploy_node(model=model, broker_url=hil_broker.node_url, config=config, reset=False)
        if files:
            hil_board.put(files)
        hil_board.soft_reset()
        return RunningNode(node.device_id, hil_board, collector, fleet_collector, hil_broker.login(OPERATOR_USER))

    return start
