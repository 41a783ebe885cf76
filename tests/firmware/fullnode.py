# The whole node, as a board boots it: node.app's own boot (board.json and config.json from the flash,
# sampling on the sim board's devices, the decision stage with a real model file, flash log, MQTT client,
# publisher, status, commands), on the sim flash. Used to measure and to hold the node to its heap
# (tests/host/test_node_heap.py, bench/node_heap.py). Run on the unix port:
#   micropython -X heapsize=H fullnode.py BOARD_JSON IMAGE DEVICE_ID BROKER_URL MODEL_EFM [REPORT_S [STATUS_S]]
# Every REPORT_S seconds it prints "fullnode: heap alloc=A free=F t=S" (after gc.collect), the first time
# once the node has booted (all tasks started). The report task is the only addition to what a board runs.
import asyncio
import gc
import sys
import time

from node import app
from simboard.launch import default_config, prepare


async def report(every_s):
    t0 = time.ticks_ms()
    while app.current is None:
        await asyncio.sleep_ms(50)
    await asyncio.sleep_ms(500)  # the tasks have started and run once
    while True:
        gc.collect()
        t = time.ticks_diff(time.ticks_ms(), t0) // 1000
        print("fullnode: heap alloc=%d free=%d t=%d" % (gc.mem_alloc(), gc.mem_free(), t))
        await asyncio.sleep_ms(int(every_s * 1000))


async def run(part, every_s):
    asyncio.create_task(report(every_s))
    return await app._boot(part, None)


def main():
    board_path, image, dev, url, model_path = sys.argv[1:6]
    every_s = float(sys.argv[6]) if len(sys.argv) > 6 else 5
    status_s = int(sys.argv[7]) if len(sys.argv) > 7 else 60
    with open(model_path, "rb") as f:
        model = f.read()
    cfg = default_config(dev, url)
    cfg["model"] = "model.efm"
    cfg["rule"] = {"output": "relay", "on_class": "walking"}
    cfg["status_interval_s"] = status_s
    _, _, part = prepare(board_path, image, dev, url, cfg)
    with open("model.efm", "wb") as f:  # deployed beside config.json, as `edgefleet deploy` puts it
        f.write(model)
    del model, cfg
    gc.collect()
    try:
        code = asyncio.run(run(part, every_s))
    except KeyboardInterrupt:
        if app.current is not None:
            app.current.log.close()
        code = 0
    sys.exit(code)


main()
