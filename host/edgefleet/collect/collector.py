"""`edgefleet collect`: MQTT -> validated records -> database, each record exactly once, nothing lost.

No-loss design. The collector is an MQTT 5 client with a persistent session (clean_start false, session expiry
7 days) subscribed at QoS 1 with paho's manual_ack. `on_message` only puts the message on a queue. One worker
thread takes messages in batches (up to --batch messages or --batch-ms milliseconds), validates them with
edgefleet.wire.protocol, writes the whole batch in one database transaction, commits, and only then sends the PUBACKs.
A kill -9 at any moment leaves every unacknowledged message in the broker's session; it is redelivered on
reconnect, and (device, seq) keys turn the redelivered records into counted duplicates. Acks are only sent on
the connection the message arrived on: after a reconnect the broker redelivers the unacknowledged messages
anyway, and an ack with a stale packet id could acknowledge a different, uncommitted message.

Survival (issue 10). A message that fails validation, or whose building raises anything at all, is dead-lettered
whole with its reason; if the database refuses a batch for its data, the batch is written again message by
message and the message it refuses is dead-lettered (the others are stored, both acked). If the database is
unavailable (PostgreSQL down, SQLite locked past --db-timeout, disk full), nothing is acked: the writer keeps the
batch, logs one line, retries with backoff (the MQTT session stays up; --inflight bounds what piles up) and logs
one line when it is back. After each COMMIT it publishes the `stored` acks of protocol v2 (storedack.py).

--inflight is the MQTT 5 Receive Maximum asked of the broker (mosquitto 2.0.11 was seen to exceed it under a
burst; see docs/collect.md). The MQTT client is `mqttfast.FastClient`, paho with batched I/O (the figures are in
docs/benchmarks.md, "Collector throughput").

Transports (issue 17). The writer does not know its broker: the `--broker` scheme picks a transport with one
small seam (start(deliver), ack(items), publish_stored, wait_first_session, first_session_hint, stop_receiving,
close). `MqttTransport` below is the MQTT 5 path described above; `collector_amqp.AmqpTransport` consumes
RabbitMQ's quorum queue over AMQP 0-9-1 (docs/scale.md). An MQTT 5 connect that gets no session is followed by
an MQTT 3.1.1 probe, so a 3.1.1-only broker (RabbitMQ's MQTT plugin) is named as such, not as a login problem.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from .. import procs
from ..errors import EdgefleetError
from ..redact import read_secret_file, redact_text, redact_url, refuse_password_in_url
from ..wire import ota, protocol
from ..wire.storedack import StoredAcks
from ..wire.url import parse_broker_url
from .storage import Batch, Storage, WriteResult, open_storage
from .storage.base import DEAD_LETTER_CAP, DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_ROWS, now_ms

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
PASSWORD_ENV = "EDGEFLEET_BROKER_PASSWORD"
SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason code: another client connected with our client id
SHORT_SESSION_S = 2.0  # a session the broker closes this soon after accepting it counts towards a takeover fight
TAKEOVER_SESSIONS = 5  # that many in a row: another client with our client id (see _on_disconnect)
RETRY_FIRST_S = 0.5  # first wait after a database outage; doubles up to retry_max_s


@dataclass
class Stats:
    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    dead: int = 0
    dead_pruned: int = 0
    storage_refused: int = 0  # messages the database refused for their data (dead-lettered)
    outages: int = 0
    stored_acks: int = 0  # `stored` messages published
    ignored: int = 0  # over-the-air chunks (`<prefix>/ota/#`): acked, not stored, not dead letters
    batches: int = 0
    busy_s: float = 0.0  # worker time spent validating and writing (the rest is waiting for messages)
    busy_cpu_s: float = 0.0  # CPU time of the worker thread in that (the benchmark's split of CPU per message)
    max_batch: int = 0


class MqttTransport:
    """The MQTT 5 transport (mqtt:// and mqtts://): a persistent session, manual acks, `$share` groups."""

    def __init__(
        self,
        broker: str,
        prefix: str,
        group: str | None,
        client_id: str,
        ca: str | None,
        cert: str | None,
        key: str | None,
        inflight: int,
        password: str | None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.url = parse_broker_url(broker)
        if password is not None:
            self.url.password = password
        self.where = f"{self.url.host}:{self.url.port}"
        self.prefix = prefix
        self.group = group
        self.client_id = client_id
        self._gen = 0  # connection generation; messages are acked only on the connection they came on
        self._gen_lock = threading.Lock()
        self.connected = threading.Event()
        self.refused: str | None = None
        self.fatal: tuple[str, str] | None = None  # (message, hint): the session cannot go on
        self._connected_at = 0.0
        self._short_sessions = 0  # sessions in a row the broker closed within SHORT_SESSION_S
        self.reconnects = 0
        self._deliver = None
        self._now_ms = now_ms

        from .mqttfast import FAST_IO, FastClient

        if not FAST_IO:
            import paho.mqtt

            log.warning("paho-mqtt %s: mqttfast does not apply, using the stock (slower) client", paho.mqtt.__version__)
        cls = FastClient if FAST_IO else mqtt.Client
        c = cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True)
        if self.url.username:
            c.username_pw_set(self.url.username, self.url.password)
        if self.url.tls or ca or cert:
            try:
                c.tls_set(ca_certs=ca, certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise EdgefleetError(f"cannot set up TLS: {e}", hint="check --ca/--cert/--key") from None
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.reconnect_delay_set(0.2, 5)
        self.client = c
        self._props = Properties(PacketTypes.CONNECT)
        self._props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._props.ReceiveMaximum = inflight
        # Which collector stored it (for operators and the shared-group test; nodes ignore it).
        self._stored_props = Properties(PacketTypes.PUBLISH)
        self._stored_props.UserProperty = ("collector", client_id)

    # -- MQTT thread (paho's loop): never blocks
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        if reason_code.is_failure:
            self.refused = str(reason_code)
            log.error("broker refused the connection: %s", reason_code)
            return
        if self.fatal is not None:  # a reconnect already under way when the takeover was recognised
            client.disconnect()
            return
        with self._gen_lock:
            if self.connected_once:
                self.reconnects += 1
            self.connected_once = True
            self._gen += 1
            self._connected_at = time.monotonic()
        log.info(
            "connected to %s:%d as %s (session present: %s)",
            self.url.host,
            self.url.port,
            self.client_id,
            flags.session_present,
        )
        # retainHandling=1: retained status only when the subscription is new, not again on every reconnect.
        opts = SubscribeOptions(qos=1, retainHandling=1)
        client.subscribe([(t, opts) for t in protocol.subscriptions(self.prefix, self.group)])
        self.connected.set()

    connected_once = False

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._gen_lock:
            self._gen += 1
        self.connected.clear()
        short = time.monotonic() - self._connected_at < SHORT_SESSION_S
        self._short_sessions = self._short_sessions + 1 if short else 0
        taken = getattr(reason_code, "value", None) == SESSION_TAKEN_OVER or self._short_sessions >= TAKEOVER_SESSIONS
        if taken and not self._stopping:
            # Another client keeps connecting with our client id. On the secure broker the client id is the
            # login's user name, so this is a second collector (or a leftover one) on the same login: the two
            # would take the session from each other for ever (mosquitto closes the older connection, with no
            # reason code a client sees here, so a run of sessions closed right after they began is the sign).
            # This one stops and says why (the other may recognise it at the same moment and stop too: both say
            # why, and neither goes on fighting).
            self.fatal = (
                f"broker {self.where} keeps giving this collector's session to another client logged in as "
                f"{self.url.username or self.client_id!r} ({self._short_sessions} sessions closed within "
                f"{SHORT_SESSION_S:g} s of starting; two collectors on one login?)",
                "give each collector its own login (edgefleet broker --collector-user collector-1 --collector-user "
                "collector-2, docs/collect.md); the broker pins each login's client id to its user name",
            )
            self._stopping = True
            client.disconnect()
            log.error("%s; %s", *self.fatal)
            return
        if not self._stopping:
            log.warning("disconnected from broker (%s); reconnecting", reason_code)

    _stopping = False

    def _on_message(self, client, userdata, msg) -> None:
        self._deliver((self._gen, msg, self._now_ms()))

    # -- the seam the collector uses
    def start(self, deliver, now_ms_fn) -> None:
        self._deliver, self._now_ms = deliver, now_ms_fn
        try:
            self.client.connect(self.url.host, self.url.port, keepalive=30, clean_start=False, properties=self._props)
        except (OSError, ssl.SSLError) as e:
            raise EdgefleetError(f"cannot connect to broker {self.where}: {e}") from None
        self.client.loop_start()

    def ack(self, items: list) -> None:
        with self._gen_lock:
            gen = self._gen
            mids = [msg.mid for g, msg, _ in items if g == gen and msg.qos == 1]
            ack_many = getattr(self.client, "ack_many", None)
            if ack_many is not None:
                ack_many(mids)
            else:
                for mid in mids:
                    self.client.ack(mid, 1)

    def publish_stored(self, messages) -> int:
        """QoS 1, never retained (a retained one would be stale)."""
        n = 0
        for topic, payload in messages:
            self.client.publish(topic, payload, qos=1, retain=False, properties=self._stored_props)
            n += 1
        return n

    def wait_first_session(self, timeout: float) -> str | None:
        """None once a session is up; else why not."""
        deadline = time.monotonic() + timeout
        while not self.connected.wait(0.1):
            if self.refused:
                return f"refused the connection: {self.refused}"
            if time.monotonic() > deadline:
                return f"gave no session in {timeout:.0f} s"
        return None

    def first_session_hint(self) -> str:
        """Why a broker gives no session: a broker that speaks only MQTT 3.1.1 (RabbitMQ's MQTT plugin) is told
        apart from bad credentials by a 3.1.1 probe, so the user is not sent to check a correct password."""
        if not self.url.tls and speaks_only_mqtt311(self.url.host, self.url.port):
            return (
                f"broker {self.where} speaks MQTT 3.1.1, not MQTT 5, which the collector needs (persistent session, "
                "shared subscriptions)",
                "for RabbitMQ's MQTT plugin, collect over AMQP: --broker amqp://[user@]host:5672[,host:5672]/ "
                "(docs/scale.md); otherwise use an MQTT 5 broker (mosquitto 2, EMQX, HiveMQ, VerneMQ)",
            )
        return (
            None,
            "check the user name in --broker, the password (--password-file or "
            f"${PASSWORD_ENV}), and --cert/--key if the broker wants a client certificate",
        )

    def stop_receiving(self) -> None:
        self._stopping = True
        self.client.loop_stop()  # no more messages; the socket stays open for the final acks

    def close(self) -> None:
        """Send the final PUBACKs over the still-open socket, then a clean DISCONNECT."""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            self.client.loop_write()
            if not self.client.want_write():
                break
            time.sleep(0.01)
        self.client.disconnect()


def speaks_only_mqtt311(host: str, port: int, timeout: float = 3.0) -> bool:
    """True if the broker answers an MQTT 3.1.1 CONNECT with a CONNACK (any return code: even 'not authorised'
    means it speaks 3.1.1). Asked only after an MQTT 5 CONNECT got no session."""
    client_id = b"edgefleet-probe"
    var = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol level 4 (3.1.1), clean session, keepalive 10
    body = var + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(bytes([0x10, len(body)]) + body)
            got = s.recv(4)
    except OSError:
        return False
    return len(got) == 4 and got[0] == 0x20 and got[1] == 2


def make_transport(broker: str, prefix: str, group: str | None, client_id: str, ca, cert, key, inflight, password):
    """The --broker URL scheme chooses the transport; the collector sees only the seam (start, ack,
    publish_stored, wait_first_session, first_session_hint, stop_receiving, close, where, reconnects)."""
    scheme = broker.partition("://")[0]
    if scheme in ("amqp", "amqps"):
        if group:
            raise EdgefleetError(
                "--group is for MQTT 5 shared subscriptions",
                hint="over AMQP every collector consumes the one shared quorum queue: leave --group out",
            )
        from .collector_amqp import AmqpTransport

        return AmqpTransport(broker, prefix, client_id, password=password, inflight=inflight, ca=ca, cert=cert, key=key)
    return MqttTransport(broker, prefix, group, client_id, ca, cert, key, inflight, password)


class Collector:
    """One collector process: a broker transport and a writer thread sharing a queue."""

    def __init__(
        self,
        broker: str,
        storage: Storage,
        prefix: str = protocol.DEFAULT_PREFIX,
        group: str | None = None,
        client_id: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        batch_max: int = 2000,
        batch_ms: float = 20.0,
        inflight: int = 1000,
        connect_timeout: float = 15.0,
        password: str | None = None,
        retry_max_s: float = 10.0,
    ) -> None:
        self.retry_max_s = retry_max_s
        self.unacked_at_stop = 0
        self.storage = storage
        self.prefix = prefix
        self.group = group
        self.batch_max = batch_max
        self.batch_s = batch_ms / 1000.0
        self.connect_timeout = connect_timeout
        self.client_id = client_id or f"edgefleet-collector-{socket.gethostname()}"
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.stats = Stats()
        self._ota_topics = f"{prefix}/ota/".encode()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.transport = make_transport(broker, prefix, group, self.client_id, ca, cert, key, inflight, password)

    # -- worker thread
    @property
    def connected(self) -> bool:
        """Whether the transport (MQTT 5 or AMQP) holds a broker session now: for metrics and health pages."""
        return self.transport.connected.is_set()

    def _take_batch(self) -> list:
        try:
            first = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        items = [first]
        deadline = time.monotonic() + self.batch_s
        get = self.queue.get_nowait
        while len(items) < self.batch_max:
            try:
                items.append(get())
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    items.append(self.queue.get(timeout=left))
                except queue.Empty:
                    break
        return items

    def build_batch(self, items: list) -> tuple[Batch, StoredAcks]:
        """Validate each message and sort it into the batch; a bad message becomes a dead letter. Also collects
        the seqs each message settles, for the `stored` acks published after the commit."""
        batch = Batch()
        settled = StoredAcks()
        for item in items:
            try:
                self._add_message(batch, settled, item)
            except Exception as e:
                log.exception("internal error on a message; dead-lettering it")
                self._add_dead(batch, settled, item, f"internal error: {type(e).__name__}")
        return batch, settled

    def _add_message(self, batch: Batch, settled: StoredAcks, item: tuple) -> None:
        _gen, msg, received = item
        raw_topic = msg._topic  # bytes: a topic that is not UTF-8 must not raise here
        if self.is_ignored(raw_topic):
            return
        try:
            topic = raw_topic.decode("utf-8")
            m = protocol.parse(self.prefix, topic, msg.payload, received)
        except (protocol.ProtocolError, UnicodeDecodeError) as e:
            self._add_dead(
                batch, settled, item, e.reason if isinstance(e, protocol.ProtocolError) else "topic not UTF-8"
            )
            return
        device = m.device
        if m.kind == "telemetry":
            rows = batch.readings.get(device)
            if rows is None:
                batch.readings[device] = rows = []
            rows.extend(m.records)  # already storage rows
            settled.add(device, m.log, [r[2] for r in m.records])
        elif m.kind == "event":
            rows = batch.events.setdefault(device, [])
            for rec in m.records:
                rows.append((device, m.log, *rec, received))
            settled.add(device, m.log, [r[0] for r in m.records])
        elif m.kind == "status":
            batch.statuses.append((device, received, m.body["state"], bool(msg.retain), msg.payload.decode()))
        elif m.kind == "ack":
            batch.acks.append((device, m.body.get("id"), m.body["ok"], msg.payload.decode(), received))
        else:
            return  # a valid command to a node, or a `stored` ack (ours or another collector's): not ours to store
        batch.seen[device] = max(received, batch.seen.get(device, 0))

    def is_ignored(self, raw_topic: bytes) -> bool:
        """An over-the-air chunk (`<prefix>/ota/<art>/<n>`, docs/protocol.md): the collector reads the whole
        prefix, so it receives the retained chunks a rollout publishes. They are not telemetry and not bad
        messages either: acked with their batch and counted, never stored or dead-lettered."""
        if not raw_topic.startswith(self._ota_topics):
            return False
        try:
            return ota.is_chunk_topic(self.prefix, raw_topic.decode("utf-8"))
        except UnicodeDecodeError:
            return False

    def _add_dead(self, batch: Batch, settled: StoredAcks, item: tuple, reason: str) -> None:
        _gen, msg, received = item
        payload = msg.payload
        topic = msg._topic.decode("utf-8", "replace")
        reason = reason.encode("ascii", "backslashreplace").decode()
        batch.dead.append((received, topic, reason, len(payload), payload[:DEAD_LETTER_CAP]))
        log.info("dead letter: %s on %r (%d bytes)", reason, topic[:80], len(payload))
        if len(payload) <= DEAD_LETTER_CAP:  # kept whole: the node may free it
            readable = protocol.readable_seqs(self.prefix, topic, payload)
            if readable:
                settled.add(*readable)

    def _dead_only(self, item: tuple, reason: str) -> tuple[Batch, StoredAcks]:
        batch, settled = Batch(), StoredAcks()
        self._add_dead(batch, settled, item, reason)
        return batch, settled

    def _write(self, batch: Batch, pending: int, any_error_is_outage: bool = False) -> WriteResult | None:
        """Write one batch; while the database is unavailable, retry with backoff (one log line per outage and
        one when it is back). Returns None if the collector is stopping first (nothing written, nothing acked).
        Raises what is not an outage: the data was refused. With any_error_is_outage (writing a lone dead
        letter: if even that fails, the database is not usable) every error is retried."""
        delay = RETRY_FIRST_S
        since = None
        while True:
            try:
                res = self.storage.write(batch)
            except Exception as e:
                if not (any_error_is_outage or self.storage.is_outage(e)):
                    raise
                if since is None:
                    since = time.monotonic()
                    self.stats.outages += 1
                    log.error(
                        "database unavailable (%s): this batch (%d messages) and all after it stay unacknowledged "
                        "in the broker session; retrying with backoff up to %.0f s",
                        redact_text(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__),
                        pending,
                        self.retry_max_s,
                    )
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, self.retry_max_s)
                try:
                    self.storage.reconnect()
                except Exception as e2:
                    log.debug("reconnect failed: %s", e2)
                continue
            if since is not None:
                log.warning(
                    "database available again after %.1f s: writing and acknowledging", time.monotonic() - since
                )
            return res

    def _write_isolating(self, items: list) -> tuple[WriteResult, StoredAcks] | None:
        """Write the batch; if the database refuses its data, write each message alone and dead-letter the one
        it refuses, so one bad message never stops the rest (all are acked)."""
        batch, settled = self.build_batch(items)
        try:
            res = self._write(batch, len(items))
        except Exception as e:
            log.error("database refused a batch (%s); writing its %d messages one by one", _oneline(e), len(items))
        else:
            return (res, settled) if res is not None else None
        total, all_settled = WriteResult(), StoredAcks()
        for item in items:
            one, one_settled = self.build_batch([item])
            try:
                res = self._write(one, 1)
            except Exception as e:
                self.stats.storage_refused += 1
                one, one_settled = self._dead_only(item, f"storage refused: {type(e).__name__}")
                res = self._write(one, 1, any_error_is_outage=True)
            if res is None:
                return None
            for f in ("stored", "duplicates", "dead", "pruned"):
                setattr(total, f, getattr(total, f) + getattr(res, f))
            all_settled.update(one_settled)
        return total, all_settled

    def _process(self, items: list) -> bool:
        """Write, ack, publish `stored`. False if stopping during an outage (the batch stays unacknowledged)."""
        t0, cpu0 = time.perf_counter(), time.thread_time()
        written = self._write_isolating(items)
        if written is None:
            self.unacked_at_stop += len(items)
            return False
        res, settled = written
        committed = now_ms()
        s = self.stats
        s.messages += len(items)
        s.ignored += sum(1 for item in items if self.is_ignored(item[1]._topic))
        s.stored += res.stored
        s.duplicates += res.duplicates
        s.dead += res.dead
        s.dead_pruned += res.pruned
        s.batches += 1
        s.max_batch = max(s.max_batch, len(items))
        if res.dead:
            log.warning("%d dead letters in this batch (reasons in the dead_letter table)", res.dead)
        self.transport.ack(items)
        self._publish_stored(settled)
        s.busy_s += time.perf_counter() - t0
        s.busy_cpu_s += time.thread_time() - cpu0
        self.on_committed(items, committed)
        return True

    def _publish_stored(self, settled: StoredAcks) -> None:
        """The end-to-end acks, after the COMMIT."""
        self.stats.stored_acks += self.transport.publish_stored(settled.messages(self.prefix))

    def on_committed(self, items: list, committed_ms: int) -> None:
        """Hook for the benchmark (publish-to-commit latency); nothing to do in production."""

    def _worker(self) -> None:
        last_report = time.monotonic()
        while True:
            items = self._take_batch()
            if items:
                try:
                    if not self._process(items):
                        self._drain_unacked()
                        return
                except Exception as e:  # a bug in the writer itself: nothing was acked, so nothing is lost
                    self.error = e
                    log.exception("writer failed, stopping without acknowledging the batch")
                    self._stop.set()
                    return
            elif self._stop.is_set():
                return
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                s = self.stats
                log.info(
                    "%d messages, %d records stored, %d duplicates, %d dead letters (%d pruned by the cap), "
                    "%d stored acks published, %d database outages",
                    s.messages,
                    s.stored,
                    s.duplicates,
                    s.dead,
                    s.dead_pruned,
                    s.stored_acks,
                    s.outages,
                )

    def _drain_unacked(self) -> None:
        """Stopping during an outage: count what stays in the broker session (redelivered on the next start)."""
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
            self.unacked_at_stop += 1

    # -- lifecycle
    def start(self) -> None:
        self._worker_thread = threading.Thread(target=self._worker, name="collector-writer", daemon=True)
        self._worker_thread.start()
        try:
            self.transport.start(self.queue.put, now_ms)
        except BaseException:
            self._stop.set()
            raise

    def stop(self) -> None:
        """Stop receiving, write and ack what is queued, disconnect."""
        self.transport.stop_receiving()
        self._stop.set()
        self._worker_thread.join()
        self.transport.close()  # after the final acks
        s = self.stats
        log.info(
            "stopped: %d messages, %d records stored, %d duplicates, %d dead letters",
            s.messages,
            s.stored,
            s.duplicates,
            s.dead,
        )

    def _wait_first_session(self) -> None:
        """A collector that never gets a session is misconfigured (credentials, TLS client certificate, a broker
        that does not speak MQTT 5): say so and exit instead of retrying forever. After the first session,
        reconnects are retried without end."""
        why = self.transport.wait_first_session(self.connect_timeout)
        if why is None:
            return
        self.transport.stop_receiving()
        self._stop.set()
        self._worker_thread.join()
        self.transport.close()
        message, hint = self.transport.first_session_hint()
        raise EdgefleetError(message or f"broker {self.transport.where} {why}", hint=hint)

    def run_forever(self) -> int:
        stopping = threading.Event()

        def on_signal(signum, frame):
            procs.note_signal(signum)  # the CLI exits 128 + signum once the queue is flushed
            stopping.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        self.start()
        self._wait_first_session()
        log.info(
            "collecting %s/# from %s into %s%s",
            self.prefix,
            self.transport.where,
            self.storage.name,
            f" (shared subscription group {self.group})" if self.group else "",
        )
        while not stopping.is_set() and not self._stop.is_set() and self.transport.fatal is None:
            stopping.wait(0.5)
        log.info("stopping: flushing queued messages")
        self.stop()
        if self.transport.fatal is not None:
            raise EdgefleetError(self.transport.fatal[0], hint=self.transport.fatal[1])
        if self.error:
            raise EdgefleetError(f"collector writer failed: {_oneline(self.error)}")
        if self.unacked_at_stop:
            log.warning(
                "stopped during a database outage: %d messages left unacknowledged in the broker session; they "
                "are delivered again when the collector restarts",
                self.unacked_at_stop,
            )
            return 1
        return 0


def _oneline(e: BaseException) -> str:
    text = str(e).strip()
    return redact_text(text.splitlines()[0] if text else type(e).__name__)


def broker_password(password_file: str | None) -> str | None:
    """The broker password: --password-file, else $EDGEFLEET_BROKER_PASSWORD, else none."""
    if password_file:
        return read_secret_file(password_file)
    return os.environ.get(PASSWORD_ENV) or None


@dataclass
class CollectOptions:
    """What `edgefleet collect` runs with, one field per option, with the same defaults (the CLI takes them from
    here)."""

    broker: str = "mqtt://127.0.0.1:1883"  # no password in it: password_file or $EDGEFLEET_BROKER_PASSWORD
    password_file: str | None = None
    db: str = "sqlite:///fleet.db"
    prefix: str = protocol.DEFAULT_PREFIX
    group: str | None = None  # MQTT 5 shared subscription group
    client_id: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    batch: int = 2000  # max messages per database transaction
    batch_ms: float = 20.0
    inflight: int = 1000
    connect_timeout: float = 15.0
    db_timeout: float = 10.0
    dead_max_rows: int = DEAD_LETTER_MAX_ROWS
    dead_max_mb: float = DEAD_LETTER_MAX_BYTES / 1024 / 1024
    durability: str = "normal"  # normal | full
    metrics: str | None = None  # [HOST:]PORT for Prometheus metrics


def run_collector(opts: CollectOptions) -> int:
    """`edgefleet collect`: open the database and collect until stopped; the exit code of Collector.run_forever."""
    refuse_password_in_url(
        opts.broker, "--broker", f"put it in a file given with --password-file (mode 600) or in ${PASSWORD_ENV}"
    )
    refuse_password_in_url(opts.db, "--db", "use $PGPASSWORD or a ~/.pgpass file (libpq reads both)")
    password = broker_password(opts.password_file)
    if opts.group and not opts.client_id:
        log.warning("--group without --client-id: give every collector of the group its own stable --client-id")
    storage = open_storage(opts.db, durability=opts.durability, create=True, busy_timeout_s=opts.db_timeout)
    storage.dead_max_rows = opts.dead_max_rows
    storage.dead_max_bytes = int(opts.dead_max_mb * 1024 * 1024)
    log.info("database %s (%s, schema v%d)", redact_url(opts.db), storage.name, storage.schema_version())
    try:
        c = Collector(
            opts.broker,
            storage,
            prefix=opts.prefix,
            group=opts.group,
            client_id=opts.client_id,
            ca=opts.ca,
            cert=opts.cert,
            key=opts.key,
            batch_max=opts.batch,
            batch_ms=opts.batch_ms,
            inflight=opts.inflight,
            connect_timeout=opts.connect_timeout,
            password=password,
        )
        if opts.metrics:
            from ..console.metrics import serve_metrics

            serve_metrics(c, opts.metrics)
        return c.run_forever()
    finally:
        storage.close()
