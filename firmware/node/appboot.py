# Boot of the node application (node.app): config, model, node, sensor pipeline. Imported once by
# app._boot and released after it (its code is not needed while the node runs). Boot never loops: see app.
# It does not import node.app (imports go one way, app -> appboot): app passes the Node class to setup() and
# keeps the node it returns.
import gc
import json

from micropython import const

from node import board as boardmod
from node.board import BOARD_PATH, CONFIG_PATH

# Boot reserve: 1/BOOT_RESERVE_DIV of the heap held in one block while the node boots and freed when it runs.
# Boot interleaves what lives for ever (code, config, buffers, sensor state) with its own temporaries (parsed
# JSON, module loading); without the reserve the freed temporaries leave only holes of a few blocks and the
# first connect cannot get a 240-byte coroutine (docs/architecture.md, Heap). With it, the long-lived objects
# pack around the reserve and the node starts with one contiguous run of that size.
BOOT_RESERVE_DIV = const(16)
RESERVE_PARTS = const(4)


def _release(config):
    # node.config costs ~10 KB of heap and is needed only at boot and for set_config: drop it after use.
    rel = getattr(config, "release", None)
    if rel is not None:
        rel()


def load_config(board):
    # (cfg, error). node.config (fwcore) validates; if even that fails, the raw file may still name the
    # device and broker, which is enough to connect and report the error.
    try:
        from node import config

        try:
            return config.load(CONFIG_PATH, board)
        finally:
            _release(config)
    except Exception as e:  # noqa: safe mode, never a crash at boot
        err = "config: %s" % (str(e) or repr(e))
    cfg = {}
    try:
        with open(CONFIG_PATH) as f:
            raw = json.load(f)
        for k in ("device_id", "prefix", "broker", "wifi"):
            if k in raw:
                cfg[k] = raw[k]
    except Exception:
        pass
    return cfg, err


def log_partition(board):
    import esp32

    found = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="log")
    if not found:
        raise OSError("no 'log' partition on this board's flash (see boards/%s.json)" % board.get("name"))
    return found[0]


def load_model(cfg):
    # The model is loaded right after the config, before the node's stages: the loader's code and the model's
    # arrays need contiguous blocks (up to ~1.5 KB), which a heap fragmented by the rest of the boot may not
    # have. (runner or None, error or None).
    if not cfg.get("model"):
        return None, None
    try:
        from node import decision

        return decision.load_runner(cfg)
    except Exception as e:  # noqa
        return None, "%s" % (str(e) or repr(e))


def pipeline(node, board, cfg, scenario, runner=None, model_err=None):
    # The seam to the sensing and model modules: sensors, sampler and decision stage feeding
    # node.log (the Sink). Returns the coroutines to run. A failure turns sampling off (safe mode); a model
    # failure turns the decision stage off. Both keep the node connected with the error in its status.
    tasks = []
    try:
        from node import sampler as sampmod

        hw = spend(lambda: build(board, cfg, scenario))
        node.sampler = spend(lambda: sampmod.Sampler(hw, cfg, node.log))
        tasks.append(node.sampler.run())
    except Exception as e:  # noqa
        node.degrade("sampling off: %s" % (str(e) or repr(e)))
        return tasks
    if model_err:
        node.degrade("decision off: %s" % model_err)
    elif runner is not None:
        try:
            from node import decision

            d = spend(lambda: decision.Decision(hw, cfg, node.log, node.sampler, runner=runner))
            node.model_id = getattr(d, "model_id", None)
            tasks.append(d.run())
        except Exception as e:  # noqa
            node.degrade("decision off: %s" % (str(e) or repr(e)))
    return tasks


_reserve = None  # the boot reserve (BOOT_RESERVE_DIV) while setup() runs


def boot_reserve():
    # The reserve in RESERVE_PARTS adjacent pieces: a boot stage that runs short takes one piece at a time, as
    # many as it needs, so the stages after it (on a heap its objects fragmented further) still find the rest.
    gc.collect()
    n = (gc.mem_free() + gc.mem_alloc()) // BOOT_RESERVE_DIV // RESERVE_PARTS
    parts = [None] * RESERVE_PARTS  # the list first: growing it between the pieces would leave holes there
    try:
        for i in range(RESERVE_PARTS):
            parts[i] = bytearray(n)
    except MemoryError:
        return None  # a heap this short boots without it
    return parts


def spend(make):
    # A boot stage that runs out of heap while the reserve is held gets a piece of it and another try, until it
    # fits or the reserve is gone: the reserve is for the node's first minutes, never at the cost of sampling or
    # the model.
    while True:
        try:
            return make()
        except MemoryError:
            if not _reserve:
                raise
        _reserve.pop()
        gc.collect()


def setup(part, scenario, Node):
    # (node, coroutines to run). Node: node.app's class, passed in so that this module never imports node.app.
    board = boardmod.load(BOARD_PATH)
    cfg, err = load_config(board)
    runner, model_err = (None, None) if err else load_model(cfg)
    global _reserve
    _reserve = boot_reserve()
    if part is None:
        part = log_partition(board)
    link = None
    if not boardmod.is_sim(board):
        from node.wifi import link_for

        link = link_for(board, cfg)
    node = spend(lambda: Node(board, cfg, part, error=err, link=link))
    tasks = [] if err else pipeline(node, board, cfg, scenario, runner, model_err)
    _reserve = None
    return node, tasks


# ---- the hardware layer (node.hw) from the board definition. Boot-only code, so it lives here and is released
# with this module: the board's wiring module gives the bus, pin and ADC accessors, and the same drivers and
# outputs are made on every board. node.hw itself imports none of this (the drivers import node.hw).
#
#   hw = node.appboot.build(board, config, scenario=None)   -> node.hw.Hw


def _rate(config, name):
    if config:
        r = config.get("rates", {}).get(name)
        if isinstance(r, (int, float)):
            return r
    return 1


def build(board, config, scenario=None):
    # Only the board's own wiring module is loaded: heap is scarce.
    if board["chip"] == "sim":
        from simboard.pins import wiring

        w = wiring(board, scenario)
    else:
        from node.hw.esp32 import wiring

        w = wiring(board)
    i2c_for, pin_for, adc_for, dht_readinto, pin_for_out, sim = w
    from node.hw import Hw

    return Hw(drivers(board, config, i2c_for, pin_for, adc_for, dht_readinto), outputs(board, pin_for_out), sim)


def drivers(board, config, i2c_for, pin_for, adc_for, dht_readinto):
    from node.hw.adc import AnalogInput
    from node.hw.bme280 import BME280
    from node.hw.dht22 import DHT22
    from node.hw.mpu6050 import MPU6050

    sensors = []
    for s in board["sensors"]:
        t = s["type"]
        name = s["name"]
        if t == "bme280":
            # forced mode (one conversion per read, sleeps between) at low rates; normal mode above 1 Hz
            mode = "forced" if _rate(config, name) <= 1 else "normal"
            sensors.append(BME280(name, i2c_for(s["bus"]), s["address"], mode=mode))
        elif t == "mpu6050":
            sensors.append(MPU6050(name, i2c_for(s["bus"]), s["address"], rate_hz=_rate(config, name)))
        elif t == "adc":
            sensors.append(AnalogInput(name, adc_for(s), s["calibration"]))
        elif t == "dht22":
            sensors.append(DHT22(name, pin_for(s["pin"]), dht_readinto))
    return sensors


def outputs(board, pin_for_out):
    from node.hw import Output

    outs = {}
    for o in board["outputs"]:
        outs[o["name"]] = Output(o["name"], pin_for_out(o["pin"]), o.get("active_low", False))
    return outs

