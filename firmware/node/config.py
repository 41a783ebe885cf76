# Node configuration: one JSON file on the node's flash (config.json), validated at boot against the board
# definition. Nothing here raises on bad input: load() returns a usable config plus an error message, so the
# app can boot into safe mode (still connecting, reporting the error in its status) instead of boot-looping.
#
#   cfg, err = load(path, board)             # err None: cfg is the file merged over DEFAULTS
#   err = validate(cfg, board)               # None or "field: what is wrong"
#   cfg, err = update(path, cfg, changes, board)   # merge, validate, persist atomically (tmp + rename)
#
# A file may give only some fields; the rest come from DEFAULTS. Dict fields (broker, wifi, rates,
# log_every) merge key by key; `rule` and the scalars replace. Unknown fields are errors (a typo must not
# be silently ignored).
import json
import os

DEFAULTS = {
    "device_id": "node-001",
    "prefix": "edgefleet",
    "broker": {"url": "mqtt://127.0.0.1:1883", "username": None, "password": None, "ca": None},
    "wifi": {"ssid": "", "password": ""},
    "rates": {"env": 1, "imu": 10, "soil": 1, "air": 0.5},
    "log_every": {"env": 1, "imu": 10, "soil": 10, "air": 2},
    "status_interval_s": 60,
    "max_batch_bytes": 2048,
    "ntp_host": "pool.ntp.org",
    "model": "model.efm",
    # hex of the model-signing HMAC key (docs/security.md): with one, the node loads only models signed with it
    "model_key": None,
    "rule": {"output": "relay", "on_class": "running"},
    "log": {"flush_bytes": 256, "flush_s": 5, "stored_timeout_s": 30, "align": 1},
    "mqtt": {"keepalive_s": 30, "backoff_max_s": 60},
    # per sensor: "off", or {"window": odd 3..31, "k": 1..20, "stuck_s": s}; a sensor left out: the defaults
    "clean": {},
}
MERGED = ("broker", "wifi", "rates", "log_every", "log", "mqtt", "clean")
_CLEAN = (("window", 3, 31, True), ("k", 1, 20, False), ("stuck_s", 1, 86400, False))
# numeric tuning fields of the dict sections: (section, field, lo, hi, integer?)
_TUNING = (
    ("log", "flush_bytes", 32, 4096, True),
    ("log", "flush_s", 0.1, 3600, False),
    ("log", "stored_timeout_s", 1, 86400, False),
    ("log", "align", 1, 32, True),
    ("mqtt", "keepalive_s", 5, 3600, True),
    ("mqtt", "backoff_max_s", 1, 3600, False),
)
# highest sampling rate per sensor kind when the board file gives no max_rate_hz
MAX_RATE = {"dht22": 0.5, "bme280": 25, "adc": 100, "mpu6050": 100}
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def _copy(d):
    # deep enough for our config: dicts of scalars, one level down
    out = {}
    for k, v in d.items():
        out[k] = dict(v) if isinstance(v, dict) else v
    return out


def _merge(base, changes):
    out = _copy(base)
    for k, v in changes.items():
        if k in MERGED and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = dict(v) if isinstance(v, dict) else v
    return out


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v not in (float("inf"), float("-inf"))


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _opt_str(v):
    return v is None or isinstance(v, str)


def valid_device_id(v):
    if not isinstance(v, str) or not 1 <= len(v) <= 32:
        return False
    for ch in v:
        if ch not in _ID_CHARS:
            return False
    return True


def _check_url(url):
    if not isinstance(url, str):
        return "broker.url: must be a string like mqtt://host:1883"
    if url.startswith("mqtt://"):
        rest = url[7:]
    elif url.startswith("mqtts://"):
        rest = url[8:]
    else:
        return "broker.url: %r must start with mqtt:// or mqtts://" % url
    if rest.endswith("/"):
        rest = rest[:-1]
    host, port = rest, None
    if rest.startswith("["):  # [v6]:port
        end = rest.find("]")
        host, tail = rest[: end + 1], rest[end + 1 :]
        if tail:
            port = tail[1:] if tail[0] == ":" else "?"
    elif ":" in rest:
        host, port = rest.rsplit(":", 1)
    if not host or "/" in host or " " in host:
        return "broker.url: %r has no valid host" % url
    if port is not None:
        try:
            p = int(port)
        except ValueError:
            return "broker.url: port %r is not a number" % port
        if not 1 <= p <= 65535:
            return "broker.url: port %d is out of 1..65535" % p
    return None


def max_rate(sensor):
    m = sensor.get("max_rate_hz")
    return m if m is not None else MAX_RATE.get(sensor["type"], 100)


def validate(cfg, board):
    try:
        return _validate(cfg, board)
    except Exception as e:  # noqa: BLE001 - a validator must not crash the boot either
        return "config: cannot be checked (%s)" % e


