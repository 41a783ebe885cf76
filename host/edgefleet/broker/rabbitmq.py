"""A RabbitMQ cluster on loopback from the Debian package: AMQP for collectors, its MQTT plugin for nodes.

Why: our clustered MQTT 5 brokers (EMQX, HiveMQ, VerneMQ) do not install here; RabbitMQ does, clusters, and
replicates quorum queues across nodes. The nodes keep speaking MQTT 3.1.1 to the MQTT plugin, which publishes
to the `amq.topic` exchange (topic `a/b/c` becomes routing key `a.b.c`); collectors consume over AMQP 0-9-1
from one durable quorum queue bound there (edgefleet.collect.collector_amqp).

Every node of the cluster has its own ports, data and log directories under one temporary root, a shared Erlang
cookie (HOME points at the root) and a private epmd port, so nothing touches a system RabbitMQ. The Debian
wrappers in /usr/sbin switch to the `rabbitmq` user; we call the scripts in /usr/lib/rabbitmq/bin directly.

Logins and topic permissions mirror broker.render_acl (the mosquitto ACL): a device user may publish only
`<prefix>.<dev>.(telemetry|event|status|ack)` and read only `<prefix>.<dev>.(stored|cmd)`; the collector user reads
`<prefix>.#` from its queue and is the only one that may publish `<prefix>.*.stored`; the operator user publishes
`<prefix>.*.cmd`. The `guest` user is deleted.
"""

from __future__ import annotations

import glob
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import procs
from ..errors import EdgefleetError
from ..procs import free_port

log = logging.getLogger(__name__)

RMQ_BIN = Path(os.environ.get("RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
QUEUE = "edgefleet-collector"  # the collectors' shared quorum queue (competing consumers)
NODE_TOPICS_OUT = "telemetry|event|status|ack"
NODE_TOPICS_IN = "stored|cmd"
# The over-the-air chunk routing keys `<prefix>.ota.<art>.<n>` (docs/protocol.md): devices read, operators write.
OTA_CHUNKS = "ota\\.[0-9a-f]+\\.[0-9]+"


def find_rabbitmq() -> Path:
    if not (RMQ_BIN / "rabbitmq-server").is_file():
        raise EdgefleetError(
            f"RabbitMQ not found in {RMQ_BIN}", hint="apt-get install rabbitmq-server (or set $RABBITMQ_BIN)"
        )
    return RMQ_BIN


def _epmd() -> str:
    found = shutil.which("epmd") or next(iter(sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))), None)
    if not found:
        raise EdgefleetError("epmd (Erlang) not found", hint="apt-get install rabbitmq-server")
    return found


@dataclass
class RabbitNode:
    name: str  # Erlang node name, e.g. efr1@localhost
    amqp_port: int
    mqtt_port: int
    dist_port: int
    base: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)


