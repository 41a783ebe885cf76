# Sim board entry point, run by `edgefleet node` on the unix port:
#   micropython -X heapsize=<board heap> -m simboard.launch BOARD_JSON FLASH_IMAGE DEVICE_ID BROKER_URL [SCENARIO]
# Mounts the simulated flash's vfs partition as the node's root (as on an ESP32), puts board.json and
# config.json on it when missing (from the arguments), then runs the app with the raw `log` partition.
# Exit code 75 (node.app.REBOOT_EXIT) means "reboot me"; the host launcher restarts the process.
import json
import os
import sys

from node import board as boardmod
from simboard.flash import mount_vfs, open_board_flash


def default_config(device_id, broker_url):
    # Only what the command line decides; node.config merges the file over its own DEFAULTS at boot, so the
    # defaults stay defined once. No model: the decision stage is off until one is provisioned.
    return {"device_id": device_id, "broker": {"url": broker_url}, "model": None, "rule": None}


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def prepare(board_path, image, device_id, broker_url, config=None):
    # Mounts the sim flash and writes the node's files; returns (board, flash chip, log partition).
    board = boardmod.load(board_path)
    flash = open_board_flash(board, image)
    mount_vfs(flash, board, "/flash")
    if not _exists("board.json"):
        with open("board.json", "w") as f:
            json.dump(board, f)
    if not _exists("config.json"):
        cfg = config or default_config(device_id, broker_url)
        with open("config.json", "w") as f:
            json.dump(cfg, f)
    else:
        # The command line names the node and its broker; keep the rest of a config the host may have set.
        try:
            with open("config.json") as f:
                cfg = json.load(f)
            if cfg.get("device_id") != device_id or (cfg.get("broker") or {}).get("url") != broker_url:
                cfg["device_id"] = device_id
                cfg.setdefault("broker", {})["url"] = broker_url
                with open("config.json.tmp", "w") as f:
                    json.dump(cfg, f)
                os.rename("config.json.tmp", "config.json")
        except (OSError, ValueError, AttributeError):
            pass  # a broken config is the app's to report (safe mode), not ours to overwrite
    off, size = boardmod.partition(board, "log")
    return board, flash, flash.partition(off, size)


def run(argv):
    if len(argv) < 4:
        print("usage: launch BOARD_JSON FLASH_IMAGE DEVICE_ID BROKER_URL [SCENARIO]")
        sys.exit(2)
    board_path, image, device_id, broker = argv[:4]
    scenario = argv[4] if len(argv) > 4 and argv[4] else None
    _, _, part = prepare(board_path, image, device_id, broker)
    from node import app

    try:
        app.main(part, scenario, sim=True)
    except KeyboardInterrupt:
        print("node: stopped")
        sys.exit(0)


if __name__ == "__main__":
    run(sys.argv[1:])
