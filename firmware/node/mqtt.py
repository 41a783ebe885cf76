# MQTT 3.1.1 client on asyncio streams, written for the node (docs/firmware.md, "MQTT client").
#
# - CONNECT with client id, username/password and a retained QoS 1 last will; clean session, so the `/cmd`
#   subscription is renewed after every connect.
# - QoS 0 and 1 publish. QoS 1 messages wait in a bounded in-flight window (packet ids are 16 bits; the
#   design notes measured a publisher that silently lost everything past 65,535 in flight). A message stays
#   in flight until its PUBACK: it is resent with DUP after every reconnect and after `retry_s` without ack.
#   Payloads are passed by reference (the publisher lends its preallocated buffers until PUBACK).
# - Keepalive: PINGREQ when nothing was sent for keepalive/2; a connection with nothing received for
#   1.5 x keepalive is dead and gets closed and re-established.
# - Reconnect with exponential backoff (backoff_min_s doubling up to backoff_max_s) and +-50% jitter, so a
#   fleet does not reconnect in lockstep after a broker restart.
# - TLS for mqtts:// URLs through `ssl`, always verified: the CA file from config (broker.ca) is required, and
#   the server's certificate must be signed by it, name the host of the URL and be in its validity period.
# - Nothing the broker sends can exhaust the heap or replay a command: a packet over `max_in` bytes is read
#   through a small buffer and dropped (a QoS 1 publish is still acked; counted in `oversize`), and retained
#   publishes are dropped (counted in `retained`): the node subscribes only to /cmd and /stored, where a
#   retained message is a replay (a retained `reboot` would boot-loop the node).
import asyncio
import random
import struct
import time

from micropython import const

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)
_DUP = const(0x08)

CONNACK_ERRORS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad username or password",
    5: "not authorized",
}


class MQTTError(Exception):
    pass


def parse_url(url):
    # mqtt://host[:port] or mqtts://host[:port] -> (tls, host, port); ValueError with a clear message.
    if not isinstance(url, str) or "://" not in url:
        raise ValueError("broker url must look like mqtt://host:port or mqtts://host:port, got %r" % (url,))
    scheme, rest = url.split("://", 1)
    if scheme not in ("mqtt", "mqtts"):
        raise ValueError("broker url scheme must be mqtt or mqtts, got %r" % scheme)
    rest = rest.split("/", 1)[0]
    tls = scheme == "mqtts"
    port = 8883 if tls else 1883
    host = rest
    if ":" in rest:
        host, p = rest.rsplit(":", 1)
        try:
            port = int(p)
        except ValueError:
            raise ValueError("broker url has a bad port: %r" % p)
        if not 0 < port < 65536:
            raise ValueError("broker url port out of range: %d" % port)
    if not host:
        raise ValueError("broker url has no host: %r" % url)
    return tls, host, port


def _tls_err(host, port, e):
    # TLS-only code lives in node/tls.py, imported only by a node that uses mqtts:// (heap on a plain node).
    from node.tls import error_text

    return error_text(host, port, e)


def _log(msg):
    print("mqtt:", msg)


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _varlen(n, out, off):
    # Remaining length encoding; returns the new offset.
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            b |= 0x80
        out[off] = b
        off += 1
        if not n:
            return off


