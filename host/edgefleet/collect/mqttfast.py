"""A paho-mqtt 2.x client with a cheaper receive and acknowledge path for the collector.

Measured (bench/collector.py --mode drain): paho's stock receive path costs more per message than decoding,
validating and storing it, because it makes one select() and three recv() system calls per packet (command
byte, length byte(s), body: `loop_read` reads a single packet per wake-up when no QoS 2 is in flight), and
`ack()` makes one wake-up write on the socket pair and one send() per PUBACK. This subclass changes only I/O
batching, none of the protocol handling:

- `_sock_recv` serves paho's small reads from a 256 KB user-space buffer filled by one recv();
- `loop_read` keeps handling packets until that buffer is empty, so select() is never entered while parsed-
  but-unhandled bytes sit in user space (select only sees the kernel's buffer);
- `_handle_on_message` calls `on_message` directly while no per-topic callback was added
  (`message_callback_add`, which the collector does not use): no topic decode and trie walk per message;
- `ack_many` queues the PUBACKs of a whole committed batch as one write;
- MQTT 5 PUBLISH properties: paho builds a fresh `Properties` per received message, re-creating its three
  lookup tables and clearing ~27 names (about half of paho's CPU per message in our profile). `install()`
  points paho's PUBLISH decoder at `SharedTableProperties`, a subclass that shares those read-only tables and
  skips the clearing when the packet carries no properties (the common case); any packet with properties takes
  paho's own path. It is process-wide but behaves identically, so other paho clients in the process are
  unaffected except for being faster.

It relies on paho's private `_sock_recv`, `_packet_read`, `_packet_queue` (paho-mqtt 2.0-2.x); `FAST_IO` is
False if those are missing, and the collector then uses the stock client unchanged.
"""

from __future__ import annotations

import struct

import paho.mqtt.client as mqtt
from paho.mqtt import _packet
from paho.mqtt.client import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PUBACK = 0x40
RECV_CHUNK = 256 * 1024

FAST_IO = all(
    hasattr(mqtt.Client, n)
    for n in ("_sock_recv", "_packet_read", "_packet_queue", "_sock_close", "_handle_on_message")
)

_TABLES = Properties(PacketTypes.PUBLISH)


class SharedTableProperties(Properties):
    """paho's Properties with the lookup tables built once (they are never modified)."""

    types = _TABLES.types
    names = _TABLES.names
    properties = _TABLES.properties

    def __init__(self, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)

    def unpack(self, buffer: bytes) -> tuple[Properties, int]:
        if buffer[:1] == b"\x00":  # property length 0: nothing to clear, nothing to parse
            return self, 1
        return super().unpack(buffer)


def install() -> None:
    """Make paho's PUBLISH decoder build SharedTableProperties (idempotent)."""
    if getattr(_packet, "Properties", None) is Properties:
        _packet.Properties = SharedTableProperties


class FastClient(mqtt.Client):
    def __init__(self, *a, **kw) -> None:
        install()
        super().__init__(*a, **kw)
        self._rbuf = b""
        self._rpos = 0
        self._topic_callbacks = False

    def message_callback_add(self, sub: str, callback) -> None:
        self._topic_callbacks = True
        super().message_callback_add(sub, callback)

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        on_message = self.on_message
        if self._topic_callbacks or on_message is None:
            return super()._handle_on_message(message)
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:  # as paho: logged, re-raised unless suppress_exceptions
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def _sock_recv(self, bufsize: int) -> bytes:
        pos = self._rpos
        buf = self._rbuf
        if pos >= len(buf):
            buf = super()._sock_recv(RECV_CHUNK)  # BlockingIOError/OSError propagate as in paho
            if not buf:
                return buf  # connection closed
            self._rbuf = buf
            pos = 0
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end]

    def _buffered(self) -> bool:
        return self._rpos < len(self._rbuf)

    def _sock_close(self) -> None:
        self._rbuf = b""  # bytes of a dead connection must not be parsed as the next one's
        self._rpos = 0
        super()._sock_close()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._buffered():
            rc = super().loop_read(1)
        return rc

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK (QoS 1, reason Success) for every mid, as one queued write."""
        if mids:
            packet = b"".join([struct.pack("!BBH", PUBACK, 2, mid) for mid in mids])
            self._packet_queue(PUBACK, packet, 0, 0)
