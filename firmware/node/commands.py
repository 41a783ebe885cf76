# Commands on <prefix>/<dev>/cmd, each answered on /ack (docs/protocol.md "cmd and ack").
# Nothing a host sends can crash the node: malformed JSON, a missing id/cmd, an unknown command, bad args or
# a handler that fails all become {"ok": false, "error": ...}.
import asyncio
import json



class CommandError(Exception):
    pass


def _error_text(e):
    return str(e) or e.__class__.__name__


def _clean(s, n=200):
    # An ack's text must be storable (protocol.py's rules: no control characters, no surrogates) whatever the
    # command echoed into it: anything outside printable ASCII becomes "?", and the length is bounded.
    s = s[:n]
    for ch in s:
        if not " " <= ch <= "~":
            return "".join(c if " " <= c <= "~" else "?" for c in s)
    return s


def _valid_id(cid):
    if not isinstance(cid, str) or not 0 < len(cid) <= 32:
        return False
    for ch in cid:
        if not "!" <= ch <= "~":
            return False
    return True


class Commands:
    def __init__(self, node, gate=None):
        # gate: the app's long-lived command state (seen ids, counters); this module is reloaded per command.
        self.node = node
        self.gate = gate
        self.topic = "%s/%s/cmd" % (node.prefix, node.dev)
        self.ack_topic = "%s/%s/ack" % (node.prefix, node.dev)
        self.handled = 0
        self.errors = 0
        self.handlers = {
            "ping": self.ping,
            "set_config": self.set_config,
            "flush": self.flush,
            "reboot": self.reboot,
        }

    def on_message(self, topic, payload):
        if topic == self.topic:
            asyncio.create_task(self.handle(payload))

    @staticmethod
    def parse(payload):
        # (id or None, cmd, args); raises CommandError with the message the ack carries.
        try:
            msg = json.loads(payload)
        except (ValueError, UnicodeError):
            raise CommandError("command is not JSON")
        if not isinstance(msg, dict):
            raise CommandError("command must be a JSON object")
        cid = msg.get("id")
        if not _valid_id(cid):
            raise CommandError("command needs an id (1 to 32 printable ASCII characters, no spaces)")
        if msg.get("v", 1) != 1:
            raise CommandError("unsupported command version %s" % ("%r" % (msg.get("v"),))[:32], cid)
        cmd = msg.get("cmd")
        if not isinstance(cmd, str):
            raise CommandError("command needs a cmd (string)", cid)
        args = msg.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise CommandError("args must be a JSON object", cid)
        return cid, cmd, args

    async def handle(self, payload):
        cid = None
        try:
            try:
                cid, cmd, args = self.parse(payload)
            except CommandError as e:
                if len(e.args) > 1:
                    cid = e.args[1]
                raise
            if self._seen(cid):
                print("commands: id %s already handled, ignored" % cid)
                return
            fn = self.handlers.get(cmd)
            if fn is None:
                raise CommandError("unknown command '%s'" % cmd[:32])
            result = await fn(args)
            ack = {"v": 1, "dev": self.node.dev, "id": cid, "ok": True, "result": result}
        except Exception as e:  # noqa: every failure becomes an error ack
            self.errors += 1
            msg = _clean(e.args[0] if isinstance(e, CommandError) else "command failed: " + _error_text(e))
            ack = {"v": 1, "dev": self.node.dev, "id": cid, "ok": False, "error": msg}
        self.handled += 1
        try:
            pid = await self.node.mqtt.publish(self.ack_topic, json.dumps(ack), 1)
        except Exception as e:
            print("commands: ack failed: %r" % e)
            return
        if ack.get("ok") and ack["result"] == {"rebooting": True}:
            await self._wait_acked(pid, 5000)
            self.node.request_reboot()

    def _seen(self, cid):
        # True for an id handled before (QoS 1 redelivery or a replay); remembers the newest ids, bounded.
        g = self.gate
        if g is None:
            return False
        if cid in g.seen:
            g.duplicates += 1
            return True
        g.seen.append(cid)
        if len(g.seen) > 16:
            g.seen.pop(0)
        return False

    async def _wait_acked(self, pid, timeout_ms):
        t = 0
        while self.node.mqtt.pending(pid) and t < timeout_ms:
            await asyncio.sleep_ms(50)
            t += 50

    # ---- handlers ----

    async def ping(self, args):
        if args:
            raise CommandError("ping takes no args")
        return {"uptime_s": self.node.uptime_s(), "seq": self.node.log.last_seq()}

    async def set_config(self, args):
        return self.node.set_config(args)  # which sections may be set, and their checks: node/cfgset.py

    async def flush(self, args):
        if args:
            raise CommandError("flush takes no args")
        node = self.node
        node.log.flush()
        target = node.log.durable
        # Publish what the log holds (bounded wait: the broker may be slow or gone again).
        t = 0
        while node.log.acked < target and t < 30000:
            await asyncio.sleep_ms(100)
            t += 100
        return {"pending": node.log.pending()}

    async def reboot(self, args):
        if args:
            raise CommandError("reboot takes no args")
        return {"rebooting": True}