class RabbitCluster:
    """N RabbitMQ nodes clustered on loopback, with the MQTT plugin, logins and topic permissions."""

    def __init__(self, size: int = 3, root: Path | None = None, prefix: str = "edgefleet") -> None:
        if size < 1:
            raise EdgefleetError("a RabbitMQ cluster needs at least 1 node")
        self.bin = find_rabbitmq()
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="edgefleet-rmq-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.epmd_port = free_port()
        tag = secrets.token_hex(3)
        self.nodes = [
            RabbitNode(f"ef{tag}r{i + 1}@localhost", free_port(), free_port(), free_port(), self.root / f"n{i + 1}")
            for i in range(size)
        ]
        cookie = self.root / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20))
            cookie.chmod(0o400)

    # -- environment of every rabbitmq command for one node
    def _env(self, node: RabbitNode) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.root),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_MNESIA_BASE=str(node.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(node.base / "log"),
            RABBITMQ_PID_FILE=str(node.base / "pid"),
            RABBITMQ_CONFIG_FILE=str(node.base / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(node.base / "enabled_plugins"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(node.base / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(node.base / "rabbitmq-env.conf"),
        )
        return env

    def _write_config(self, node: RabbitNode) -> None:
        node.base.mkdir(parents=True, exist_ok=True)
        (node.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{node.mqtt_port}\n"
            "mqtt.allow_anonymous = false\n"
            "mqtt.vhost = /\n"
            "mqtt.exchange = amq.topic\n"
            # Persistent-session (clean_session=0) subscription queues as quorum queues; clean sessions (our
            # firmware) get classic queues, mirrored by the policy set in start().
            "mqtt.durable_queue_type = quorum\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (node.base / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        # Erlang distribution on loopback only (it listens on every interface by default).
        (node.base / "advanced.config").write_text("[{kernel, [{inet_dist_use_interface, {127,0,0,1}}]}].\n")
        (node.base / "rabbitmq-env.conf").write_text("")

    def ctl(self, node: RabbitNode, *args: str, timeout: float = 60, check: bool = True) -> str:
        """Run rabbitmqctl against one node; a failure is an EdgefleetError with its output."""
        argv = [str(self.bin / "rabbitmqctl"), "-n", node.name, *args]
        try:
            r = subprocess.run(argv, env=self._env(node), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgefleetError(f"rabbitmqctl {' '.join(args[:2])} on {node.name} timed out") from None
        if check and r.returncode != 0:
            raise EdgefleetError(f"rabbitmqctl {' '.join(args)} on {node.name} failed: {(r.stderr or r.stdout)[-800:]}")
        return r.stdout

    # -- lifecycle
    def start_node(self, node: RabbitNode) -> None:
        if node.proc and node.proc.poll() is None:
            return
        self._write_config(node)
        logf = (node.base / "console.log").open("ab")
        node.proc = procs.spawn(
            [str(self.bin / "rabbitmq-server")],
            name=node.name,
            env=self._env(node),
            stdout=logf,
            stderr=logf,
            cwd=str(node.base),
        )
        logf.close()

    def await_node(self, node: RabbitNode, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if node.proc is not None and node.proc.poll() is not None:
                tail = (node.base / "console.log").read_text(errors="replace")[-2000:]
                raise EdgefleetError(f"RabbitMQ node {node.name} exited at start: {tail}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise EdgefleetError(f"RabbitMQ node {node.name} did not start within {timeout:.0f} s")
            try:
                self.ctl(node, "await_startup", "--timeout", str(max(1, int(min(left, 30)))), timeout=left + 5)
                return
            except EdgefleetError:
                time.sleep(0.5)  # the node may not have registered with epmd yet

    def start(self, users: dict[str, str] | None = None) -> RabbitCluster:
        """Start every node, cluster them, delete guest, create `users` (name -> password; see set_user)."""
        try:
            for n in self.nodes:
                self.start_node(n)
            for n in self.nodes:
                self.await_node(n)
            first = self.nodes[0]
            for n in self.nodes[1:]:
                self.ctl(n, "stop_app")
                self.ctl(n, "join_cluster", first.name)
                self.ctl(n, "start_app")
            # A node's QoS 1 subscription queue (its `stored` and `cmd`) is a durable classic queue on the broker node
            # it connected to; if that node dies the device cannot connect anywhere (queue.declare: home node down)
            # until it returns. Mirrored to every node, a mirror takes over.
            self.ctl(first, "set_policy", "--apply-to", "queues", "mqtt-subscriptions", "^mqtt-subscription-",
                     '{"ha-mode":"all","ha-sync-mode":"automatic"}')  # fmt: skip
            self.ctl(first, "delete_user", "guest", check=False)
            for name, password in (users or {}).items():
                self.set_user(name, password)
        except BaseException:
            self.stop()
            raise
        log.info("RabbitMQ cluster of %d nodes: AMQP %s, MQTT %s", len(self.nodes), self.amqp_url, self.mqtt_ports)
        return self

    def kill_node(self, i: int) -> None:
        """kill -9 one node (the Erlang VM and its helpers: its process group)."""
        n = self.nodes[i]
        if n.proc is not None:
            procs.kill(n.proc)

    def restart_node(self, i: int) -> None:
        n = self.nodes[i]
        self.start_node(n)
        self.await_node(n)

    def stop(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                procs.terminate(n.proc, signal.SIGTERM, grace=15, name=n.name)
        subprocess.run(
            [_epmd(), "-kill"], env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)}, capture_output=True
        )

    def __enter__(self) -> RabbitCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- users and permissions (the equivalent of broker.render_acl)
    def _alive(self) -> RabbitNode:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                return n
        raise EdgefleetError("no RabbitMQ node is running")

    def set_user(self, name: str, password: str) -> None:
        """`collector` and `operator` get their roles; any other name is a device id (publishes only under it)."""
        n = self._alive()
        self.ctl(n, "add_user", name, password)
        p = _re_escape(self.prefix)
        mqtt_q = "mqtt-subscription-.*"
        if name == "collector":
            perms = (f"^{QUEUE}$", f"^(amq\\.topic|{QUEUE})$", f"^(amq\\.topic|{QUEUE})$")
            topic = (f"^{p}\\.[^.]+\\.stored$", f"^{p}\\..*")
        elif name == "operator":
            perms = (f"^{mqtt_q}", f"^(amq\\.topic|{mqtt_q})$", f"^(amq\\.topic|{mqtt_q})$")
            topic = (f"^{p}\\.([^.]+\\.cmd|{OTA_CHUNKS})$", f"^{p}\\.([^.]+\\.(status|ack)|{OTA_CHUNKS})$")
        else:
            d = _re_escape(name.replace(".", "/"))  # the MQTT plugin maps '.' in a topic level to '/'
            perms = (f"^{mqtt_q}", f"^(amq\\.topic|{mqtt_q})$", f"^(amq\\.topic|{mqtt_q})$")
            topic = (f"^{p}\\.{d}\\.({NODE_TOPICS_OUT})$", f"^{p}\\.({d}\\.({NODE_TOPICS_IN})|{OTA_CHUNKS})$")
        self.ctl(n, "set_permissions", "-p", "/", name, *perms)
        self.ctl(n, "set_topic_permissions", "-p", "/", name, "amq.topic", *topic)

    # -- addresses
    @property
    def amqp_url(self) -> str:
        """The collector's --broker URL: every node, for failover (no user: see amqp_url_for)."""
        return "amqp://" + ",".join(f"127.0.0.1:{n.amqp_port}" for n in self.nodes) + "/"

    def amqp_url_for(self, user: str) -> str:
        return f"amqp://{user}@" + ",".join(f"127.0.0.1:{n.amqp_port}" for n in self.nodes) + "/"

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]


def _re_escape(s: str) -> str:
    """Escape for RabbitMQ's regexes (Erlang re: PCRE), the same metacharacters as Python's re.escape."""
    import re

    return re.escape(s)


class TcpBalancer:
    """haproxy in TCP mode in front of the cluster's MQTT ports: the nodes keep one broker address and a kill -9
    of a RabbitMQ node costs them one reconnect (health checks every 500 ms take the dead node out)."""

    def __init__(self, ports: list[int], root: Path, port: int = 0, balance: str = "leastconn") -> None:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(exe).is_file():
            raise EdgefleetError("haproxy not found", hint="apt-get install haproxy")
        self.exe = exe
        self.port = port or free_port()
        self.conf = Path(root) / "haproxy.cfg"
        servers = "\n".join(f"    server b{i} 127.0.0.1:{p} check inter 500 fall 1 rise 2" for i, p in enumerate(ports))
        self.conf.write_text(
            "global\n    maxconn 9000\n"
            "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n    timeout server 120s\n"
            "    retries 3\n    option redispatch\n"
            f"frontend mqtt\n    bind 127.0.0.1:{self.port}\n    default_backend rabbit\n"
            f"backend rabbit\n    balance {balance}\n{servers}\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10) -> TcpBalancer:
        import socket

        self.proc = procs.spawn([self.exe, "-db", "-q", "-f", str(self.conf)], name="haproxy",
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EdgefleetError(f"haproxy exited: {self.proc.stderr.read().decode(errors='replace')[-800:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise EdgefleetError(f"haproxy did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            procs.terminate(self.proc, signal.SIGTERM, grace=5, name="haproxy")


def read_users_file(path: str | Path) -> dict[str, str]:
    """`name password` per line (# comments); the file should be mode 600, like every password file of ours."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise EdgefleetError(f"cannot read users file {p}: {e.strerror}") from None
    if os.name == "posix" and p.stat().st_mode & 0o077:
        log.warning("users file %s is readable by others (chmod 600 it)", p)
    users: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, password = line.partition(" ")
        if not password.strip():
            raise EdgefleetError(f"{p}:{i}: expected `name password`", hint="one user per line: node-001 s3cret")
        users[name] = password.strip()
    if "collector" not in users:
        raise EdgefleetError(f"{p} has no `collector` user", hint="the collectors log in as `collector`")
    return users


def run_cluster(size: int, users_file: str, mqtt_port: int, data_dir: str | None, prefix: str) -> int:
    """`edgefleet broker --rabbitmq-cluster N`: N nodes on loopback, haproxy on `mqtt_port` for the nodes, until
    Ctrl-C; prints the addresses the nodes and collectors use."""
    users = read_users_file(users_file)
    cluster = RabbitCluster(size, root=Path(data_dir) if data_dir else None, prefix=prefix)
    lb = TcpBalancer(cluster.mqtt_ports, cluster.root, port=mqtt_port)
    print(f"starting {size} RabbitMQ nodes in {cluster.root} (takes ~15 s a node)", flush=True)
    try:
        cluster.start(users=users)
        lb.start()
        print(f"nodes (MQTT 3.1.1, via haproxy): mqtt://127.0.0.1:{lb.port}", flush=True)
        print(f"  or any node directly: {', '.join(f'127.0.0.1:{p}' for p in cluster.mqtt_ports)}", flush=True)
        print(f"collectors: edgefleet collect --broker {cluster.amqp_url_for('collector')} ...", flush=True)
        print("Ctrl-C stops the cluster", flush=True)
        while all(n.proc is not None and n.proc.poll() is None for n in cluster.nodes):
            time.sleep(0.5)
        dead = [n.name for n in cluster.nodes if n.proc is None or n.proc.poll() is not None]
        raise EdgefleetError(f"RabbitMQ node(s) {', '.join(dead)} stopped; logs under {cluster.root}")
    except KeyboardInterrupt:
        print("stopping the cluster", flush=True)
        return 0
    finally:
        lb.stop()
        cluster.stop()
