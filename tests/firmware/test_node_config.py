# Node config: defaults, validation against the board (each error names its field), safe mode on bad
# input, atomic update.
import json
import os

from fwcore_helpers import write_json
from node import board as boardmod
from node import config

BAD = (
    ({"device_id": "no spaces"}, "device_id"),
    ({"device_id": "x" * 33}, "device_id"),
    ({"prefix": "a/#"}, "prefix"),
    ({"broker": {"url": "http://h:1883"}}, "broker.url"),
    ({"broker": {"url": "mqtt://h:99999"}}, "broker.url"),
    ({"broker": {"url": "mqtt://:1883"}}, "broker.url"),
    ({"broker": {"user": "x"}}, "broker.user"),
    ({"broker": {"password": 5}}, "broker.password"),
    ({"wifi": {"ssid": 3}}, "wifi.ssid"),
    ({"rates": {"lidar": 1}}, "rates.lidar"),
    ({"rates": {"air": 1}}, "rates.air"),  # DHT22: 0.5 Hz at most
    ({"rates": {"imu": 500}}, "rates.imu"),  # board: max_rate_hz 100
    ({"rates": {"env": -1}}, "rates.env"),
    ({"rates": {"env": True}}, "rates.env"),
    ({"log_every": {"imu": 0}}, "log_every.imu"),
    ({"log_every": {"imu": 2.5}}, "log_every.imu"),
    ({"status_interval_s": 0}, "status_interval_s"),
    ({"max_batch_bytes": 10}, "max_batch_bytes"),
    ({"ntp_host": ""}, "ntp_host"),
    ({"model": 7}, "model"),
    ({"rule": {"output": "siren", "on_class": "running"}}, "rule.output"),
    ({"rule": {"output": "led"}}, "rule"),
    ({"rule": {"output": "led", "on_class": "a", "on_anomaly_over": 0.5}}, "rule"),
    ({"rule": {"output": "led", "on_anomaly_over": "high"}}, "rule.on_anomaly_over"),
    ({"colour": "red"}, "colour"),
    ({"log": {"flush_bytes": 8}}, "log.flush_bytes"),
    ({"log": {"flush_bytes": 256.5}}, "log.flush_bytes"),
    ({"log": {"stored_timeout_s": 0}}, "log.stored_timeout_s"),
    ({"log": {"align": 8}}, "log.align"),
    ({"clean": {"nosuch": "off"}}, "clean.nosuch"),
    ({"clean": {"env": "on"}}, "clean.env"),
    ({"clean": {"env": {"window": 6}}}, "clean.env.window"),
    ({"clean": {"env": {"k": 0}}}, "clean.env.k"),
    ({"clean": {"env": {"hampel": True}}}, "clean.env.hampel"),
    ({"clean": []}, "clean"),
    ({"log": {"flush_s": 0}}, "log.flush_s"),
    ({"log": {"size": 1}}, "log.size"),
    ({"log": 5}, "log"),
    ({"mqtt": {"keepalive_s": 1}}, "mqtt.keepalive_s"),
    ({"mqtt": {"backoff_max_s": "x"}}, "mqtt.backoff_max_s"),
    ({"mqtt": {"qos": 2}}, "mqtt.qos"),
    ({"broker": {"url": "mqtts://broker.example:8883"}}, "broker.ca"),  # TLS never unverified
    ({"model_key": "00" * 8}, "model_key"),  # too short
    ({"model_key": "zz" * 16}, "model_key"),
    ({"model_key": 12}, "model_key"),
)


def test_defaults_are_valid_and_merge(sim_board, workdir):
    b = boardmod.load(sim_board)
    assert config.validate(config.defaults_for(b), b) is None
    p = workdir + "/config.json"
    write_json(p, {"device_id": "node-042", "rates": {"imu": 50}, "broker": {"url": "mqtts://broker.example:8883", "ca": "ca.pem"}})
    cfg, err = config.load(p, b)
    assert err is None, err
    assert cfg["device_id"] == "node-042" and cfg["rates"]["imu"] == 50 and cfg["rates"]["env"] == 1
    assert cfg["broker"]["url"] == "mqtts://broker.example:8883" and cfg["broker"]["username"] is None
    assert cfg["rule"] == {"output": "relay", "on_class": "running"}
    # the app's tuning sections (docs/firmware.md) merge key by key like the others
    write_json(p, {"log": {"flush_s": 1}, "mqtt": {"keepalive_s": 60}})
    cfg, err = config.load(p, b)
    assert err is None, err
    assert cfg["log"] == {"flush_bytes": 256, "flush_s": 1, "stored_timeout_s": 30, "align": 1} and cfg["mqtt"] == {"keepalive_s": 60, "backoff_max_s": 60}


def test_each_bad_config_names_its_field(sim_board):
    b = boardmod.load(sim_board)
    base = config.defaults_for(b)
    for change, field in BAD:
        cfg = config.merge(base, change)
        err = config.validate(cfg, b)
        assert err is not None, "accepted: %r" % change
        assert err.startswith(field + ":") or err.startswith(field + " ") or field in err.split(":")[0], (field, err)
    assert config.validate([1, 2], b).startswith("config:")
    assert config.validate({"rates": None}, b) is not None


def test_bad_files_boot_into_safe_mode_without_raising(sim_board, workdir):
    b = boardmod.load(sim_board)
    p = workdir + "/config.json"
    cfg, err = config.load(workdir + "/nope.json", b)
    assert "not found" in err and cfg["model"] is None and config.validate(cfg, b) is None
    with open(p, "w") as f:
        f.write('{"device_id": "node-7", ')
    cfg, err = config.load(p, b)
    assert "not valid JSON" in err and config.validate(cfg, b) is None
    # a bad rate, but identity and broker are fine on their own: safe mode keeps them so the node connects
    write_json(p, {"device_id": "node-7", "broker": {"url": "mqtt://10.0.0.5:1884", "username": "n7"},
                   "rates": {"imu": 5000}})  # fmt: skip
    cfg, err = config.load(p, b)
    assert err.startswith("rates.imu"), err
    assert cfg["device_id"] == "node-7" and cfg["broker"]["url"] == "mqtt://10.0.0.5:1884"
    assert cfg["broker"]["username"] == "n7" and cfg["model"] is None and cfg["rates"]["imu"] == 10
    assert config.validate(cfg, b) is None
    write_json(p, [1, 2, 3])
    cfg, err = config.load(p, b)
    assert "JSON object" in err and cfg["device_id"] == "node-001"


def test_update_validates_and_persists_atomically(sim_board, workdir):
    b = boardmod.load(sim_board)
    p = workdir + "/config.json"
    cfg, err = config.load(p, b)
    cfg, err = config.update(p, cfg, {"rates": {"env": 0.2, "imu": 50}, "status_interval_s": 30}, b)
    assert err is None, err
    assert cfg["rates"] == {"env": 0.2, "imu": 50, "soil": 1, "air": 0.5}, cfg["rates"]
    with open(p) as f:
        on_disk = json.load(f)
    assert on_disk == cfg
    assert "config.json.tmp" not in os.listdir(workdir)
    same, err = config.update(p, cfg, {"rates": {"imu": 1000}}, b)
    assert err.startswith("rates.imu") and same is cfg
    with open(p) as f:
        assert json.load(f)["rates"]["imu"] == 50, "a rejected change leaves the file alone"
    again, err = config.load(p, b)
    assert err is None and again == cfg
    _, err = config.update(p, cfg, "rates=1", b)
    assert err is not None
