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

from node.cfgset import check_interval, check_rates, check_rule, commit, max_rate
from node.cfgset import copy as _copy
from node.cfgset import is_int as _is_int
from node.cfgset import is_num as _is_num
from node.cfgset import merge

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
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


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


def validate(cfg, board):
    try:
        return _validate(cfg, board)
    except Exception as e:  # noqa: BLE001 - a validator must not crash the boot either
        return "config: cannot be checked (%s)" % e


def _validate(cfg, board):
    # One small function per part: set_config loads this module into a running node's fragmented heap, where
    # one large function's bytecode (~800 bytes contiguous) does not find room and many small ones do.
    if not isinstance(cfg, dict):
        return "config: must be a JSON object"
    sensors = {s["name"]: s for s in board["sensors"]}
    err = _check_top(cfg) or _check_broker(cfg) or _check_wifi(cfg) or check_rates(cfg, sensors, board["name"])
    err = err or _check_scalars(cfg) or _check_tuning(cfg) or _check_clean(cfg.get("clean", {}), sensors)
    return err or _check_key(cfg.get("model_key")) or check_rule(cfg.get("rule"), board)


def _check_top(cfg):
    for k in cfg:
        if k not in DEFAULTS:
            return "%s: unknown field (known: %s)" % (k, ", ".join(sorted(DEFAULTS)))
    if not valid_device_id(cfg.get("device_id")):
        return "device_id: %r must match ^[A-Za-z0-9_-]{1,32}$" % (cfg.get("device_id"),)
    p = cfg.get("prefix")
    if not isinstance(p, str) or not p or "+" in p or "#" in p or p[0] == "/" or p[-1] == "/":
        return "prefix: %r must be a non-empty MQTT topic prefix without +, # or a leading/trailing /" % (p,)
    return None


def _check_broker(cfg):
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
    return None


def _check_wifi(cfg):
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
    return None


def _check_scalars(cfg):
    err = check_interval(cfg)
    if err:
        return err
    v = cfg.get("max_batch_bytes")
    if not _is_int(v) or not 256 <= v <= 65536:
        return "max_batch_bytes: %r must be an integer in 256..65536" % (v,)
    v = cfg.get("ntp_host")
    if not (v is None or (isinstance(v, str) and v and " " not in v)):
        return "ntp_host: %r must be a host name or null" % (v,)
    v = cfg.get("model")
    if not (v is None or (isinstance(v, str) and v and len(v) <= 64)):
        return "model: %r must be a file name or null (decision stage off)" % (v,)
    return None


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
    cfg = merge(defaults_for(board), raw)
    err = validate(cfg, board)
    if err:
        return safe_default(raw, board), err
    return cfg, None


def release():
    # This module (with node.cfgset) costs ~17 KB of heap on the 64-bit port and is needed only at boot.
    # The app calls release() after using it; set_config uses node.cfgset alone.
    import sys

    import node

    for name in ("config", "cfgset"):
        sys.modules.pop("node." + name, None)
        if getattr(node, name, None) is not None:
            delattr(node, name)


def update(path, cfg, changes, board):
    if not isinstance(changes, dict):
        return cfg, "config: changes must be a JSON object"
    new = merge(cfg, changes)
    return commit(path, cfg, new, validate(new, board))
