# A node for the network-side tests: the real app (node.app.Node: flash log, MQTT client, publisher, status,
# commands) on the sim flash, fed by a record source of the test's own instead of the sensors, so these tests
# do not depend on the sampling side. Run on the unix port:
#   micropython -X heapsize=H netnode.py BOARD_JSON IMAGE DEVICE_ID BROKER_URL RATE_HZ FLUSH_BYTES FLUSH_S
#       [EVENT_EVERY [CA_FILE|- [KEEPALIVE_S]]]
import asyncio
import sys
import time
from array import array

from node import app
from simboard.launch import default_config, prepare

CH = ("temperature", "humidity", "pressure")


async def source(log, rate_hz, event_every, label="high"):
    # Appends readings through the Sink at a fixed rate; values encode the record count so a reused seq
    # would show up at the subscriber as the same seq with a different payload.
    vals = array("f", [0.0, 0.0, 0.0])
    period = int(1000 / rate_hz)
    n = 0
    t_next = time.ticks_ms()
    while True:
        n += 1
        ts = int(time.time() * 1000)
        vals[0] = 20.0 + (n % 100) / 10
        vals[1] = 40.0
        vals[2] = 1000.0 + n % 50
        log.reading("env", ts, 0, CH, vals)
        if event_every and n % event_every == 0:
            log.event(ts, 0, "anomaly", label, 0.91, "test-model", None, None)
        t_next = time.ticks_add(t_next, period)
        d = time.ticks_diff(t_next, time.ticks_ms())
        await asyncio.sleep_ms(d if d > 0 else 0)


def main():
    board_path, image, dev, url = sys.argv[1:5]
    rate, flush_bytes, flush_s = float(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
    event_every = int(sys.argv[8]) if len(sys.argv) > 8 else 0
    cfg = default_config(dev, url)
    ca = None
    keepalive = int(sys.argv[10]) if len(sys.argv) > 10 else 30
    if len(sys.argv) > 9 and sys.argv[9] != "-":
        # The CA goes onto the node's flash, as a deploy puts it there: the node sees only its own files.
        with open(sys.argv[9], "rb") as f:
            ca = f.read()
        cfg["broker"]["ca"] = "ca.crt"
    cfg["status_interval_s"] = 2
    board, flash, part = prepare(board_path, image, dev, url, cfg)
    if ca:
        with open("ca.crt", "wb") as f:
            f.write(ca)
    # the config as the app gets it: the file merged over node.config's defaults and validated
    from node import config as nodeconfig

    cfg, err = nodeconfig.load("config.json", board)
    if err:
        raise ValueError(err)
    nodeconfig.release()
    node = app.Node(
        board,
        cfg,
        part,
        flush={"flush_bytes": flush_bytes, "flush_s": flush_s, "stored_timeout_s": 3},
        mqtt_opts={"keepalive_s": keepalive, "backoff_max_s": 4},
    )
    print("netnode: %s seq=%d acked=%d boot=%d" % (dev, node.log.last_seq(), node.log.acked, node.boot))
    try:
        import os

        label = os.getenv("NETNODE_LABEL") or "high"  # e.g. non-ASCII text, end to end
        code = asyncio.run(node.run([source(node.log, rate, event_every, label)]))
    except KeyboardInterrupt:
        node.log.close()  # as node.app.main does on Ctrl-C
        code = 0
    sys.exit(code)


main()