class MQTTClient:
    def __init__(
        self,
        client_id,
        url,
        username=None,
        password=None,
        keepalive=30,
        will=None,
        ca=None,
        window=6,
        retry_s=10,
        backoff_min_s=1,
        backoff_max_s=60,
        connect_timeout_s=10,
        link=None,
        max_packet=512,
        max_in=4096,
    ):
        self.client_id = client_id
        self.tls, self.host, self.port = parse_url(url)
        if self.tls and not ca:
            raise ValueError(
                "broker.ca: required for mqtts:// (the CA certificate file that signed the broker's certificate); "
                "a TLS connection without it could not verify the server"
            )
        self.username = username
        self.password = password
        self.keepalive = keepalive
        self.will = will  # (topic, payload, qos, retain) or None
        self.ca = ca
        self.window = window
        self.retry_ms = int(retry_s * 1000)
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.connect_timeout_s = connect_timeout_s
        self.link = link  # async callable -> bool: bring the network link up (Wi-Fi); None on sim
        self.subs = []  # topics (QoS 1) to subscribe after every connect
        self.on_message = None  # callback(topic str, payload bytes)
        self.on_puback = None  # callback(pid)
        self.on_connect = None  # async callback after subscriptions are sent
        self.connected = False
        self.connects = 0
        self.reconnects = 0
        self.last_error = None
        self._inflight = {}  # pid -> [topic, payload, retain, ticks_sent]
        self._pid = 0
        self._slot = asyncio.Event()
        self._up = asyncio.Event()
        self._dead = asyncio.Event()
        self._reader = None
        self._writer = None
        self._last_rx = 0
        self._last_tx = 0
        self._hdr = bytearray(8)
        self._topics = {}
        self._sbuf = bytearray(max_packet)
        self._sbmv = memoryview(self._sbuf)
        self._stop = False
        self.max_in = max_in
        self.oversize = 0  # packets over max_in, skipped
        self.retained = 0  # retained publishes, dropped

    # ---- connection management ----

    def backoff_s(self, attempt):
        base = min(self.backoff_max_s, self.backoff_min_s * (1 << min(attempt, 16)))
        return base * (0.5 + random.random())

    async def run(self):
        # Supervisor: connect, wait until the connection dies, reconnect with backoff. Runs forever.
        attempt = 0
        while not self._stop:
            if self.link is not None:
                try:
                    ok = await self.link()
                except Exception as e:  # noqa: the radio failing must not stop the node
                    _log("link error: %r" % e)
                    ok = False
                if not ok:
                    await asyncio.sleep(self.backoff_s(attempt))
                    attempt = min(attempt + 1, 16)
                    continue
            try:
                await self._connect()
            except Exception as e:
                self.last_error = str(e) or repr(e)
                self._close()
                delay = self.backoff_s(attempt)
                _log("connect to %s:%d failed (%s), retry in %.1f s" % (self.host, self.port, self.last_error, delay))
                attempt = min(attempt + 1, 16)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            rx = asyncio.create_task(self._read_loop())
            ka = asyncio.create_task(self._keepalive_loop())
            try:
                if self.on_connect is not None:
                    await self.on_connect()
            except Exception as e:
                _log("on_connect failed: %r" % e)
            await self._dead.wait()
            rx.cancel()
            ka.cancel()
            self._close()
            if self._stop:
                return
            self.reconnects += 1
            delay = self.backoff_s(0)
            _log("connection lost (%s), reconnect in %.1f s" % (self.last_error, delay))
            await asyncio.sleep(delay)

    async def _connect(self):
        # The TLS handshake runs inside open_connection on some ports and on the first read/write on others:
        # its errors are reported as TLS errors wherever they come; a refused TCP connect stays what it is.
        try:
            await self._open()
        except ValueError as e:
            if not self.tls or str(e).startswith("broker.ca"):
                raise
            raise MQTTError(_tls_err(self.host, self.port, e))
        try:
            await self._handshake()
        except (OSError, ValueError) as e:
            if not self.tls or self.connected:
                raise
            raise MQTTError(_tls_err(self.host, self.port, e))

    async def _open(self):
        ssl_ctx = None
        if self.tls:
            import ssl

            from node.tls import ca_der

            try:
                ca = ca_der(self.ca)
            except (OSError, ValueError) as e:
                raise ValueError("broker.ca: cannot read %s (%s)" % (self.ca, e))
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ssl_ctx.load_verify_locations(cadata=ca)
            ssl_ctx.verify_mode = ssl.CERT_REQUIRED
        if ssl_ctx is not None:
            coro = asyncio.open_connection(self.host, self.port, ssl=ssl_ctx, server_hostname=self.host)
        else:
            coro = asyncio.open_connection(self.host, self.port)
        self._reader, self._writer = await asyncio.wait_for(coro, self.connect_timeout_s)

    async def _handshake(self):
        try:
            self._writer.s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (same values on Linux and lwIP)
        except Exception:
            pass
        flags = 0x02  # clean session
        payload = _str(self.client_id)
        if self.will:
            topic, msg, qos, retain = self.will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _str(topic) + _str(msg)
        if self.username is not None:
            flags |= 0x80
            payload += _str(self.username)
            if self.password is not None:
                flags |= 0x40
                payload += _str(self.password)
        var = b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack("!H", self.keepalive)
        self._send_packet(_CONNECT, var + payload)
        await self._writer.drain()
        typ, body = await asyncio.wait_for(self._read_packet(), self.connect_timeout_s)
        if typ != _CONNACK or body is None or len(body) != 2:
            raise MQTTError("expected CONNACK, got packet type 0x%02x" % typ)
        if body[1]:
            raise MQTTError("broker refused connection: " + CONNACK_ERRORS.get(body[1], "code %d" % body[1]))
        self._dead = asyncio.Event()
        self.connected = True
        self.connects += 1
        self.last_error = None
        now = time.ticks_ms()
        self._last_rx = now
        if self.subs:
            self._subscribe(self.subs)
        # Everything still unacknowledged goes again, flagged as a duplicate.
        for pid in sorted(self._inflight):
            self._send_publish(pid, self._inflight[pid], True)
        await self._writer.drain()
        self._up.set()
        _log("connected to %s:%d" % (self.host, self.port))

    def _close(self):
        self.connected = False
        self._up.clear()
        w = self._writer
        self._writer = None
        self._reader = None
        if w is not None:
            try:
                w.close()
            except Exception:
                pass

    def _fail(self, why):
        if self.connected:
            self.last_error = why
        self.connected = False
        self._up.clear()
        self._dead.set()

    async def disconnect(self):
        # Clean disconnect (the broker then does NOT publish the last will).
        self._stop = True
        if self.connected:
            try:
                self._send_packet(_DISCONNECT, b"")
                await self._writer.drain()
            except Exception:
                pass
        self._fail("disconnected")
        self._close()

    async def wait_connected(self):
        await self._up.wait()

    # ---- packets ----

    def _send_packet(self, typ, body):
        h = self._hdr
        h[0] = typ
        n = _varlen(len(body), h, 1)
        self._writer.write(h[:n])
        if body:
            self._writer.write(body)
        self._last_tx = time.ticks_ms()

    def _send_publish(self, pid, msg, dup):
        # One write per packet, assembled in the preallocated send buffer (payloads above its size: header, then
        # payload). Five small writes per message used to meet Nagle + delayed ACK: 44 ms per message measured.
        topic, payload, retain = msg[0], msg[1], msg[2]
        tb = self._topics.get(topic)
        if tb is None:
            tb = self._topics[topic] = topic.encode()  # a node publishes to 4 topics: encode each once
        tl = len(tb)
        pl = len(payload)
        typ = _PUBLISH | (0x02 if pid else 0) | (0x01 if retain else 0) | (_DUP if dup else 0)
        rem = 2 + tl + (2 if pid else 0) + pl
        sb = self._sbuf
        big = rem + 5 > len(sb)  # large payloads go in a second write (TCP_NODELAY keeps that cheap)
        sb[0] = typ
        p = _varlen(rem, sb, 1)
        sb[p] = tl >> 8
        sb[p + 1] = tl & 0xFF
        p += 2
        sb[p : p + tl] = tb
        p += tl
        if pid:
            sb[p] = pid >> 8
            sb[p + 1] = pid & 0xFF
            p += 2
        if big:
            self._writer.write(self._sbmv[:p])
            self._writer.write(payload)
        else:
            sb[p : p + pl] = payload
            p += pl
            self._writer.write(self._sbmv[:p])
        self._last_tx = time.ticks_ms()
        msg[3] = self._last_tx

    def _subscribe(self, topics):
        pid = self._next_pid()
        body = struct.pack("!H", pid)
        for t in topics:
            body += _str(t) + b"\x01"
        self._send_packet(_SUBSCRIBE, body)

    async def _read_packet(self):
        r = self._reader
        b = await r.readexactly(1)
        typ = b[0]
        n = 0
        shift = 0
        while True:
            c = (await r.readexactly(1))[0]
            n |= (c & 0x7F) << shift
            if not c & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError("bad remaining length")
        if n > self.max_in:
            await self._skip(typ, n)
            self._last_rx = time.ticks_ms()
            return typ, None
        body = await r.readexactly(n) if n else b""
        self._last_rx = time.ticks_ms()
        return typ, body

    async def _skip(self, typ, n):
        # A packet over max_in: read through 256-byte pieces instead of one n-byte allocation (up to 256 MB
        # announced). A QoS 1 publish is acked, so the broker does not hold it in flight for ever.
        r = self._reader
        self.oversize += 1
        left = n
        pid = 0
        if typ & 0xF0 == _PUBLISH and (typ >> 1) & 3 and n >= 4:
            h = await r.readexactly(2)
            left -= 2
            tl = (h[0] << 8) | h[1]
            while tl and left:
                k = min(256, tl, left)
                await r.readexactly(k)
                tl -= k
                left -= k
            if left >= 2:
                h = await r.readexactly(2)
                left -= 2
                pid = (h[0] << 8) | h[1]
        while left:
            k = min(256, left)
            await r.readexactly(k)
            left -= k
        _log("dropped a %d-byte packet (type 0x%02x): over the %d-byte limit" % (n, typ, self.max_in))
        if pid:
            self._send_packet(_PUBACK, struct.pack("!H", pid))

    async def _read_loop(self):
        try:
            while True:
                typ, body = await self._read_packet()
                if body is None:
                    continue  # oversized, skipped
                kind = typ & 0xF0
                if kind == _PUBACK:
                    pid = (body[0] << 8) | body[1]
                    if self._inflight.pop(pid, None) is not None:
                        self._slot.set()
                        if self.on_puback is not None:
                            self.on_puback(pid)
                elif kind == _PUBLISH:
                    self._on_publish(typ, body)
                elif kind == _SUBACK:
                    for rc in body[2:]:
                        if rc == 0x80:
                            _log("subscription refused by the broker")
                elif kind == _PINGRESP:
                    pass
            # unreachable
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._fail("read: %s" % (str(e) or repr(e)))

    def _on_publish(self, typ, body):
        qos = (typ >> 1) & 3
        tl = (body[0] << 8) | body[1]
        topic = str(body[2 : 2 + tl], "utf-8")
        p = 2 + tl
        if qos:
            pid = (body[p] << 8) | body[p + 1]
            p += 2
            self._send_packet(_PUBACK, struct.pack("!H", pid))
        if typ & 0x01:
            self.retained += 1
            _log("ignored a retained message on %s (a replay, not a new message)" % topic)
            return
        if self.on_message is not None:
            try:
                self.on_message(topic, body[p:])
            except Exception as e:  # noqa: a handler bug must not kill the connection
                _log("message handler failed: %r" % e)

    async def _keepalive_loop(self):
        ka = self.keepalive * 1000
        try:
            while True:
                await asyncio.sleep_ms(500)
                now = time.ticks_ms()
                if ka and time.ticks_diff(now, self._last_rx) > ka * 3 // 2:
                    self._fail("no packet from the broker for %d s" % (ka * 3 // 2000))
                    return
                if ka and time.ticks_diff(now, self._last_tx) >= ka // 2:
                    self._send_packet(_PINGREQ, b"")
                for pid in self._inflight:
                    msg = self._inflight[pid]
                    if time.ticks_diff(now, msg[3]) >= self.retry_ms:
                        self._send_publish(pid, msg, True)
                await self._writer.drain()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._fail("write: %s" % (str(e) or repr(e)))

    # ---- publishing ----

    def _next_pid(self):
        while True:
            self._pid = self._pid % 65535 + 1
            if self._pid not in self._inflight:
                return self._pid

    def inflight(self):
        return len(self._inflight)

    def pending(self, pid):
        # True while QoS 1 message `pid` waits for its PUBACK (it is resent on every reconnect).
        return pid in self._inflight

    def drop(self, pid):
        # Forget an unacknowledged message a newer one supersedes (a retained status): it is not resent, and
        # its payload buffer is the caller's again.
        if self._inflight.pop(pid, None) is not None:
            self._slot.set()

    async def publish(self, topic, payload, qos=1, retain=False, on_pid=None):
        # QoS 1: waits for a free slot in the window, returns the packet id; the message is sent now if
        # connected, else on the next connect. on_pid(pid) is called before the send. QoS 0: sent only when connected; returns 0 (or -1 if dropped).
        if isinstance(payload, str):
            payload = payload.encode()
        if qos == 0:
            if not self.connected:
                return -1
            self._send_publish(0, [topic, payload, retain, 0], False)
            try:
                await self._writer.drain()
            except Exception as e:
                self._fail("write: %r" % e)
            return 0
        while len(self._inflight) >= self.window:
            self._slot.clear()
            await self._slot.wait()
        pid = self._next_pid()
        if on_pid is not None:
            on_pid(pid)  # before sending: the PUBACK may arrive while we wait for the write below
        msg = [topic, payload, retain, time.ticks_ms()]
        self._inflight[pid] = msg
        if self.connected:
            try:
                self._send_publish(pid, msg, False)
                await self._writer.drain()
            except Exception as e:
                self._fail("write: %s" % (str(e) or repr(e)))
        return pid
