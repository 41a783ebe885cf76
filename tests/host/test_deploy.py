"""`edgefleet deploy` through the CLI: the ampy transport on the virtual board, and the user mistakes."""

from __future__ import annotations

import json

import pytest

from edgefleet.board.boards import load_board
from edgefleet.cli import main
from edgefleet.errors import EdgefleetError


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_deploy_with_ampy_then_mpremote_sees_nothing_to_copy(vboard, tmp_path, capsys):
    cfg = tmp_path / "node.json"
    cfg.write_text(json.dumps({"wifi": {"ssid": "lab", "password": "secret"}, "status_interval_s": 30}))
    code, out, err = run_cli(capsys, "-q", "deploy", "--board", "sim", "--port", vboard.path, "--device-id", "amp-1",
                             "--config", str(cfg), "--broker", "mqtt://10.0.0.5:1883", "--transport", "ampy")  # fmt: skip
    assert code == 0, err
    assert "0 unchanged" in out and "verified" in out
    code, out, err = run_cli(capsys, "-q", "deploy", "--board", "sim", "--port", vboard.path, "--device-id", "amp-1",
                             "--config", str(cfg), "--broker", "mqtt://10.0.0.5:1883")  # fmt: skip
    assert code == 0, err
    assert " 0 copied" in out


def test_node_config_merges_file_and_flags(tmp_path):
    from edgefleet.board.boards import load_board
    from edgefleet.board.deploy import model_file, node_config

    board = load_board("esp32-devkitc")
    model = model_file("models/basicmotions-rf")
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"broker": {"username": "n1", "password": "pw"}, "wifi": {"ssid": "x", "password": "y"}}))
    with pytest.raises(EdgefleetError, match=r"broker\.ca: required for mqtts://"):
        node_config(board, "n1", f, "mqtts://broker.example:8883", model)  # TLS is never unverified
    cfg = node_config(board, "n1", f, "mqtts://broker.example:8883", model, ca=tmp_path / "ca.pem")
    assert cfg["broker"] == {"url": "mqtts://broker.example:8883", "username": "n1", "password": "pw", "ca": "ca.pem"}
    assert cfg["wifi"]["ssid"] == "x" and cfg["model"] == "model.efm" and cfg["device_id"] == "n1"
    assert cfg["rule"] == {"output": "relay", "on_class": "running"}  # from the model's manifest
    # a rule replaces the default rule: merged, it would hold both on_anomaly_over and on_class (invalid)
    f.write_text(json.dumps({"rule": {"output": "led", "on_anomaly_over": 0.5}, "rates": {"imu": 20}}))
    cfg = node_config(board, "n1", f, None, model)
    assert cfg["rule"] == {"output": "led", "on_anomaly_over": 0.5}
    assert cfg["rates"]["imu"] == 20 and cfg["rates"]["env"] == 1
    # without a model the decision stage is off
    assert node_config(board, "n1", None, None, None)["model"] is None


