# The node application: wires the stages together and runs them as asyncio tasks. No stage logic lives here.
#
#   sensors -> sampler -> [decision] -> Sink (FlashLog) -> Publisher -> MQTTClient -> broker
#                                       Status, Commands <-> MQTTClient
#
# Boot never loops: a bad or missing config or model puts the node in safe mode (sampling and/or decision
# off) with the reason in its status; it still connects whenever device id and broker can be read, so the
# host can fix it with set_config. Reboot (command) = machine.reset() on a board; on the sim board the
# process exits with REBOOT_EXIT and the host launcher (edgefleet node) starts it again, as a board would.
import asyncio
import gc
import sys
import time

from micropython import const

from node import board as boardmod
from node import records as R
from node.flashlog import ALIGN, FlashLog
from node.mqtt import MQTTClient
from node.publisher import Publisher
from node.status import Status, will

FW_VERSION = "0.1.0"
REBOOT_EXIT = const(75)  # sim: "reboot me" exit code; host/edgefleet/board/node.py restarts the process on it
BOOT_COUNT_PATH = "boots"
# Messages of max_batch_bytes in flight. One is enough for a node (~100 B/s of records: a 2 KB message every
# ~20 s; a 1.5 h backlog drains in ~14 s at 50 ms RTT) and each extra one costs max_batch_bytes of heap.
PUBLISH_WINDOW = const(1)
MAX_RUNNING = const(2)  # commands executing at once (a flush waits up to 30 s)
SEEN_IDS = const(16)  # command ids remembered against replays


def _now_ms():
    try:
        from node import clock

        return clock.now_ms()[0]
    except ImportError:
        return int(time.time() * 1000)


def _next_boot():
    # Boot counter on the filesystem (one small write per boot, not per record).
    n = 0
    try:
        with open(BOOT_COUNT_PATH) as f:
            n = int(f.read())
    except (OSError, ValueError):
        pass
    n += 1
    try:
        with open(BOOT_COUNT_PATH, "w") as f:
            f.write(str(n))
    except OSError:
        pass
    return n


class _Commands:
    # The /cmd side, kept small: node.commands (~3 KB of heap as .mpy on a 32-bit board) is imported for each
    # command and released after it, like node.config, so a node that gets no commands does not pay for it
    # and one that does pays once at a time (the same transient room set_config needs for node.config).
    def __init__(self, node):
        self.node = node
        self.topic = "%s/%s/cmd" % (node.prefix, node.dev)
        self.handled = 0
        self.errors = 0
        # No replay, no pile-up (docs/security.md): the last SEEN_IDS command ids are remembered (a redelivered
        # or replayed id is not run again), and at most MAX_RUNNING commands run at once (more are dropped).
        self.seen = []
        self.running = 0
        self.duplicates = 0
        self.busy = 0

    def on_message(self, topic, payload):
        if topic != self.topic:
            return
        if self.running >= MAX_RUNNING:
            self.busy += 1
            print("commands: %d running, one dropped" % self.running)
            return
        self.running += 1
        asyncio.create_task(self.handle(payload))

    async def handle(self, payload):
        try:
            from node import commands

            c = commands.Commands(self.node, self)
            await c.handle(payload)
            self.handled += c.handled
            self.errors += c.errors
        finally:
            self.running -= 1
            c = None
            _release_module("commands")


def _release_module(name):
    import node

    sys.modules.pop("node." + name, None)
    if getattr(node, name, None) is not None:
        delattr(node, name)


