"""The collector's AMQP 0-9-1 transport (`--broker amqp://...`): RabbitMQ, whose MQTT plugin the nodes talk to.

Why a second transport: RabbitMQ clusters and replicates quorum queues, our MQTT 5 brokers that cluster do not
install here, and its MQTT plugin speaks only MQTT 3.1.1 (no shared subscriptions). So the collectors read the
fleet's messages where the plugin puts them: it publishes every MQTT message to the `amq.topic` exchange with
the topic as routing key (`a/b/c` -> `a.b.c`, and a `.` inside a level becomes `/`). Every collector consumes
from one durable quorum queue bound to `<prefix>.#` (competing consumers: each message goes to one of them;
the queue is replicated, so losing a RabbitMQ node loses nothing). Messages are acknowledged only after the
database COMMIT; a collector that dies leaves its unacknowledged messages to be redelivered to another one.
The `stored` acks go back to amq.topic with routing key `<prefix>.<dev>.stored`, where the plugin delivers
them to the node's MQTT subscription.

The collector (collector.py) does not know which transport it has: it gets (generation, message, received_ms)
items on its queue and calls ack/publish_stored/stop. pika's BlockingConnection is not thread-safe, so one I/O
thread owns it; the writer's acks and publishes reach it through add_callback_threadsafe. A delivery tag means
something only on its channel: acks are sent only if the channel they came on is still the current one
(generation), exactly as the MQTT transport does with packet ids.

URL: amqp://[user@]host[:port][,host[:port]...][/vhost] (several hosts: tried in order on every (re)connect;
amqps:// for TLS with --ca/--cert/--key). The password comes from --password-file or the environment, as for MQTT.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from ..errors import EdgefleetError
from ..redact import redact_url

log = logging.getLogger(__name__)
logging.getLogger("pika").setLevel(logging.WARNING)  # one line per socket otherwise; ours say what happened

QUEUE = "edgefleet-collector"
EXCHANGE = "amq.topic"


@dataclass
class AmqpURL:
    hosts: list[tuple[str, int]]
    vhost: str = "/"
    tls: bool = False
    username: str | None = None
    password: str | None = None


def parse_amqp_url(url: str) -> AmqpURL:
    """amqp://[user@]h1[:p1],h2[:p2]/vhost -> AmqpURL (a password in the URL is refused earlier, by the CLI)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("amqp", "amqps"):
        raise EdgefleetError(f"bad broker URL {redact_url(url)!r}", hint="amqp://[user@]host:port[,host:port]/vhost")
    tls = scheme == "amqps"
    netloc, _, path = rest.partition("/")
    user = password = None
    if "@" in netloc:
        cred, _, netloc = netloc.rpartition("@")
        user, _, pw = cred.partition(":")
        user, password = unquote(user) or None, unquote(pw) or None
    hosts: list[tuple[str, int]] = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "")
        if not host:
            raise EdgefleetError(f"bad host in broker URL {redact_url(url)!r}", hint="amqp://host:5672[,host:5672]/")
        try:
            p = int(port) if port else (5671 if tls else 5672)
            if not 0 < p < 65536:
                raise ValueError
        except ValueError:
            raise EdgefleetError(f"bad port in broker URL {redact_url(url)!r}") from None
        hosts.append((host, p))
    vhost = unquote(path) if path else "/"
    return AmqpURL(hosts=hosts, vhost=vhost, tls=tls, username=user, password=password)


def topic_to_key(topic: str) -> str:
    """MQTT topic -> AMQP routing key as RabbitMQ's MQTT plugin maps them ('/' and '.' swap)."""
    return topic.translate(_SWAP)


def key_to_topic(key: str) -> str:
    return key.translate(_SWAP)


_SWAP = str.maketrans({"/": ".", ".": "/"})


@dataclass(slots=True)
class AmqpMessage:
    """What the collector reads of a message (the same attribute names as paho's MQTTMessage)."""

    _topic: bytes
    payload: bytes
    mid: int  # the delivery tag
    qos: int = 1
    retain: bool = False


@dataclass
class _State:
    gen: int = 0
    channel: object | None = None
    connection: object | None = None
    reconnects: int = 0


