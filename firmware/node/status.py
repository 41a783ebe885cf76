# Retained status on <prefix>/<dev>/status (docs/protocol.md "status"): on every connect and every
# status_interval_s. The last will (state offline) is built here too, so both sides of the pair live together.
import asyncio
import gc
import json
import time


def will(dev, prefix):
    return ("%s/%s/status" % (prefix, dev), json.dumps({"v": 1, "dev": dev, "state": "offline"}), 1, True)


class Status:
    def __init__(self, node, interval_s=60):
        self.node = node
        self.interval_s = interval_s
        self.topic = "%s/%s/status" % (node.prefix, node.dev)
        self.sent = 0

    def payload(self):
        n = self.node
        log = n.log
        sampled, rejected = n.sampling_counters()
        published = n.publisher.published if n.publisher else 0
        logged = log.logged if log else 0
        gc.collect()
        return {
            "v": 1,
            "dev": n.dev,
            "state": "online",
            "ts": n.now_ms(),
            "fw": n.fw,
            "board": n.board_name,
            "model": n.model_id,
            "uptime_s": n.uptime_s(),
            "heap_free": gc.mem_free(),
            "boot": n.boot,
            "seq": log.last_seq() if log else 0,
            "safe_mode": n.safe_mode,
            "error": n.error,
            "counters": {
                "sampled": sampled,
                "rejected": rejected,
                "logged": logged,
                "dropped": log.dropped if log else 0,
                "published": published,
                "reconnects": n.mqtt.reconnects if n.mqtt else 0,
                "corrupt": log.corrupt if log else 0,
            },
            "e_buffer": round(published / logged, 4) if logged else 0.0,
            "r_noise": round(rejected / sampled, 4) if sampled else 0.0,
        }

    async def publish(self):
        if self.node.mqtt is None:
            return
        await self.node.mqtt.publish(self.topic, json.dumps(self.payload()), 1, True)
        self.sent += 1

    async def run(self):
        # Periodic status; the one on connect is sent by the node's on_connect.
        while True:
            t0 = time.ticks_ms()
            while time.ticks_diff(time.ticks_ms(), t0) < self.interval_s * 1000:
                await asyncio.sleep_ms(500)
            if self.node.mqtt is not None and self.node.mqtt.connected:
                try:
                    await self.publish()
                except Exception as e:
                    print("status: publish failed: %r" % e)