def test_node_config_is_checked_by_the_nodes_own_rules(tmp_path):
    """A config the node would reject (and boot into safe mode with) is refused on the host, same message."""
    from edgefleet.board.boards import load_board
    from edgefleet.board.deploy import node_config
    from edgefleet.errors import EdgefleetError

    f = tmp_path / "c.json"
    f.write_text(json.dumps({"rates": {"air": 5}}))  # a DHT22 cannot be read 5 times a second
    with pytest.raises(EdgefleetError, match="rates"):
        node_config(load_board("esp32-devkitc"), "n1", f, None, None)
    f.write_text(json.dumps({"rates": {"nosuch": 1}}))
    with pytest.raises(EdgefleetError, match="nosuch"):
        node_config(load_board("esp32-devkitc"), "n1", f, None, None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device-id", "bad id!"], "invalid device id"),
        (["--device-id", "n1", "--config", "/nonexistent/cfg.json"], "no such config file"),
        (["--device-id", "n1", "--model", "models/nonexistent"], "no model file"),
        (["--device-id", "n1", "--broker", "http://x"], "invalid broker URL"),
        (["--device-id", "n1"], "no such serial port: /dev/ttyNOPE"),
    ],
)
def test_user_mistakes_are_clear_errors(capsys, extra, message):
    code, _, err = run_cli(capsys, "deploy", "--board", "sim", "--port", "/dev/ttyNOPE", *extra)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_bad_config_json(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    code, _, err = run_cli(capsys, "deploy", "--board", "sim", "--port", "/dev/ttyNOPE", "--device-id", "n1",
                           "--config", str(bad))  # fmt: skip
    assert code == 2 and "not valid JSON: line 1" in err


def test_repl_on_a_missing_port(capsys):
    code, _, err = run_cli(capsys, "repl", "--port", "/dev/ttyNOPE")
    assert code == 2 and "no such serial port" in err


@pytest.mark.parametrize(
    ("machine", "chip", "ok"),
    [
        ("Generic ESP32 module with ESP32", "esp32", True),
        ("Generic ESP32 module with ESP32", "esp32s3", False),
        ("Generic ESP32S3 module with ESP32S3", "esp32s3", True),
        ("Generic ESP32S3 module with ESP32S3", "esp32", False),
        ("ESP32C3 module with ESP32C3", "esp32c3", True),
        ("linux [GCC 14.2.1] version", "sim", True),
        ("linux [GCC 14.2.1] version", "esp32", False),
        ("Raspberry Pi Pico with RP2040", "esp32", False),
    ],
)
def test_chip_matches_micropython_machine_strings(machine, chip, ok):
    from edgefleet.board.deploy import chip_matches

    assert chip_matches(machine, chip) is ok


def test_model_and_cmodule_are_deployed(vboard, tmp_path, capsys):
    import hashlib
    import os
    import subprocess
    import sys

    model_dir = tmp_path / "models" / "pump"
    model_dir.mkdir(parents=True)
    # deploy checks the model file (a random one is refused: test below), then copies its bytes
    import numpy as np

    from edgefleet.model.modelfile import KIND_GAUSS, ModelFile, Scaling, encode, gauss_body

    z = np.zeros(2, np.float32)
    model = encode(ModelFile("t", "anomaly", "env", (), 10, 10, 2, Scaling(z, z + 1), KIND_GAUSS,
                             gauss_body(z, np.eye(2)), threshold=1.0))  # fmt: skip
    (model_dir / "model.efm").write_bytes(model)
    cmod = tmp_path / "emlearn_trees.mpy"
    cmod.write_bytes(b"M\x06" + os.urandom(3000))
    code, _out, err = run_cli(capsys, "-q", "deploy", "--board", "sim", "--port", vboard.path, "--device-id", "m-1",
                             "--model", str(model_dir), "--cmodule", str(cmod), "--no-reset")  # fmt: skip
    assert code == 0, err

    def on_board(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "mpremote", "connect", vboard.path, "resume", *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    assert hashlib.sha256(model).hexdigest() in on_board("fs", "sha256sum", ":model.efm")
    assert hashlib.sha256(cmod.read_bytes()).hexdigest() in on_board("fs", "sha256sum", ":lib/emlearn_trees.mpy")
    assert json.loads(on_board("fs", "cat", ":config.json"))["model"] == "model.efm"


def test_deploy_refuses_a_truncated_random_or_wrongly_signed_model(tmp_path):
    """`deploy` decodes and verifies the model before copying: a truncated or random model.efm, or one that does
    not verify with the given key, is refused with one message (before: "deployed", and the node booted into
    safe mode)."""
    from edgefleet.board.deploy import model_file
    from edgefleet.model.modelfile import decode, encode, read_key

    good = (load_board("sim").path.parents[1] / "models" / "basicmotions-rf" / "model.efm").read_bytes()
    cases = {"truncated.efm": good[: len(good) // 2], "random.efm": bytes(range(256)) * 8}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(EdgefleetError, match="refusing to deploy"):
            model_file(str(tmp_path / name))
    key = tmp_path / "model.key"
    key.write_bytes(b"0123456789abcdef0123456789abcd\n ")  # trailing newline and space are part of the key
    signed = tmp_path / "signed.efm"
    signed.write_bytes(encode(decode(good), read_key(key)))
    assert model_file(str(signed), read_key(key)) == signed
    stripped = key.read_bytes().strip()
    with pytest.raises(EdgefleetError, match="signature does not verify"):
        model_file(str(signed), stripped)  # the stripped text is another key
    with pytest.raises(EdgefleetError, match="not signed but a key is configured"):
        model_file(_write(tmp_path / "u.efm", good), read_key(key))
    short = tmp_path / "short.key"
    short.write_bytes(b"tooshort")
    with pytest.raises(EdgefleetError, match="at least 16"):
        read_key(short)


def _write(path, data):
    path.write_bytes(data)
    return str(path)
