# Provision a sim node's flash before its first boot, as `edgefleet deploy` would put files on a board:
#   micropython -m simboard.provision BOARD_JSON FLASH_IMAGE CONFIG_JSON [DEST=HOST_FILE ...]
#   micropython -m simboard.provision --inspect BOARD_JSON FLASH_IMAGE   (prints the flash log's state as JSON)
# Mounts the image's vfs partition (formatting a blank one), writes board.json, config.json (atomically: tmp +
# rename) and each DEST from HOST_FILE (e.g. model.efm=/abs/models/x/model.efm). The log partition is left
# alone, so re-provisioning a node keeps its unsent records. Used by host/edgefleet/sim/simulate.py.
import json
import os
import sys

from node import board as boardmod
from simboard.flash import mount_vfs, open_board_flash


def _copy(src, dest):
    buf = bytearray(1024)
    mv = memoryview(buf)
    with open(src, "rb") as fi, open(dest + ".tmp", "wb") as fo:
        while True:
            n = fi.readinto(buf)
            if not n:
                break
            fo.write(mv[:n])
    os.rename(dest + ".tmp", dest)


def inspect(board_path, image):
    # What the flash log holds, for the host's bookkeeping (simulate.py): read-only, the node must be stopped.
    from node.flashlog import FlashLog

    board = boardmod.load(board_path)
    flash = open_board_flash(board, image)
    off, size = boardmod.partition(board, "log")
    log = FlashLog(flash.partition(off, size), readonly=True)
    # per sector with data: [index, counter, first seq, end of valid data]
    secs = [[s, log.cnt[s], log.base[s], log.woff if s == log.head else log.end[s]] for s in range(log.n) if log.cnt[s]]
    out = {"durable": log.durable, "acked": log.acked, "next_seq": log.next_seq, "clean": log.clean,
           "corrupt": log.corrupt, "head": log.head, "log_offset": off, "sectors": secs, "log": log.log,
           "erase_counts": log.erase_counts()}
    print(json.dumps(out))


def run(argv):
    if argv and argv[0] == "--inspect":
        inspect(argv[1], argv[2])
        return
    if len(argv) < 3:
        print("usage: provision BOARD_JSON FLASH_IMAGE CONFIG_JSON [DEST=HOST_FILE ...]")
        sys.exit(2)
    board_path, image, cfg_path = argv[:3]
    # Host paths are read before the chdir into the flash (they are absolute anyway).
    with open(cfg_path) as f:
        cfg = json.load(f)
    board = boardmod.load(board_path)
    files = []
    for spec in argv[3:]:
        dest, src = spec.split("=", 1)
        files.append((dest, src))
    flash = open_board_flash(board, image)
    mount_vfs(flash, board, "/flash")
    with open("board.json", "w") as f:
        json.dump(board, f)
    with open("config.json.tmp", "w") as f:
        json.dump(cfg, f)
    os.rename("config.json.tmp", "config.json")
    for dest, src in files:
        _copy(src, dest)
    print("provisioned", cfg.get("device_id"), len(files), "file(s)")


if __name__ == "__main__":
    run(sys.argv[1:])
