"""pytest plugin for hardware-in-the-loop tests: the same tests on a virtual board (default, CI) or a real ESP32.

    pytest tests/hil                                     # virtual board: `edgefleet board virtual` in-process
    pytest tests/hil --board-port /dev/ttyUSB0 --board esp32-devkitc --hil-config ~/.config/edgefleet/hil.json

Fixtures (see docs/hil.md): `hil_board` (the board under test: port, board definition, helpers),
`hil_broker` (a mosquitto the board can reach, and the URL the node must use), `collector` (a paho subscriber
recording everything under the fleet prefix), `deploy_node` (a function that runs `edgefleet deploy` on the
board) and `deployed_node` (the firmware deployed with a fresh device id and the test broker).
Tests marked `hil` are the suite; they are collected from tests/hil/.
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

from .. import procs
from ..boards import Board, load_board
from ..errors import EdgefleetError


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
    from ..vboard.board import VirtualBoard

    flash = tmp_path / "flash.img"
    vb = VirtualBoard(board, flash, pytestconfig.getoption("vboard_heap"))
    path = vb.start()
    try:
        yield HilBoard(port=path, board=board, virtual=vb, flash_path=flash)
    finally:
        vb.stop()


@dataclass
class HilBroker:
    broker: Any
    node_url: str  # the URL the node is given: reachable from the board
    host: str
    port: int


@pytest.fixture
def hil_broker(
    request: pytest.FixtureRequest,
    hil_board: HilBoard,
    hil_settings: HilSettings,
    tmp_path_factory: pytest.TempPathFactory,
):
    """The virtual board reaches the shared `mqtt_broker` fixture on loopback; a real board needs a broker
    listening on the LAN (ours on broker.listen, or an external one from the --hil-config)."""
    from urllib.parse import urlparse

    from ..broker import Mosquitto

    if hil_board.is_virtual:
        broker = request.getfixturevalue("mqtt_broker")
        yield HilBroker(broker, broker.url, broker.host, broker.port)
        return
    if hil_settings.broker_url:
        u = urlparse(hil_settings.broker_url)
        yield HilBroker(None, hil_settings.broker_url, u.hostname or "127.0.0.1", u.port or 1883)
        return
    if not hil_settings.broker_address:
        raise EdgefleetError("--hil-config needs broker.address (this machine's IP as the board sees it)",
                             hint="docs/hil.md")  # fmt: skip
    broker = Mosquitto(data_dir=tmp_path_factory.mktemp("hil-mosquitto"), host=hil_settings.broker_listen)
    broker.start()
    try:
        local = "127.0.0.1" if hil_settings.broker_listen == "0.0.0.0" else hil_settings.broker_listen
        yield HilBroker(broker, f"mqtt://{hil_settings.broker_address}:{broker.port}", local, broker.port)
    finally:
        broker.stop()


class Collector:
    """Records every message under `<prefix>/#` (a stand-in until the fleet collector is wired in here)."""

    def __init__(self, host: str, port: int, prefix: str = "edgefleet") -> None:
        import paho.mqtt.client as mqtt

        self.host, self.port = host, port
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hil-{secrets.token_hex(4)}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self.client.connect(host, port)
        self.client.loop_start()

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
    c = Collector(hil_broker.host, hil_broker.port)
    yield c
    c.close()


@dataclass
class DeployedNode:
    device_id: str
    board: HilBoard
    broker_url: str
    result: Any


@pytest.fixture
def deploy_node(hil_board: HilBoard, hil_settings: HilSettings, tmp_path: Path):
    """deploy(device_id=None, model=None, broker_url=None, config=None, board=None, force=False) -> DeployedNode."""
    import argparse

    from ..deploy import run_deploy

    def deploy(
        device_id: str | None = None,
        model: str | None = None,
        broker_url: str | None = None,
        config: dict[str, Any] | None = None,
        board: str | None = None,
        force: bool = False,
        reset: bool = True,
    ) -> DeployedNode:
        device_id = device_id or f"hil-{secrets.token_hex(3)}"
        cfg = {"wifi": hil_settings.wifi, **(config or {})}
        cfg_path = tmp_path / f"config-{device_id}.json"
        cfg_path.write_text(json.dumps(cfg))
        args = argparse.Namespace(
            board=board or str(hil_board.board.path), port=hil_board.port, device_id=device_id, model=model,
            config=str(cfg_path), broker=broker_url, cmodule=None, transport="mpremote", baud=115200,
            force=force, no_reset=not reset, quiet=True, model_key_file=None, ca=None,
        )  # fmt: skip
        return DeployedNode(device_id, hil_board, broker_url or "", run_deploy(args))

    return deploy


@pytest.fixture
def deployed_node(deploy_node, hil_broker: HilBroker) -> DeployedNode:
    return deploy_node(broker_url=hil_broker.node_url)


class FleetCollector:
    """The real `edgefleet collect` as a child process, storing into SQLite: what the fleet's collector makes
    of the node's records (each stored once by (device, seq); a seq that went back would count as a duplicate)."""

    def __init__(self, broker_url: str, db: Path, log: Path) -> None:
        self.db = db
        self.log = log
        self.argv = [sys.executable, "-m", "edgefleet.cli", "collect", "--broker", broker_url, "--db",
                     f"sqlite:///{db}", "--client-id", f"hil-collector-{secrets.token_hex(3)}"]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FleetCollector:
        import os

        from ..paths import project_root

        env = dict(os.environ)
        env["PYTHONPATH"] = str(project_root() / "host") + os.pathsep + env.get("PYTHONPATH", "")
        with self.log.open("ab") as f:
            self.proc = procs.spawn(
                self.argv, name="collector", stop_signal=signal.SIGINT, env=env, stdout=f, stderr=subprocess.STDOUT
            )
        end = time.monotonic() + 30
        while b"connected to" not in (self.log.read_bytes() if self.log.exists() else b""):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"edgefleet collect did not connect:\n{self.log.read_text()}")
            time.sleep(0.05)
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
    c = FleetCollector(f"mqtt://{hil_broker.host}:{hil_broker.port}", tmp_path / "fleet.db", tmp_path / "collect.log")
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
    prefix: str = "edgefleet"

    def topic(self, suffix: str) -> str:
        return f"{self.prefix}/{self.device_id}/{suffix}"

    def wait_status(self, predicate=lambda st: True, timeout: float = 60.0) -> dict[str, Any]:
        """The first status message of this node (retained or not) whose JSON body satisfies predicate."""
        _, payload, _ = self.messages.wait_for(
            "/" + self.device_id + "/status", lambda m: predicate(json.loads(m[1])), timeout=timeout
        )
        return json.loads(payload)

    def cmd(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Publish a command on /cmd (QoS 1) and return the node's /ack for its id."""
        import paho.mqtt.client as mqtt

        cid = f"hil-{secrets.token_hex(4)}"
        body: dict[str, Any] = {"v": 1, "id": cid, "cmd": cmd}
        if args is not None:
            body["args"] = args
        host, port = self.messages.host, self.messages.port
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hil-cmd-{secrets.token_hex(3)}")
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
        return RunningNode(node.device_id, hil_board, collector, fleet_collector)

    return start
