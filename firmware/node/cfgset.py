# What a running node needs to change its config (the set_config command): the sections that may be set
# remotely, their checks, the merge and the atomic save. node.config (the whole config's defaults and
# validation, ~17 KB of heap on the 64-bit port) uses these too but is loaded only at boot: a running node's
# heap is fragmented, and importing node.config for a command failed there ("memory allocation failed").
# The rest of a running node's config was validated at boot and does not change, so set_config validates
# only the sections it changes.
import json
import os

SETTABLE = ("rates", "log_every", "status_interval_s", "rule")  # log_every: edgefleet capture (full-rate data)
MERGED = ("broker", "wifi", "rates", "log_every", "log", "mqtt", "clean")  # dict sections merged key by key
# highest sampling rate per sensor kind when the board file gives no max_rate_hz
MAX_RATE = {"dht22": 0.5, "bme280": 25, "adc": 100, "mpu6050": 100}


def copy(d):
    # deep enough for our config: dicts of scalars, one level down
    out = {}
    for k, v in d.items():
        out[k] = dict(v) if isinstance(v, dict) else v
    return out


def merge(base, changes):
    out = copy(base)
    for k, v in changes.items():
        if k in MERGED and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = dict(v) if isinstance(v, dict) else v
    return out


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v not in (float("inf"), float("-inf"))


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def max_rate(sensor):
    m = sensor.get("max_rate_hz")
    return m if m is not None else MAX_RATE.get(sensor["type"], 100)


def check_rates(cfg, sensors, board_name):
    rates = cfg.get("rates")
    if not isinstance(rates, dict):
        return "rates: must be an object of sensor name -> Hz"
    for name, r in rates.items():
        if name not in sensors:
            return "rates.%s: no sensor %r on board %s (has %s)" % (name, name, board_name, ", ".join(sensors))
        if not is_num(r) or r < 0:
            return "rates.%s: %r must be a number >= 0 (0 = off)" % (name, r)
        m = max_rate(sensors[name])
        if r > m:
            return "rates.%s: %s Hz exceeds the %s sensor's maximum of %s Hz" % (name, r, sensors[name]["type"], m)
    every = cfg.get("log_every")
    if not isinstance(every, dict):
        return "log_every: must be an object of sensor name -> N (log every N-th reading)"
    for name, n in every.items():
        if name not in sensors:
            return "log_every.%s: no sensor %r on board %s" % (name, name, board_name)
        if not is_int(n) or not 1 <= n <= 100000:
            return "log_every.%s: %r must be an integer >= 1" % (name, n)
    return None


def check_interval(cfg):
    v = cfg.get("status_interval_s")
    if not is_num(v) or not 1 <= v <= 86400:
        return "status_interval_s: %r must be a number of seconds in 1..86400" % (v,)
    return None


def check_rule(rule, board):
    if rule is None:
        return None
    if not isinstance(rule, dict):
        return "rule: must be an object like {\"output\": \"relay\", \"on_class\": \"running\"} or null"
    outs = [o["name"] for o in board["outputs"]]
    for k in rule:
        if k not in ("output", "on_class", "on_anomaly_over"):
            return "rule.%s: unknown field (output, on_class, on_anomaly_over)" % k
    if rule.get("output") not in outs:
        return "rule.output: %r is not an output of board %s (has %s)" % (rule.get("output"), board["name"], ", ".join(outs))
    has_c = "on_class" in rule
    has_a = "on_anomaly_over" in rule
    if has_c == has_a:
        return "rule: needs exactly one of on_class, on_anomaly_over"
    if has_c and not (isinstance(rule["on_class"], str) and 1 <= len(rule["on_class"]) <= 32):
        return "rule.on_class: %r must be a class name" % (rule["on_class"],)
    if has_a and not is_num(rule["on_anomaly_over"]):
        return "rule.on_anomaly_over: %r must be a number" % (rule["on_anomaly_over"],)
    return None


def save(path, cfg):
    # Atomic: a power cut leaves either the old file or the new one, never half of one.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f)
    os.rename(tmp, path)


def update(path, cfg, changes, board):
    # (new cfg, None) once persisted, or (cfg, "field: what is wrong"). `board`: the board dict or the
    # running node's brief of it (node.board.brief).
    if not isinstance(changes, dict) or not changes:
        return cfg, "needs args: a subset of %s" % ", ".join(SETTABLE)
    for k in changes:
        if k not in SETTABLE:
            return cfg, "'%s' cannot be set remotely (allowed: %s)" % (k, ", ".join(SETTABLE))
    new = merge(cfg, changes)
    sensors = {s["name"]: s for s in board["sensors"]}
    return commit(path, cfg, new, check_rates(new, sensors, board["name"]) or check_interval(new)
                  or check_rule(new.get("rule"), board))


def commit(path, cfg, new, err):
    # The end of every config update: (cfg, err) when the check failed, else `new` persisted -> (new, None).
    if err:
        return cfg, err
    try:
        save(path, new)
    except OSError as e:
        return cfg, "config: cannot write %s (%s)" % (path, e)
    return new, None
