# Boot of the node application (node.app): config, model, node, sensor pipeline. Imported once by
# app._boot and released after it (its code is not needed while the node runs). Boot never loops: see app.
import gc
import json

from node import app
from node.app import CONFIG_PATH, Node, _release


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
        from node import hw as hwmod
        from node import sampler as sampmod

        hw = spend(lambda: hwmod.build(board, cfg, scenario))
        node.sampler = spend(lambda: sampmod.Sampler(hw, cfg, node.log))
        tasks.append(node.sampler.run())
    except Exception as e:  # noqa
        node._safe("sampling off: %s" % (str(e) or repr(e)))
        return tasks
    if model_err:
        node._safe("decision off: %s" % model_err)
    elif runner is not None:
        try:
            from node import decision

            d = spend(lambda: decision.Decision(hw, cfg, node.log, node.sampler, runner=runner))
            node.model_id = getattr(d, "model_id", None)
            tasks.append(d.run())
        except Exception as e:  # noqa
            node._safe("decision off: %s" % (str(e) or repr(e)))
    return tasks


_reserve = None  # the boot reserve (app.BOOT_RESERVE_DIV) while setup() runs


def boot_reserve():
    gc.collect()
    try:
        return bytearray((gc.mem_free() + gc.mem_alloc()) // app.BOOT_RESERVE_DIV)
    except MemoryError:
        return None  # a heap this short boots without it


def spend(build):
    # A boot stage that runs out of heap while the reserve is held gets the reserve and one more try: the
    # reserve is for the node's first minutes, never at the cost of sampling or the model.
    global _reserve
    try:
        return build()
    except MemoryError:
        if _reserve is None:
            raise
    _reserve = None
    gc.collect()
    return build()


def setup(part, scenario):
    from node import board as boardmod

    board = boardmod.load(app.BOARD_PATH)
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
    app.current = node
    tasks = [] if err else pipeline(node, board, cfg, scenario, runner, model_err)
    _reserve = None
    return node, tasks