def _validate(cfg, board):
    if not isinstance(cfg, dict):
        return "config: must be a JSON object"
    for k in cfg:
        if k not in DEFAULTS:
            return "%s: unknown field (known: %s)" % (k, ", ".join(sorted(DEFAULTS)))
    if not valid_device_id(cfg.get("device_id")):
        return "device_id: %r must match ^[A-Za-z0-9_-]{1,32}$" % (cfg.get("device_id"),)
    p = cfg.get("prefix")
    if not isinstance(p, str) or not p or "+" in p or "#" in p or p[0] == "/" or p[-1] == "/":
        return "prefix: %r must be a non-empty MQTT topic prefix without +, # or a leading/trailing /" % (p,)
    b = cfg.get("broker")
    if not isinstance(b, dict):
        return "broker: must be an object with url, username, password, ca"
    for k in b:
        if k not in DEFAULTS["broker"]:
            return "broker.%s: unknown field" % k
    err = _check_url(b.get("url"))
    if err:
        return err
    for k in ("username", "password", "ca"):
        if not _opt_str(b.get(k)):
            return "broker.%s: must be a string or null" % k
    if b.get("url", "").startswith("mqtts://") and not b.get("ca"):
        return "broker.ca: required for mqtts:// (the CA certificate file that signed the broker's certificate)"
    w = cfg.get("wifi")
    if not isinstance(w, dict):
        return "wifi: must be an object with ssid, password"
    for k in w:
        if k not in DEFAULTS["wifi"]:
            return "wifi.%s: unknown field" % k
        if not isinstance(w[k], str):
            return "wifi.%s: must be a string" % k
    if len(w.get("ssid", "")) > 32:
        return "wifi.ssid: longer than 32 bytes"
    sensors = {s["name"]: s for s in board["sensors"]}
    rates = cfg.get("rates")
    if not isinstance(rates, dict):
        return "rates: must be an object of sensor name -> Hz"
    for name, r in rates.items():
        if name not in sensors:
            return "rates.%s: no sensor %r on board %s (has %s)" % (name, name, board["name"], ", ".join(sensors))
        if not _is_num(r) or r < 0:
            return "rates.%s: %r must be a number >= 0 (0 = off)" % (name, r)
        m = max_rate(sensors[name])
        if r > m:
            return "rates.%s: %s Hz exceeds the %s sensor's maximum of %s Hz" % (name, r, sensors[name]["type"], m)
    every = cfg.get("log_every")
    if not isinstance(every, dict):
        return "log_every: must be an object of sensor name -> N (log every N-th reading)"
    for name, n in every.items():
        if name not in sensors:
            return "log_every.%s: no sensor %r on board %s" % (name, name, board["name"])
        if not _is_int(n) or not 1 <= n <= 100000:
            return "log_every.%s: %r must be an integer >= 1" % (name, n)
    v = cfg.get("status_interval_s")
    if not _is_num(v) or not 1 <= v <= 86400:
        return "status_interval_s: %r must be a number of seconds in 1..86400" % (v,)
    v = cfg.get("max_batch_bytes")
    if not _is_int(v) or not 256 <= v <= 65536:
        return "max_batch_bytes: %r must be an integer in 256..65536" % (v,)
    v = cfg.get("ntp_host")
    if not (v is None or (isinstance(v, str) and v and " " not in v)):
        return "ntp_host: %r must be a host name or null" % (v,)
    err = _check_tuning(cfg)
    if err:
        return err
    err = _check_clean(cfg.get("clean", {}), sensors)
    if err:
        return err
    v = cfg.get("model")
    if not (v is None or (isinstance(v, str) and v and len(v) <= 64)):
        return "model: %r must be a file name or null (decision stage off)" % (v,)
    err = _check_key(cfg.get("model_key"))
    if err:
        return err
    return _check_rule(cfg.get("rule"), board)


def _check_key(v):
    # The key itself is never echoed in a message.
    if v is None:
        return None
    if not isinstance(v, str) or len(v) % 2 or not 32 <= len(v) <= 128:
        return "model_key: must be null or the key as 32 to 128 hex digits (16 to 64 bytes)"
    for ch in v:
        if ch not in "0123456789abcdefABCDEF":
            return "model_key: must be hex digits only"
    return None


def model_key(cfg):
    # The configured key as bytes, or None.
    v = cfg.get("model_key") if isinstance(cfg, dict) else None
    if _check_key(v) is not None or v is None:
        return None
    import binascii

    return binascii.unhexlify(v)


def _check_tuning(cfg):
    # A section or field left out means its default (the app falls back to the same values).
    for sec in ("log", "mqtt"):
        d = cfg.get(sec, {})
        if not isinstance(d, dict):
            return "%s: must be an object (%s)" % (sec, ", ".join(DEFAULTS[sec]))
        for k in d:
            if k not in DEFAULTS[sec]:
                return "%s.%s: unknown field (known: %s)" % (sec, k, ", ".join(DEFAULTS[sec]))
    for sec, k, lo, hi, whole in _TUNING:
        d = cfg.get(sec, {})
        if k in d:
            v = d[k]
            if not (_is_int(v) if whole else _is_num(v)) or not lo <= v <= hi:
                return "%s.%s: %r must be %s in %s..%s" % (sec, k, v, "an integer" if whole else "a number", lo, hi)
    if cfg.get("log", {}).get("align", 1) not in (1, 4, 16, 32):
        return "log.align: must be 1, 4, 16 or 32 (16 with ESP32 flash encryption)"
    return None