class AmqpTransport:
    """One AMQP connection (to the first reachable host of the list) consuming the shared quorum queue."""

    def __init__(
        self,
        url: str,
        prefix: str,
        client_id: str,
        password: str | None = None,
        inflight: int = 1000,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        queue_name: str = QUEUE,
    ) -> None:
        import pika

        self.url = parse_amqp_url(url)
        if password is not None:
            self.url.password = password
        self.prefix = prefix
        self.client_id = client_id
        self.queue_name = queue_name
        self.inflight = inflight
        self.where = ",".join(f"{h}:{p}" for h, p in self.url.hosts)
        creds = pika.PlainCredentials(self.url.username or "guest", self.url.password or "")
        ssl_options = None
        if self.url.tls or ca or cert:
            try:
                ctx = ssl.create_default_context(cafile=ca)
                if cert:
                    ctx.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise EdgefleetError(f"cannot set up TLS: {e}", hint="check --ca/--cert/--key") from None
        self._params = []
        for host, port in self.url.hosts:
            if self.url.tls or ca or cert:
                ssl_options = pika.SSLOptions(ctx, host)
            self._params.append(
                pika.ConnectionParameters(
                    host=host,
                    port=port,
                    virtual_host=self.url.vhost,
                    credentials=creds,
                    heartbeat=10,
                    blocked_connection_timeout=60,
                    socket_timeout=5,
                    connection_attempts=1,
                    ssl_options=ssl_options,
                    client_properties={"connection_name": client_id},
                )
            )
        self._s = _State()
        self._stop_receiving = threading.Event()
        self._closing = threading.Event()
        self.connected = threading.Event()
        self.refused: str | None = None
        self.fatal: tuple[str, str] | None = (
            None  # (message, hint): the session cannot go on (the MQTT transport sets it)
        )
        self._deliver: Callable[[tuple], None] | None = None
        self._thread: threading.Thread | None = None
        self.current = ""

    @property
    def reconnects(self) -> int:
        return self._s.reconnects

    # -- the I/O thread
    def start(self, deliver: Callable[[tuple], None], now_ms: Callable[[], int]) -> None:
        self._deliver = deliver
        self._now_ms = now_ms
        self._thread = threading.Thread(target=self._run, name="collector-amqp", daemon=True)
        self._thread.start()

    def _connect(self):
        import pika

        conn, err = None, None
        for params in self._params:  # in order: the first reachable host
            try:
                conn = pika.BlockingConnection(params)
                break
            except pika.exceptions.AMQPConnectionError as e:
                if isinstance(e, pika.exceptions.ProbableAuthenticationError):
                    raise
                err = e
        if conn is None:
            raise err or pika.exceptions.AMQPConnectionError("no host")
        self.current = f"{params.host}:{params.port}"
        ch = conn.channel()
        ch.queue_declare(self.queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(self.queue_name, EXCHANGE, routing_key=f"{topic_to_key(self.prefix)}.#")
        ch.basic_qos(prefetch_count=self.inflight)
        gen = self._s.gen + 1

        def on_message(channel, method, properties, body):
            msg = AmqpMessage(key_to_topic(method.routing_key).encode("utf-8", "surrogateescape"), body,
                              method.delivery_tag)  # fmt: skip
            self._deliver((gen, msg, self._now_ms()))

        ch.basic_consume(self.queue_name, on_message, consumer_tag=f"{self.client_id}-{gen}")
        self._s.gen, self._s.channel, self._s.connection = gen, ch, conn
        return conn

    def _run(self) -> None:
        import pika.exceptions as pe

        delay = 0.2
        first = True
        while not self._closing.is_set():
            try:
                conn = self._connect()
            except pe.ProbableAuthenticationError as e:
                self.refused = f"login refused ({e.__class__.__name__})"
                log.error("broker %s refused the login", self.where)
                if first:
                    return
                self._closing.wait(delay)
                continue
            except (pe.AMQPError, OSError) as e:
                if first and not isinstance(e, pe.AMQPConnectionError):
                    self.refused = f"{type(e).__name__}: {e}"  # e.g. no permission on the queue: not transient
                    log.error("broker %s: %s", self.where, self.refused)
                    return
                log.debug("AMQP connect failed: %r", e)
                self._closing.wait(delay)
                delay = min(delay * 2, 5)
                continue
            if not first:
                self._s.reconnects += 1
            first, delay = False, 0.2
            log.info("connected to %s (AMQP, queue %s, consumer %s)", self.current, self.queue_name, self.client_id)
            self.connected.set()
            try:
                consuming = True
                while not self._closing.is_set():
                    if consuming and self._stop_receiving.is_set():
                        self._s.channel.basic_cancel(f"{self.client_id}-{self._s.gen}")  # acks still flow
                        consuming = False
                    conn.process_data_events(time_limit=0.1)
                conn.process_data_events(time_limit=0)
                conn.close()
                return
            except (pe.AMQPError, OSError) as e:
                self.connected.clear()
                self._s.gen += 1  # messages of the lost channel are redelivered by the broker: never ack them
                self._s.channel = self._s.connection = None
                if not self._closing.is_set():
                    log.warning("disconnected from broker (%s); reconnecting", type(e).__name__)

    # -- called from the writer thread
    def _call(self, fn: Callable[[], None]) -> bool:
        conn = self._s.connection
        if conn is None:
            return False
        try:
            conn.add_callback_threadsafe(fn)
            return True
        except Exception:  # the connection closed meanwhile: the broker redelivers; nothing to do here
            return False

    def ack(self, items: list) -> None:
        """Ack the batch: one `multiple` ack up to its highest tag (the queue is FIFO per channel and batches are
        written in order, so every lower tag of this channel was delivered earlier and is in this batch or acked)."""
        gen = self._s.gen
        tags = [msg.mid for g, msg, _ in items if g == gen]
        if not tags:
            return
        top = max(tags)

        def do() -> None:
            if self._s.gen == gen and self._s.channel is not None:
                self._s.channel.basic_ack(delivery_tag=top, multiple=True)

        self._call(do)

    def publish_stored(self, messages: Iterable[tuple[str, bytes]]) -> int:
        import pika

        msgs = [(topic_to_key(t), p) for t, p in messages]
        if not msgs:
            return 0
        props = pika.BasicProperties(delivery_mode=2, headers={"collector": self.client_id})

        def do() -> None:
            ch = self._s.channel
            if ch is not None:
                for key, payload in msgs:
                    ch.basic_publish(EXCHANGE, key, payload, properties=props)

        return len(msgs) if self._call(do) else 0

    def wait_first_session(self, timeout: float) -> str | None:
        """None once connected; else why not (refused, or unreachable for `timeout` s)."""
        deadline = time.monotonic() + timeout
        while not self.connected.wait(0.1):
            if self.refused:
                return self.refused
            if time.monotonic() > deadline:
                return f"could not be reached in {timeout:.0f} s"
            if self._thread is not None and not self._thread.is_alive():
                return self.refused or "closed the connection"
        return None

    def first_session_hint(self) -> tuple[str | None, str]:
        if self.refused and "login" in self.refused:
            return None, "check the user name in --broker and the password (--password-file or the environment)"
        return None, "check the hosts and ports in --broker (AMQP, default 5672) and that RabbitMQ is running"

    def stop_receiving(self) -> None:
        self._stop_receiving.set()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(10)