def _num(cfg, key, default, lo, hi):
    # Defensive read: in safe mode the config may be anything; fall back rather than fail.
    v = cfg.get(key, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
        return default
    return int(v)


class Node:
    def __init__(
        self, board, cfg, part, error=None, cfg_path=boardmod.CONFIG_PATH, now_ms=None, link=None, flush=None, mqtt_opts=None
    ):
        # Only the board's name and the brief set_config validates against stay: the parsed board.json (~3.4 KB
        # of heap on a 32-bit board) is released after boot.
        self.board_name = board.get("name", "?")
        self.board_brief = boardmod.brief(board)
        self.cfg = cfg
        self.cfg_path = cfg_path
        self.dev = cfg.get("device_id") or "unconfigured"
        self.prefix = cfg.get("prefix") or "edgefleet"
        self.fw = FW_VERSION
        self.model_id = None
        self.error = error
        self.safe_mode = error is not None
        self.now_ms = now_ms or _now_ms
        self.boot = _next_boot()
        self.sampler = None
        self._t0 = time.ticks_ms()
        self._reboot = asyncio.Event()
        # The big buffers first, while the heap is least fragmented.
        gc.collect()
        bufs = [bytearray(_num(cfg, "max_batch_bytes", 2048, 512, 16384)) for _ in range(PUBLISH_WINDOW)]
        # {"flush_bytes": N, "flush_s": T, "stored_timeout_s": S, "align": A}: every record is on flash when
        # logged; flush_bytes/flush_s batch the messages sent (docs/firmware.md).
        logcfg = flush or cfg.get("log") or {}
        self.log = FlashLog(part, align=logcfg.get("align", ALIGN))
        for s in board.get("sensors", ()):
            ch = R.KIND_CHANNELS.get(s.get("type"))
            if ch:
                self.log.channels[s["name"]] = ch
        self.mqtt = None
        self.publisher = None
        self.commands = _Commands(self)
        self.status = Status(self, _num(cfg, "status_interval_s", 60, 1, 86400))
        broker = cfg.get("broker") or {}
        mq = mqtt_opts or cfg.get("mqtt") or {}  # optional tuning: keepalive_s, backoff_max_s (docs/firmware.md)
        try:
            self.mqtt = MQTTClient(
                self.dev,
                broker.get("url"),
                username=broker.get("username"),
                password=broker.get("password"),
                ca=broker.get("ca"),
                will=will(self.dev, self.prefix),
                window=PUBLISH_WINDOW + 2,  # room for status and acks beside the publisher's messages
                link=link,
                keepalive=mq.get("keepalive_s", 30),
                backoff_max_s=mq.get("backoff_max_s", 60),
            )
        except ValueError as e:
            self.degrade("no usable broker: %s" % e)
        if self.mqtt is not None:
            self.publisher = Publisher(
                self.log,
                self.mqtt,
                self.dev,
                self.prefix,
                bufs=bufs,
                stored_timeout_s=logcfg.get("stored_timeout_s", 30),
                batch_bytes=logcfg.get("flush_bytes", 256),
                batch_ms=int(logcfg.get("flush_s", 5) * 1000),
            )
            self.mqtt.subs.append(self.commands.topic)
            self.mqtt.subs.append(self.publisher.stored_topic)
            self.mqtt.on_message = self._on_message
            self.mqtt.on_puback = self.publisher.on_puback
            self.mqtt.on_connect = self._on_connect

    def _on_message(self, topic, payload):
        if topic == self.publisher.stored_topic:
            self.publisher.on_stored(payload)
        else:
            self.commands.on_message(topic, payload)

    def degrade(self, why):
        # Safe mode: a stage is off (sampling, decision, the broker) and `why` goes into the status. Called by
        # the boot (node.appboot) for the stages it could not start.
        print("node: safe mode:", why)
        self.safe_mode = True
        self.error = why if self.error is None else self.error + "; " + why

    def uptime_s(self):
        return time.ticks_diff(time.ticks_ms(), self._t0) // 1000

    def sampling_counters(self):
        # (sampled, rejected) from the sampler, (0, 0) when sampling is off.
        s = self.sampler
        if s is None:
            return 0, 0
        c = s.counters() if hasattr(s, "counters") else s
        if isinstance(c, dict):
            return c.get("sampled", 0), c.get("rejected", 0)
        return getattr(c, "sampled", 0), getattr(c, "rejected", 0)

    def set_config(self, changes):
        # Persist through node.cfgset (the changed sections validated against the board), then apply to the
        # running stages. Not node.config: see node/cfgset.py.
        from node import cfgset

        try:
            new, err = cfgset.update(self.cfg_path, self.cfg, changes, self.board_brief)
        finally:
            cfgset = None
            _release_module("cfgset")
        if err:
            from node.commands import CommandError  # loaded: set_config runs inside a command

            raise CommandError("set_config: " + err)
        self.cfg = new
        if "status_interval_s" in changes:
            self.status.interval_s = new["status_interval_s"]
        s = self.sampler
        if s is not None and hasattr(s, "apply"):
            s.apply(new)
        return {k: new[k] for k in changes}

    def request_reboot(self):
        self._reboot.set()

    async def _on_connect(self):
        if self.publisher is not None:
            self.publisher.on_connect()  # resend from flash whatever is not stored yet
        try:
            from node import clock

            clock.sync(self.cfg.get("ntp_host", "pool.ntp.org"))
        except Exception as e:  # noqa: no NTP is not fatal, records are flagged "not synced"
            print("node: clock sync failed: %r" % e)
        await self.status.publish()

    async def run(self, tasks=()):
        # Runs until a reboot is requested. `tasks`: coroutines of the sampling side (or a test's source).
        running = []
        if self.mqtt is not None:
            running.append(asyncio.create_task(self.mqtt.run()))
            running.append(asyncio.create_task(self.publisher.run()))
            running.append(asyncio.create_task(self.status.run()))
        for t in tasks:
            running.append(asyncio.create_task(t))
        await self._reboot.wait()
        for t in running:
            t.cancel()
        self.log.close()
        return REBOOT_EXIT


async def _boot(part, scenario):
    # The setup runs in node.appboot, a plain function released after it: its code is needed once, and the
    # board and config dicts it parsed are garbage once it returns (a coroutine's locals live as long as it
    # runs).
    # node.appboot does not import this module (imports go one way): it gets the Node class to build.
    global current
    from node import appboot

    try:
        node, tasks = appboot.setup(part, scenario, Node)
    finally:
        _release_module("appboot")
        # This coroutine runs as long as the node: its locals live that long, and this one would keep the
        # released module (its code and globals, ~KB of heap) alive for ever.
        appboot = None
    current = node
    gc.collect()
    return await node.run(tasks)


current = None


def main(part=None, scenario=None, sim=False):
    # Board entry (main.py) and sim entry (simboard/launch.py). Returns only on the sim board.
    try:
        code = asyncio.run(_boot(part, scenario))
    except KeyboardInterrupt:
        if current is not None:
            current.log.close()
        raise
    except Exception as e:
        # Nothing on the node's flash can make us loop: report and stay down until someone looks.
        sys.print_exception(e)
        print("node: fatal error at boot, halted (no reboot loop)")
        code = 1
    if code == REBOOT_EXIT:
        if sim:
            sys.exit(REBOOT_EXIT)
        import machine

        machine.reset()
    return code
