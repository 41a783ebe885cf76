# MicroPython side of tests/host/test_node_fuzz.py: reads a batch of cases
# (JSON lines: {"kind": ..., ...}) and prints one "RESULT <json>" line per case. Run on the unix port at the
# board's heap, in a scratch directory (model.ver, config.json are written there).
#   micropython -X heapsize=H mpy_cases.py CASES_FILE BOARD_JSON
import asyncio
import binascii
import gc
import json
import sys

from node import board as boardmod
from node import config, model


def out(d):
    print("RESULT " + json.dumps(d))


def model_case(c, key):
    with open("case.efm", "wb") as f:
        f.write(binascii.unhexlify(c["data"]))
    try:
        r = model.load("case.efm", key, False)
    except model.ModelError as e:
        return {"ok": False, "error": str(e)}
    return {"ok": True, "version": r.version}


def config_case(c, board):
    with open("config.json", "w") as f:
        f.write(c["text"])
    cfg, err = config.load("config.json", board)
    # what the app does with the result must work too: a device id and a broker to report the error to
    return {"err": err, "dev": cfg.get("device_id"), "url": cfg.get("broker", {}).get("url")}


class _MQ:
    def __init__(self):
        self.acks = []
        self._inflight = {}

    async def publish(self, topic, payload, qos=1, retain=False, on_pid=None):
        self.acks.append(payload)
        return 1


class _Log:
    durable = 0
    acked = 0

    def last_seq(self):
        return 0

    def flush(self):
        pass

    def pending(self):
        return 0


class _Node:
    # The parts of node.app.Node a command touches; set_config goes to node.config with the real board.
    def __init__(self, board):
        self.dev = "f1"
        self.prefix = "edgefleet"
        self.mqtt = _MQ()
        self.log = _Log()
        self.cfg = config.defaults_for(board)
        self.board = board
        self.rebooted = False

    def uptime_s(self):
        return 1

    def set_config(self, changes):
        new, err = config.update("config.json", self.cfg, changes, self.board)
        if err:
            from node.commands import CommandError

            raise CommandError("set_config: " + err)
        self.cfg = new
        return {k: new[k] for k in changes}

    def request_reboot(self):
        self.rebooted = True


def cmd_case(c, node):
    from node import commands

    node.mqtt.acks = []
    cm = commands.Commands(node)
    payload = binascii.unhexlify(c["data"])
    try:
        asyncio.run(asyncio.wait_for(cm.handle(payload), 2))
    except Exception as e:
        return {"crash": repr(e)}
    # the bytes on the wire, checked on the host (valid UTF-8, storable text)
    return {"acks": [binascii.hexlify(a.encode() if isinstance(a, str) else a).decode() for a in node.mqtt.acks]}


def main():
    cases_path, board_path = sys.argv[1], sys.argv[2]
    board = boardmod.load(board_path)
    node = _Node(board)
    with open(cases_path) as f:
        for line in f:
            c = json.loads(line)
            k = c["kind"]
            key = binascii.unhexlify(c["key"]) if c.get("key") else None
            try:
                if k == "model":
                    r = model_case(c, key)
                elif k == "config":
                    r = config_case(c, board)
                else:
                    r = cmd_case(c, node)
            except Exception as e:  # a crash of the code under test: reported, the batch goes on
                r = {"crash": "%s: %s" % (type(e).__name__, e)}
            gc.collect()
            out(r)
    print("DONE")


main()
