"""HIL tests that need no node firmware: deploy, re-deploy, wrong board, boot sequence.

They run on the virtual board by default and on a real ESP32 with --board-port/--board/--hil-config
(docs/hil.md). The firmware tests (boot -> status/telemetry -> event -> /cmd -> reboot) are added when the
node firmware lands; docs/hil.md lists them.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from edgefleet.board.deploy import build_plan, node_config
from edgefleet.errors import EdgefleetError

pytestmark = pytest.mark.hil


def board_sha256(hil_board, path: str) -> str:
    out = hil_board.mpremote("fs", "sha256sum", ":" + path).stdout
    return re.findall(r"\b[0-9a-f]{64}\b", out)[0]


def test_deploy_puts_every_file_with_the_right_hash(hil_board, deployed_node):
    result = deployed_node.result
    if hil_board.is_virtual:
        assert result.copied and not result.unchanged  # a fresh flash image: everything was sent
    plan = build_plan(
        hil_board.board, node_config(hil_board.board, deployed_node.device_id, None, None, None), None, []
    )
    for path in ["/board.json", *[p for p in plan.files if p.startswith("/node/")][:5]]:
        assert board_sha256(hil_board, path) == hashlib.sha256(plan.files[path]).hexdigest(), path
    cfg = json.loads(hil_board.mpremote("fs", "cat", ":config.json").stdout)
    assert cfg["device_id"] == deployed_node.device_id
    assert cfg["broker"]["url"] == deployed_node.broker_url
    on_board = json.loads(hil_board.mpremote("fs", "cat", ":board.json").stdout)
    assert on_board["name"] == hil_board.board.name


def test_redeploy_copies_nothing_then_only_what_changed(hil_board, deploy_node, tmp_path):
    first = deploy_node(device_id="hil-same")
    again = deploy_node(device_id="hil-same")
    assert again.result.copied == [] and again.result.removed == []
    assert sorted(again.result.unchanged) == sorted(first.result.copied + first.result.unchanged)
    (tmp_path / "junk.txt").write_text("not the deployed board.json")
    hil_board.mpremote("fs", "cp", str(tmp_path / "junk.txt"), ":board.json")
    hil_board.mpremote("fs", "cp", str(tmp_path / "junk.txt"), ":node/stale.mpy")
    third = deploy_node(device_id="hil-same")
    assert third.result.copied == ["/board.json"]
    assert third.result.removed == ["/node/stale.mpy"]


def test_deploy_to_another_board_type_is_refused(hil_board, deploy_node):
    deploy_node(device_id="hil-wrong")
    before = board_sha256(hil_board, "config.json")
    other = "esp32-s3" if hil_board.board.name != "esp32-s3" else "esp32-devkitc"
    with pytest.raises(EdgefleetError) as e:
        deploy_node(device_id="hil-other", board=other)
    msg = str(e.value)
    assert hil_board.board.name in msg and other in msg and "--force" in msg
    assert board_sha256(hil_board, "config.json") == before  # nothing was written


def test_fresh_board_of_another_chip_is_refused(hil_board, deploy_node):
    """No board.json yet: the interpreter's machine string decides."""
    hil_board.mpremote("exec", "import os\ntry:\n os.remove('board.json')\nexcept OSError:\n pass")
    other = "esp32-c3" if hil_board.board.chip != "esp32c3" else "esp32-devkitc"
    with pytest.raises(EdgefleetError, match="runs MicroPython for"):
        deploy_node(device_id="hil-fresh", board=other)


def test_soft_reset_runs_boot_then_main(hil_board, tmp_path):
    (tmp_path / "boot.py").write_text("print('HIL-BOOT-MARK')\n")
    (tmp_path / "main.py").write_text("import time\nprint('HIL-MAIN-MARK')\nwhile True:\n    time.sleep(0.05)\n")
    hil_board.mpremote("resume", "fs", "cp", str(tmp_path / "boot.py"), ":boot.py")
    hil_board.mpremote("resume", "fs", "cp", str(tmp_path / "main.py"), ":main.py")
    # mpremote leaves the friendly REPL: Ctrl-D there is a soft reset, which runs boot.py, then main.py
    out = hil_board.read_console(b"HIL-MAIN-MARK", send=b"\r\x03\x04")
    assert b"soft reboot" in out and b"HIL-BOOT-MARK" in out and b"HIL-MAIN-MARK" in out
    assert out.index(b"HIL-BOOT-MARK") < out.index(b"HIL-MAIN-MARK")
    # main.py loops forever; Ctrl-C interrupts it back to the REPL
    out = hil_board.read_console(b">>> ", send=b"\x03")
    assert b"KeyboardInterrupt" in out
    # mpremote still works afterwards (and its soft-reset, in the raw REPL, runs boot.py but not main.py)
    assert hil_board.mpremote("exec", "print('alive')").stdout.strip() == "alive"


def test_collector_records_what_reaches_the_broker(hil_broker, collector):
    """The plumbing the firmware HIL tests stand on: the node's broker URL and the recording subscriber."""
    import paho.mqtt.client as mqtt

    assert hil_broker.node_url.startswith("mqtt://") and str(hil_broker.port) in hil_broker.node_url
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.username_pw_set("hil-x", hil_broker.add_device("hil-x"))  # a device logs in as its device id
    pub.connect(hil_broker.host, hil_broker.port)
    pub.loop_start()
    try:
        info = pub.publish("edgefleet/hil-x/status", b'{"state":"online"}', qos=1, retain=True)
        info.wait_for_publish(10)
        topic, payload, _ = collector.wait_for("/status", timeout=10)
    finally:
        pub.loop_stop()
        pub.disconnect()
    assert topic == "edgefleet/hil-x/status" and payload == b'{"state":"online"}'
