"""`edgefleet simulate`: a fleet of simulated nodes, each the real firmware on the MicroPython unix port.

Every node is its own `micropython` process started through simboard/launch.py (as `edgefleet node` does), with
its own flash image, device id, broker credentials and scenario. Before a node's first boot its flash is
provisioned by simboard/provision.py (board.json, config.json, and the model file as model.efm), as `edgefleet
deploy` would put them on a board. A node that exits with REBOOT_EXIT is started again on the same flash, like a
board that resets; a node we SIGKILL stays down until restarted (a power cut).

`Fleet` is the API the demo, the fault-injection test and the benchmarks share:

    with Fleet(workdir, n=5, broker=Mosquitto(...)) as fleet:   # or broker_url="mqtt://..."
        fleet.start()
        fleet.kill(2); fleet.restart(2)          # power-cut node 2, boot it again
        fleet.stop_node(3); fleet.corrupt_block(3); fleet.restart(3)
        fleet.counters()                         # last status counters per device (MQTT)
        fleet.stop()                              # SIGINT: each node flushes and closes its log
        fleet.inspect(0)                          # what node 0's flash log holds (stopped node)
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import procs
from ..board import nodeconfig
from ..board.boards import Board, load_board
from ..board.firmware_shared import firmware_constant, kind_channels
from ..board.node import REBOOT_EXIT, check_broker_url
from ..broker.mosquitto import (
    COLLECTOR_USER,
    OPERATOR_USER,
    Mosquitto,
    fleet_credentials,
    render_acl,
    write_password_file,
)
from ..errors import EdgefleetError
from ..paths import project_root, writable_dir
from ..runtime import find_micropython, micropython_env, unix_heap_bytes
from ..wire import protocol
from ..wire.url import parse_broker_url

log = logging.getLogger(__name__)

IMU_CHANNELS = kind_channels()["mpu6050"]  # the replay CSV's columns
FLASHLOG = "node/flashlog.py"  # the flash log's geometry and power-cut loss are defined there, read from it


def power_cut_loss() -> int:
    """Records one power cut can cost a node: firmware/node/flashlog.py's POWER_CUT_LOSS.

    The firmware is the one definition (the flash log's design decides it); the host's loss accounting reads
    it rather than keeping a copy that could drift.
    """
    return firmware_constant(FLASHLOG, "POWER_CUT_LOSS")


# ---------------------------------------------------------------- scenarios


def basicmotions_replay(path: Path, seed: int, cases: int = 16, rate_hz: float = 10.0) -> list[tuple[float, str]]:
    """Writes a replay CSV of BasicMotions test cases (10 s each, labelled) in a seeded order.

    Returns the label segments (start_s, label). The test split is used so the shipped model (trained on the
    train split) is judged on recordings it never saw.
    """
    from ..model.datasets import basicmotions_cases

    data, labels = basicmotions_cases("test")  # in the node's units (g, deg/s), as the MPU6050 reports
    rnd = random.Random(seed)
    # Balanced: cycle through the classes, a random case of each, so a 60 s run sees every activity.
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    classes = sorted(by_class)
    rnd.shuffle(classes)
    order = [rnd.choice(by_class[classes[k % len(classes)]]) for k in range(cases)]
    segments = []
    lines = ["t_s," + ",".join(IMU_CHANNELS) + ",label"]
    k = 0  # sample index: times from it, not by summing 0.1 s steps
    for i in order:
        case = data[i]
        segments.append((round(k / rate_hz, 6), labels[i]))
        for j in range(case.shape[1]):
            vals = ",".join(f"{case[c, j]:.6g}" for c in range(case.shape[0]))
            lines.append(f"{k / rate_hz:.2f},{vals},{labels[i]}")
            k += 1
    path.write_text("\n".join(lines) + "\n")
    return segments


def env_channels(seed: int) -> dict:
    """A room temperature with a slow cycle and drift, different per node: the data the forecast is trained on."""
    rnd = random.Random(seed)
    return {
        "temperature": {
            "level": round(rnd.uniform(18, 26), 2),
            "amp": round(rnd.uniform(1.0, 3.0), 2),
            "period_s": rnd.choice([60, 90, 120]),
            "noise": 0.05,
            "drift_per_h": round(rnd.uniform(-2, 2), 2),
        },
        "humidity": {"level": round(rnd.uniform(35, 60), 1), "amp": 2.0, "period_s": 120, "noise": 0.2},
    }


def activity_scenario(replay: Path, seed: int) -> dict:
    return {
        "seed": seed,
        "sensors": {
            "env": {"channels": env_channels(seed)},
            "imu": {"replay": {"file": str(replay.resolve()), "rate_hz": 10, "loop": True}},
        },
    }


def fault_scenario(seed: int, duration_s: float) -> dict:
    """Sensor faults on env at seeded times: a spike (cleaned away: R_noise), an unplugged sensor (8 s: a fault
    event), a 2 s dropout (transient: counted missing, no event) and, when the run is long enough, a stuck sensor
    (30 s: the cleaner flags ~20 s of identical readings at 1 Hz as stuck)."""
    rnd = random.Random(seed)
    j = rnd.uniform(0, 2)
    faults = [
        {"kind": "spike", "channel": "temperature", "at_s": round(5 + j, 1), "value": 85.0},
        {"kind": "unplugged", "from_s": round(9 + j, 1), "to_s": round(17 + j, 1)},
        {"kind": "dropout", "from_s": round(20 + j, 1), "to_s": round(22 + j, 1)},
    ]
    if duration_s >= 55:
        faults.append({"kind": "stuck", "from_s": round(24 + j, 1), "to_s": round(min(24 + j + 30, duration_s - 1), 1)})
    return {"seed": seed, "sensors": {"env": {"channels": env_channels(seed), "faults": faults}}}


# ---------------------------------------------------------------- one node


@dataclass
class SimNode:
    index: int
    device_id: str
    image: Path
    scenario: Path | None
    password: str | None
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)
    want_up: bool = False
    boots: int = 0
    reboots: int = 0
    kills: int = 0
    crashes: int = 0
    started_ms: list[int] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc else None


# ---------------------------------------------------------------- the fleet


class Fleet:
    """N simulated nodes on one broker. Thread-safe for the calls the demo and tests make from one thread while the
    monitor thread restarts rebooting nodes."""

    def __init__(
        self,
        workdir: Path,
        n: int,
        broker: Mosquitto | None = None,
        broker_url: str | None = None,
        model: Path | None = None,
        scenarios: Sequence[dict | None] | Callable[[int], dict | None] | None = None,
        board: str = "sim",
        heap_bytes: int | None = None,
        heap_extra: int = 0,
        status_interval_s: int = 10,
        prefix: str = protocol.DEFAULT_PREFIX,
        config: dict | None = None,
        id_format: str = "node-{:03d}",
        seed: int = 1,
        ca: Path | None = None,
        keys: Path | dict[str, bytes] | None = None,
    ) -> None:
        if n < 1:
            raise EdgefleetError(f"--devices must be at least 1 (got {n})")
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.board: Board = load_board(board)
        if not self.board.is_sim:
            raise EdgefleetError(f"board {self.board.name} is not a simulated board", hint="use --board sim")
        self.broker = broker
        if broker is None and not broker_url:
            raise EdgefleetError("a fleet needs a broker", hint="give --broker mqtt://HOST:PORT or let it start one")
        own_tls = broker is not None and broker.tls is not None and ca is not None
        self.broker_url = check_broker_url(
            (broker.tls_url if own_tls else broker.url) if broker else str(broker_url)
        )  # our broker with a TLS listener and a CA given: the nodes use TLS
        self.model = self._check_model(model) if model else None
        # mqtts://: the CA the nodes verify the broker against (copied onto each node's flash as ca.pem)
        self.ca = Path(ca).resolve() if ca else None
        if self.ca is not None and not self.ca.is_file():
            raise EdgefleetError(f"CA file {self.ca} not found", hint="ca.pem from: edgefleet broker pki")
        self.keys = self._read_keys(keys)
        self.prefix = prefix
        self.status_interval_s = status_interval_s
        self.extra_config = config or {}
        # the board's heap on this interpreter plus the sim hardware a board does not carry (runtime's policy)
        tls = self.broker_url.startswith("mqtts://")
        self.heap = (heap_bytes or unix_heap_bytes(self.board.heap_bytes, sim_machinery=True, tls=tls)) + heap_extra
        self.seed = seed
        self._lock = threading.RLock()
        self._stop_monitor = threading.Event()
        self._monitor: threading.Thread | None = None
        self._status: dict[str, dict] = {}
        self._sub = None
        self.status_refused: str | None = None  # why the broker refused our status subscriber, if it did
        self.secure = broker is not None and broker.password_file is not None
        (self.workdir / "nodes").mkdir(exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.nodes = [self._make_node(i, id_format.format(i + 1), scenarios) for i in range(n)]

    # -- setup

    @staticmethod
    def _check_model(model: Path) -> Path:
        model = Path(model)
        efm = model / "model.efm" if model.is_dir() else model
        if not efm.is_file():
            raise EdgefleetError(
                f"no model file at {efm}", hint="train and convert one: edgefleet train ... ; edgefleet convert ..."
            )
        from ..model.modelfile import decode  # a corrupt or foreign file is refused here, not on 20 nodes

        try:
            decode(efm.read_bytes())
        except EdgefleetError as e:
            raise EdgefleetError(f"{efm}: {e}", hint="convert the model again: edgefleet convert --name NAME") from None
        return efm.resolve()

    @staticmethod
    def _read_keys(keys: Path | dict[str, bytes] | None) -> dict[str, bytes]:
        """Per-device model keys: a dict, or a JSON file {device id: hex} (keys.json). A keyed node loads only
        models signed with its key and takes over-the-air updates (docs/protocol.md); the others refuse them."""
        if keys is None:
            return {}
        if isinstance(keys, dict):
            return {str(k): bytes(v) for k, v in keys.items()}
        try:
            raw = json.loads(Path(keys).read_text())
            out = {str(k): bytes.fromhex(v) for k, v in raw.items()}
        except OSError as e:
            raise EdgefleetError(f"cannot read the key file {keys}: {e.strerror}") from None
        except (ValueError, TypeError, AttributeError):
            raise EdgefleetError(f"key file {keys} must be a JSON object of device id -> key in hex") from None
        bad = [dev for dev, k in out.items() if not 16 <= len(k) <= 64]
        if bad:
            raise EdgefleetError(f"key file {keys}: the keys of {', '.join(bad)} are not 16 to 64 bytes")
        return out

    def _make_node(self, i: int, dev: str, scenarios) -> SimNode:
        spec = scenarios(i) if callable(scenarios) else (scenarios[i % len(scenarios)] if scenarios else None)
        scen = None
        if spec is not None:
            scen = self.workdir / "nodes" / f"{dev}.scenario.json"
            scen.write_text(json.dumps(spec, indent=1))
        return SimNode(
            index=i,
            device_id=dev,
            image=self.workdir / "nodes" / f"{dev}.img",
            scenario=scen,
            password=None,
            log_path=self.workdir / "logs" / f"{dev}.log",
        )

    def credentials(self) -> dict[str, str]:
        """Per-identity passwords (every device, the collector, the operator), created once and kept in the
        workdir (credentials.json, 0600 from creation)."""
        return fleet_credentials(self.workdir / "credentials.json", [nd.device_id for nd in self.nodes])

    @staticmethod
    def write_password_file(creds: dict[str, str], path: Path) -> Path:
        return write_password_file(creds, path)

    @classmethod
    def secure_broker(
        cls, workdir: Path, device_ids: Sequence[str], prefix: str = protocol.DEFAULT_PREFIX, tls: bool = False
    ) -> Mosquitto:
        """The secure broker configuration (docs/security.md): a login per device, collector and operator, the
        per-identity ACL, client ids pinned to user names; with `tls`, also a TLS listener whose CA and server
        certificate (SANs localhost, 127.0.0.1) are created in workdir/tls. Data in workdir/broker."""
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        creds = fleet_credentials(workdir / "credentials.json", device_ids)
        bdir = workdir / "broker"
        bdir.mkdir(exist_ok=True)
        pw = write_password_file(creds, bdir / "passwd")
        acl = bdir / "acl"
        acl.write_text(render_acl(prefix, COLLECTOR_USER, OPERATOR_USER))
        files = None
        if tls:
            from ..broker.pki import create, existing

            tdir = workdir / "tls"
            files = existing(tdir) if (tdir / "server.key").is_file() else create(tdir, ["localhost", "127.0.0.1"])
        return Mosquitto(data_dir=bdir, password_file=pw, acl_file=acl, tls=files)

    def collector_url(self) -> str:
        """Broker URL with the collector's login when the broker requires one. Internal:
        collect.launch.start_collector moves the password into a 0600 file; never print this URL (collector_hint
        says what to run)."""
        if not self.secure:
            return self.broker_url
        pw = self.credentials()[COLLECTOR_USER]
        return parse_broker_url(self.broker_url).url(COLLECTOR_USER, pw)

    def collector_password_file(self) -> Path:
        """The collector's password in a 0600 file (for `edgefleet collect --password-file`)."""
        from ..broker.pki import write_secret

        path = self.workdir / "collector.secret"
        write_secret(path, (self.credentials()[COLLECTOR_USER] + "\n").encode())
        return path

    def collector_hint(self) -> str:
        """The collect command line for this fleet, without any secret on it."""
        if not self.secure:
            return f"edgefleet collect --broker '{self.broker_url}'"
        return (
            f"edgefleet collect --broker '{parse_broker_url(self.broker_url).url(COLLECTOR_USER)}' "
            f"--password-file {self.collector_password_file()}"
        )

    def node_config(self, nd: SimNode) -> dict:
        """What the fleet decides for a node (broker, login, prefix, status interval, model, the --config
        overrides), built and validated by nodeconfig like deploy's; the node merges it over its defaults."""
        broker = {"url": self.broker_url, "username": None, "password": None, "ca": "ca.pem" if self.ca else None}
        if self.secure:
            broker["username"] = nd.device_id
            broker["password"] = self.credentials()[nd.device_id]
        overrides = {"prefix": self.prefix, "broker": broker, "status_interval_s": self.status_interval_s}
        overrides = {**overrides, **self.extra_config}
        key = self.keys.get(nd.device_id)
        return nodeconfig.build(self.board, nd.device_id, overrides, self.model, model_key=key, full=False)

    def node_model(self, nd: SimNode) -> Path | None:
        """The model file node `nd` gets: the fleet's, or for a keyed node the fleet's re-signed with its key
        (same version), as a board gets its own signed copy from deploy; written beside the node's image."""
        key = self.keys.get(nd.device_id)
        if self.model is None or key is None:
            return self.model
        from ..model.modelfile import decode, resign

        data = self.model.read_bytes()
        signed = self.workdir / "nodes" / f"{nd.device_id}.model.efm"
        signed.write_bytes(resign(data, key, downgrade=decode(data).downgrade))
        return signed

    def _mpy(self, args: Sequence[str], timeout: float = 60) -> str:
        argv = [find_micropython(), "-X", f"heapsize={max(self.heap, 256 * 1024)}", *args]
        r = subprocess.run(
            argv, env=micropython_env(), cwd=self.workdir / "nodes", capture_output=True, text=True, timeout=timeout
        )
        if r.returncode:
            raise EdgefleetError(f"{' '.join(args[:3])} failed: {(r.stdout + r.stderr).strip()[-500:]}")
        return r.stdout

    def provision(self, i: int | None = None) -> None:
        """Writes board.json, config.json and the model onto node flash images (all nodes, or node i)."""
        targets = self.nodes if i is None else [self.nodes[i]]
        for nd in targets:
            cfgfile = self.workdir / "nodes" / f"{nd.device_id}.config.json"
            cfgfile.write_text(json.dumps(self.node_config(nd)))
            model = self.node_model(nd)
            files = [f"model.efm={model}"] if model else []
            if self.ca is not None:
                files.append(f"ca.pem={self.ca}")
            self._mpy(["-m", "simboard.provision", str(self.board.path), str(nd.image), str(cfgfile), *files])
            cfgfile.unlink()  # it holds the node's password; the flash keeps the copy
        log.info("provisioned %d node(s) (model %s)", len(targets), self.model or "none")

    # -- processes

    def _argv(self, nd: SimNode) -> list[str]:
        args = [str(self.board.path), str(nd.image), nd.device_id, self.broker_url]
        if nd.scenario is not None:
            args.append(str(nd.scenario))
        return [find_micropython(), "-X", f"heapsize={self.heap}", "-m", "simboard.launch", *args]

    def _spawn(self, nd: SimNode) -> None:
        out = nd.log_path.open("ab")
        out.write(f"--- boot {nd.boots + 1} at {time.strftime('%H:%M:%S')}\n".encode())
        out.flush()
        # cwd: an empty directory of our own, so nothing on the host shadows the firmware (see node.py)
        # own process group, killed with us (procs): SIGINT stops it cleanly (it flushes its log)
        nd.proc = procs.spawn(
            self._argv(nd),
            name=nd.device_id,
            stop_signal=signal.SIGINT,
            env=self._env,
            cwd=self._cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        nd.boots += 1
        nd.started_ms.append(int(time.time() * 1000))

    def start(self, provision: bool = True, stagger_s: float = 0.05) -> Fleet:
        if provision:
            self.provision()
        self._env = micropython_env()
        self._cwd = str(self.workdir / "run")
        Path(self._cwd).mkdir(exist_ok=True)
        self._subscribe_status()
        for nd in self.nodes:
            with self._lock:
                nd.want_up = True
                self._spawn(nd)
            time.sleep(stagger_s)
        self._stop_monitor.clear()
        self._monitor = threading.Thread(target=self._watch, name="fleet-monitor", daemon=True)
        self._monitor.start()
        log.info(
            "fleet of %d nodes started (heap %d bytes each, broker %s)", len(self.nodes), self.heap, self.broker_url
        )
        return self

    def _watch(self) -> None:
        while not self._stop_monitor.wait(0.2):
            with self._lock:
                for nd in self.nodes:
                    if not nd.want_up or nd.proc is None or nd.proc.poll() is None:
                        continue
                    rc = nd.proc.returncode
                    if rc == REBOOT_EXIT:
                        nd.reboots += 1
                        log.info("%s rebooted, starting it again", nd.device_id)
                        self._spawn(nd)
                    else:
                        # The firmware halts on a fatal boot error rather than loop; so do we.
                        nd.crashes += 1
                        nd.want_up = False
                        log.warning("%s exited with code %s (see %s)", nd.device_id, rc, nd.log_path)

    def kill(self, i: int) -> None:
        """SIGKILL node i (a power cut): it stays down until restart(i)."""
        nd = self.nodes[i]
        with self._lock:
            nd.want_up = False
            if nd.running and nd.proc:
                procs.kill(nd.proc)
                nd.kills += 1
                log.info("%s killed (SIGKILL)", nd.device_id)

    def stop_node(self, i: int, timeout: float = 15) -> int | None:
        """SIGINT node i: it flushes and closes its log (a clean shutdown) and stays down."""
        nd = self.nodes[i]
        with self._lock:
            nd.want_up = False
            proc = nd.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        procs.send(proc, signal.SIGINT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop on SIGINT within %.0f s, killed", nd.device_id, timeout)
            nd.kills += 1
            return procs.kill(proc)

    def restart(self, i: int) -> None:
        """Boot node i again on its flash (power-cycling it first when it is running)."""
        nd = self.nodes[i]
        if nd.running:
            self.kill(i)
        with self._lock:
            nd.want_up = True
            self._spawn(nd)
        log.info("%s started again (boot %d)", nd.device_id, nd.boots)

    def stop(self, timeout: float = 15) -> None:
        """Stops every node cleanly (SIGINT, all at once, then wait)."""
        self._stop_monitor.set()
        if self._monitor:
            self._monitor.join()
        with self._lock:
            stopping = []
            for nd in self.nodes:
                nd.want_up = False
                if nd.running and nd.proc:
                    procs.send(nd.proc, signal.SIGINT)
                    stopping.append((nd, nd.proc))
        deadline = time.monotonic() + timeout
        for nd, p in stopping:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s, killed", nd.device_id, timeout)
                procs.kill(p)
                nd.kills += 1
        if stopping:
            log.info("fleet stopped (%d nodes)", len(stopping))

    def close(self) -> None:
        self.stop()
        if self._sub is not None:
            self._sub.disconnect()
            self._sub.loop_stop()
            self._sub = None

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- flash

    def inspect(self, i: int) -> dict:
        """The flash log of a stopped node: durable (last seq on flash), acked, next_seq, corrupt, sectors."""
        nd = self.nodes[i]
        if nd.running:
            raise EdgefleetError(f"{nd.device_id} is running; stop it before reading its flash")
        return json.loads(self._mpy(["-m", "simboard.provision", "--inspect", str(self.board.path), str(nd.image)]))

    def log_offset(self) -> int:
        return self.board.partition("log").offset

    def corrupt_block(self, i: int, sector: int | None = None) -> dict:
        """Clears bits in the middle of one log sector of stopped node i, as a failing flash block would.

        Default: the sector holding the oldest unacknowledged records (so real records are at stake), else the
        newest full sector. Returns the sector and the seq range it held (the records that may be lost).
        """
        info = self.inspect(i)
        secs = sorted(info["sectors"], key=lambda s: s[1])  # by counter: oldest first
        if not secs:
            raise EdgefleetError(f"{self.nodes[i].device_id}: the log is empty, nothing to corrupt")
        if sector is None:
            full = secs[:-1] or secs
            cand = [
                s for k, s in enumerate(full) if (secs[k + 1][2] if k + 1 < len(secs) else 1 << 62) > info["acked"] + 1
            ]
            sector = (cand[0] if cand else full[-1])[0]
        row = next((s for s in secs if s[0] == sector), None)
        if row is None:
            raise EdgefleetError(f"sector {sector} of {self.nodes[i].device_id} holds no log data")
        k = secs.index(row)
        first = row[2]
        last = secs[k + 1][2] - 1 if k + 1 < len(secs) else info["durable"]
        size, header = firmware_constant(FLASHLOG, "SECTOR"), firmware_constant(FLASHLOG, "SH_SIZE")
        end = row[3] if len(row) > 3 else size
        off = self.log_offset() + sector * size + max(header, end // 2)  # inside the written records
        with open(self.nodes[i].image, "r+b") as f:
            f.seek(off)
            old = f.read(8)
            f.seek(off)
            f.write(bytes(b & 0x0F for b in old))
        log.info("%s: corrupted log sector %d (seq %d-%d)", self.nodes[i].device_id, sector, first, last)
        return {"device": self.nodes[i].device_id, "sector": sector, "first_seq": first, "last_seq": last,
                "acked": info["acked"]}  # fmt: skip

    # -- counters

    def _subscribe_status(self) -> None:
        if self._sub is not None:
            return
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        u = parse_broker_url(self.broker_url)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgefleet-simulate-{os.getpid()}-{id(self)}")
        if self.secure:  # the operator identity: reads status; the collector's would take over its session
            c.username_pw_set(OPERATOR_USER, self.credentials()[OPERATOR_USER])
        if u.tls:
            c.tls_set(ca_certs=str(self.ca) if self.ca else None)

        def on_connect(cl, ud, flags, rc, props):
            if not rc.is_failure:
                cl.subscribe(protocol.topic_filter(self.prefix, "status"), qos=1)
            else:
                self.status_refused = str(rc)  # the watchdog of `simulate` reports it

        def on_message(cl, ud, msg):
            try:
                body = json.loads(msg.payload)
            except ValueError:
                return
            dev = msg.topic.split("/")[-2]
            with self._lock:
                prev = self._status.get(dev, {})
                if body.get("state") == "online" or not prev:
                    self._status[dev] = body
                else:
                    self._status[dev] = {**prev, "state": body.get("state")}

        c.on_connect = on_connect
        c.on_message = on_message
        c.reconnect_delay_set(0.5, 2)
        c.connect_async(u.host, u.port, keepalive=10)
        c.loop_start()
        self._sub = c

    def status(self) -> dict[str, dict]:
        """The last status each node published (retained, so also after a restart of this process)."""
        with self._lock:
            return {k: dict(v) for k, v in self._status.items()}

    def counters(self) -> dict[str, dict]:
        """Counters per device from its last status: sampled, rejected, logged, dropped, published, ..."""
        return {dev: st.get("counters", {}) for dev, st in self.status().items()}

    def summary(self) -> dict:
        st = self.status()
        up = sum(1 for nd in self.nodes if nd.running)
        online = sum(1 for s in st.values() if s.get("state") == "online")
        tot: dict[str, int] = {}
        for s in st.values():
            for k, v in s.get("counters", {}).items():
                tot[k] = tot.get(k, 0) + int(v)
        return {"processes": up, "online": online, **tot}


# ---------------------------------------------------------------- CLI

# How long `simulate` waits for a broker's CONNACK before the nodes are started.
BROKER_CHECK_TIMEOUT_S = 5.0


def check_broker(url: str, username: str | None = None, password: str | None = None,
                 timeout: float = BROKER_CHECK_TIMEOUT_S) -> None:  # fmt: skip
    """Connect to the broker once, as the nodes will (anonymous unless a login is given), before any node starts.

    Why: nodes retry a missing or refusing broker forever, so without this a typo in --broker ran the whole
    duration with online=0 and no word. Raises EdgefleetError saying what is wrong: nothing listening, the
    connection refused, the login refused, or no MQTT answer at all.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    u = parse_broker_url(url)
    if username is None and u.username:  # a login in the URL is the one the nodes get
        username, password = u.username, u.password or ""
    where = u.hostport
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgefleet-simulate-check-{os.getpid()}")
    if username:
        c.username_pw_set(username, password)
    if u.tls:
        c.tls_set()
    answer: list = []
    c.on_connect = lambda cl, ud, flags, rc, props: answer.append(rc)
    try:
        c.connect(u.host, u.port, keepalive=10)
    except (ssl.SSLError, ConnectionResetError) as e:
        if not u.tls:
            raise EdgefleetError(f"the MQTT broker at {where} dropped the connection: {e}") from None
        raise EdgefleetError(
            f"TLS to {where} failed: {e}",
            hint="mqtts:// needs a TLS listener on that port (a plain MQTT port resets the handshake), "
            "and a server certificate this machine trusts",
        ) from None
    except OSError as e:
        raise EdgefleetError(
            f"cannot reach the MQTT broker at {where}: {e.strerror or e}",
            hint="start one (edgefleet broker), check --broker, or leave --broker out: 'auto' starts one",
        ) from None
    try:
        deadline = time.monotonic() + timeout
        while not answer and time.monotonic() < deadline:
            c.loop(0.1)
    except OSError as e:
        raise EdgefleetError(f"the MQTT broker at {where} dropped the connection: {e}") from None
    finally:
        c.disconnect()
    if not answer:
        raise EdgefleetError(
            f"no MQTT answer from {where} within {timeout:.0f} s",
            hint="is it an MQTT broker, and the right scheme (mqtt:// plain, mqtts:// TLS)?",
        )
    if answer[0].is_failure:
        who = f"user {username!r}" if username else "an anonymous client (as the nodes connect)"
        raise EdgefleetError(
            f"the MQTT broker at {where} refused {who}: {answer[0]}",
            hint="a --broker URL must accept anonymous nodes; leave --broker out ('auto') for a broker with a "
            "login per node",
        )


def default_scenarios(workdir: Path, n: int, duration_s: float, seed: int = 1) -> list[dict]:
    """Half the nodes replay labelled activities, the other half have sensor faults on env."""
    out = []
    for i in range(n):
        if i % 2 == 0:
            replay = workdir / "nodes" / f"replay-{i + 1:03d}.csv"
            replay.parent.mkdir(parents=True, exist_ok=True)
            basicmotions_replay(replay, seed * 1000 + i)
            out.append(activity_scenario(replay, seed * 1000 + i))
        else:
            out.append(fault_scenario(seed * 1000 + i, duration_s))
    return out


@dataclass
class SimulateOptions:
    """What `edgefleet simulate` runs, one field per option, with the same defaults (the CLI takes them from here)."""

    devices: int = 5
    broker: str = "auto"  # mqtt://HOST:PORT of an anonymous broker, or 'auto': start a secure mosquitto
    model: str | None = None  # model directory or .efm file put on every node
    scenario: str | None = None  # scenario JSON for every node (default: half replay activities, half faults)
    duration: float = 0  # seconds; 0: until Ctrl-C
    workdir: str = "var/sim"
    status_interval: int = 10
    ca: str | None = None  # with an mqtts:// broker: the CA certificate the nodes verify it against
    online_timeout: float = 60
    heap_extra: int = 0


def check_run_numbers(opts: SimulateOptions) -> None:
    """Numbers a node or the run cannot use, refused before anything starts (they used to run with rc 0 and
    crashed or mute nodes)."""
    if opts.devices < 1:
        raise EdgefleetError(f"--devices must be at least 1 (got {opts.devices})")
    if opts.duration < 0:
        raise EdgefleetError(f"--duration must be 0 (until Ctrl-C) or a number of seconds (got {opts.duration})")
    if not 1 <= opts.status_interval <= 86400:
        raise EdgefleetError(f"--status-interval must be 1..86400 seconds (got {opts.status_interval})")
    if opts.heap_extra < 0:
        raise EdgefleetError(f"--heap-extra must be 0 or more bytes (got {opts.heap_extra})")
    if opts.online_timeout < 0:
        raise EdgefleetError(f"--online-timeout must be 0 (never) or a number of seconds (got {opts.online_timeout})")


class OnlineWatchdog:
    """Fails the run with one clear message when no node is online for `timeout_s` (from the start, or after they
    all went offline), or when the broker we started exits: a fleet that cannot reach its broker must not run its
    whole duration with online=0 and no word."""

    def __init__(self, fleet: Fleet, broker: Mosquitto | None, timeout_s: float) -> None:
        self.fleet = fleet
        self.broker = broker
        self.timeout_s = timeout_s
        self.last_online = time.monotonic()

    def check(self, summary: dict) -> None:
        if self.broker is not None and self.broker.proc is not None and self.broker.proc.poll() is not None:
            raise EdgefleetError(
                f"the broker exited (code {self.broker.proc.returncode})", hint=f"see {self.broker.log_path}"
            )
        if self.fleet.status_refused:
            raise EdgefleetError(
                f"the broker {self.fleet.broker_url} refused the status subscriber: {self.fleet.status_refused}",
                hint="check the broker's logins and ACL",
            )
        now = time.monotonic()
        if summary["online"] > 0:
            self.last_online = now
            return
        if not self.timeout_s or now - self.last_online < self.timeout_s:
            return
        crashed = [nd.device_id for nd in self.fleet.nodes if nd.crashes]
        logs = self.fleet.workdir / "logs"
        raise EdgefleetError(
            f"no node has been online for {self.timeout_s:.0f} s (broker {self.fleet.broker_url}"
            + (f"; exited: {', '.join(crashed)}" if crashed else "")
            + ")",
            hint=f"see the node logs in {logs}; the broker must let the nodes connect and publish "
            f"{self.fleet.prefix}/<id>/status (and let us read it); --online-timeout changes the wait",
        )


def run_simulation(opts: SimulateOptions) -> int:
    """`edgefleet simulate`: start the fleet (and a secure broker with broker 'auto'), show its progress until
    the duration is over or Ctrl-C, then print each node's counters."""
    from tqdm import tqdm

    check_run_numbers(opts)
    workdir = writable_dir(opts.workdir, "--workdir").resolve()
    model = Path(opts.model) if opts.model else None
    if model is not None and not model.exists() and (project_root() / model).exists():
        model = project_root() / model
    if opts.scenario:
        sp = Path(opts.scenario)
        try:
            spec = json.loads(sp.read_text())
        except OSError as e:
            raise EdgefleetError(f"cannot read scenario {sp}: {e.strerror}") from None
        except ValueError as e:
            raise EdgefleetError(f"scenario {sp} is not valid JSON: {e}") from None
        scenarios = [spec]
    else:
        (workdir / "nodes").mkdir(exist_ok=True)
        scenarios = default_scenarios(workdir, opts.devices, opts.duration or 60)
    if model is not None:
        Fleet._check_model(model)  # before anything is started
    ids = [f"node-{i + 1:03d}" for i in range(opts.devices)]
    broker = Fleet.secure_broker(workdir, ids).start() if opts.broker == "auto" else None
    try:
        fleet = Fleet(
            workdir,
            opts.devices,
            broker=broker,
            broker_url=None if broker else opts.broker,
            model=model,
            scenarios=scenarios,
            heap_extra=opts.heap_extra,
            status_interval_s=opts.status_interval,
            ca=Path(opts.ca) if opts.ca else None,
        )
    except BaseException:
        if broker:
            broker.stop()
        raise
    try:
        if broker is None:  # ours is listening already (Mosquitto.start waits for it)
            check_broker(fleet.broker_url)
        fleet.start()
        watchdog = OnlineWatchdog(fleet, broker, opts.online_timeout)
        if broker:
            print(f"broker {broker.url}; collect with: {fleet.collector_hint()}", flush=True)
        t0 = time.monotonic()
        total = opts.duration or None
        with tqdm(total=total, unit="s", desc="fleet", dynamic_ncols=True) as bar:
            while total is None or time.monotonic() - t0 < total:
                time.sleep(1)
                bar.update(1)
                s = fleet.summary()
                bar.set_postfix(up=s["processes"], online=s["online"], logged=s.get("logged", 0),
                                published=s.get("published", 0))  # fmt: skip
                watchdog.check(s)
    except KeyboardInterrupt:
        print("stopping the fleet", flush=True)
    finally:
        fleet.close()
        if broker:
            broker.stop()
    for nd in fleet.nodes:
        st = fleet.status().get(nd.device_id, {})
        c = st.get("counters", {})
        print(f"{nd.device_id}: boots {nd.boots} kills {nd.kills} logged {c.get('logged', '-')} published "
              f"{c.get('published', '-')} safe_mode {st.get('safe_mode')} {st.get('error') or ''}")  # fmt: skip
    return 0