def _check_clean(clean, sensors):
    if not isinstance(clean, dict):
        return "clean: must be an object of sensor name -> \"off\" or {window, k, stuck_s}"
    for name, st in clean.items():
        if name not in sensors:
            return "clean.%s: no sensor %r on this board (has %s)" % (name, name, ", ".join(sensors))
        if st == "off":
            continue
        if not isinstance(st, dict):
            return "clean.%s: %r must be \"off\" or an object with window, k, stuck_s" % (name, st)
        for k in st:
            if k not in ("window", "k", "stuck_s"):
                return "clean.%s.%s: unknown field (known: window, k, stuck_s)" % (name, k)
        for k, lo, hi, whole in _CLEAN:
            if k in st:
                v = st[k]
                if not (_is_int(v) if whole else _is_num(v)) or not lo <= v <= hi:
                    return "clean.%s.%s: %r must be %s in %s..%s" % (name, k, v, "an integer" if whole else "a number", lo, hi)
        if st.get("window", 7) % 2 == 0:
            return "clean.%s.window: must be odd (the median of an odd window is a reading)" % name
    return None


def _check_rule(rule, board):
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
    if has_a and not _is_num(rule["on_anomaly_over"]):
        return "rule.on_anomaly_over: %r must be a number" % (rule["on_anomaly_over"],)
    return None


def safe_default(raw=None, board=None):
    # What a node runs with when its config is unusable: the defaults, with the decision stage off, but
    # with the identity and the way to the broker from the file when those parts are valid on their own.
    cfg = defaults_for(board) if board else _copy(DEFAULTS)
    cfg["model"] = None
    cfg["rule"] = None
    if isinstance(raw, dict):
        if valid_device_id(raw.get("device_id")):
            cfg["device_id"] = raw["device_id"]
        p = raw.get("prefix")
        if isinstance(p, str) and p and "+" not in p and "#" not in p:
            cfg["prefix"] = p
        b = raw.get("broker")
        if isinstance(b, dict) and _check_url(b.get("url")) is None:
            nb = dict(DEFAULTS["broker"])
            for k in nb:
                if k in b and (k == "url" or _opt_str(b[k])):
                    nb[k] = b[k]
            cfg["broker"] = nb
        w = raw.get("wifi")
        if isinstance(w, dict) and isinstance(w.get("ssid"), str) and isinstance(w.get("password", ""), str):
            cfg["wifi"] = {"ssid": w["ssid"], "password": w.get("password", "")}
    return cfg


def defaults_for(board):
    # DEFAULTS with rates/log_every for exactly the board's sensors (1 Hz, every reading, for sensors the
    # defaults do not know; capped at the sensor's maximum), and no rule on a board without its output.
    cfg = _copy(DEFAULTS)
    rates = {}
    every = {}
    for s in board["sensors"]:
        n = s["name"]
        rates[n] = min(DEFAULTS["rates"].get(n, 1), max_rate(s))
        every[n] = DEFAULTS["log_every"].get(n, 1)
    cfg["rates"] = rates
    cfg["log_every"] = every
    if cfg["rule"]["output"] not in [o["name"] for o in board["outputs"]]:
        cfg["rule"] = None
    return cfg


def load(path, board):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return safe_default(None, board), "config: %s not found" % path
    try:
        raw = json.loads(text)
    except ValueError as e:
        return safe_default(None, board), "config: %s is not valid JSON (%s)" % (path, e)
    if not isinstance(raw, dict):
        return safe_default(None, board), "config: %s must hold a JSON object" % path
    cfg = _merge(defaults_for(board), raw)
    err = validate(cfg, board)
    if err:
        return safe_default(raw, board), err
    return cfg, None


def release():
    # This module costs ~10 KB of heap (mostly its messages) and is needed only at boot and for set_config.
    # The app may call release() after using it and import it again when needed.
    import sys

    import node

    sys.modules.pop("node.config", None)
    if getattr(node, "config", None) is not None:
        del node.config


def save(path, cfg):
    # Atomic: a power cut leaves either the old file or the new one, never half of one.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f)
    os.rename(tmp, path)


def update(path, cfg, changes, board):
    if not isinstance(changes, dict):
        return cfg, "config: changes must be a JSON object"
    new = _merge(cfg, changes)
    err = validate(new, board)
    if err:
        return cfg, err
    try:
        save(path, new)
    except OSError as e:
        return cfg, "config: cannot write %s (%s)" % (path, e)
    return new, None
