# MicroPython: where a whole node's heap goes, step by step, in the order node.app boots it. Prints one line
# "part <name> <sim|board> <bytes>" per step (gc.mem_alloc after gc.collect, minus the step before).
# `sim` parts exist only on the sim board (simulated flash chip, littlefs mount of it, launcher, simulated
# I2C bus / devices / pins / scenario); `board` parts are what an ESP32 spends from its heap too.
#   micropython -X heapsize=H heap_parts.py BOARD_JSON IMAGE MODEL_EFM
import gc
import sys

gc.collect()
_last = gc.mem_alloc()


def part(name, where):
    global _last
    gc.collect()
    a = gc.mem_alloc()
    print("part %s %s %d" % (name, where, a - _last))
    _last = a


import asyncio  # noqa: E402
import json  # noqa: E402, F401

part("asyncio+json", "board")

board_path, image, model_path = sys.argv[1:4]
with open(model_path, "rb") as f:
    model = f.read()
from node import board as boardmod  # noqa: E402
from simboard import flash as simflash  # noqa: E402
from simboard import launch  # noqa: E402

part("sim flash + launcher (code)", "sim")
board = boardmod.load(board_path)
part("board dict (launcher's copy)", "sim")
chip = simflash.open_board_flash(board, image)
part("sim flash chip (buffers)", "sim")
simflash.mount_vfs(chip, board, "/flash")
part("littlefs mount (an ESP32 mounts its vfs too)", "board")
cfg = launch.default_config("dev-heap", "mqtt://127.0.0.1:1")
cfg["model"] = "model.efm"
cfg["rule"] = {"output": "relay", "on_class": "walking"}
for name, obj in (("board.json", board), ("config.json", cfg)):
    with open(name, "w") as f:
        json.dump(obj, f)
with open("model.efm", "wb") as f:
    f.write(model)
part_log = chip.partition(*boardmod.partition(board, "log"))
del model, cfg, f, board, obj
part("launcher: files written, log partition", "sim")

from node import app  # noqa: E402

part("node.app + records flashlog mqtt publisher status commands (code)", "board")
board = boardmod.load("board.json")
part("board.json dict", "board")
from node import appboot  # noqa: E402

cfg, err = appboot.load_config(board)
assert err is None, err
part("config (loaded, module released) + cfg dict", "board")
del appboot
app._release_module("appboot")
node = app.Node(board, cfg, part_log)
app.current = node
part("Node: log, buffers, client, publisher, status, commands", "board")
from node import clean, clock, sampler  # noqa: E402, F401
from node.hw import adc, bme280, dht22, mpu6050  # noqa: E402, F401
from node import appboot as hw  # noqa: E402

part("hw+drivers+clean+sampler+clock (code)", "board")
from simboard import devices, i2c, pins, scenario  # noqa: E402, F401

part("sim i2c+devices+pins+scenario (code)", "sim")


class _Pin:
    def value(self, v=None):
        return 0


drv = hw.drivers(board, cfg, lambda b: None, lambda p: None, lambda s: None, None)
outs = hw.outputs(board, lambda p: _Pin())
part("driver + output objects", "board")
del drv, outs
gc.collect()
_last = gc.mem_alloc()
h = hw.build(board, cfg, None)
part("sim world, device models, scenario (hw.build minus drivers)", "sim")
node.sampler = sampler.Sampler(h, cfg, node.log)
part("sampler: slots, buffers, cleaners", "board")
from node import decision  # noqa: E402

d = decision.Decision(h, cfg, node.log, node.sampler)
node.model_id = d.model_id
part("decision + model runner + features + model", "board")
del board
part("board.json dict released after boot (node.app keeps its name only)", "board")
print("total %d free %d" % (gc.mem_alloc(), gc.mem_free()))
