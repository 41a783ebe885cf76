"""`edgefleet flash`: put MicroPython (and our partition table) on an ESP32 with esptool's Python API.

Checks before anything is written, because a wrong write costs the user a recovery: the port exists, the
firmware file is an ESP image (magic 0xE9) built for the board's chip (chip id in the image header), and
the chip on the port is the board definition's chip. Boards whose layout differs from stock MicroPython
(`micropython.stock_partitions: false`, we add a raw `log` partition) get our generated table at
partition_table_offset; when the firmware file is a merged image that covers that address, the table is
patched into the image so one write (and one verify) covers both.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import EdgefleetError
from ..paths import project_root
from . import parttable
from .boards import Board
from .deploy import check_port

log = logging.getLogger(__name__)

IMAGE_MAGIC = 0xE9
# Chip ids in the ESP image extended header (byte 12, little-endian u16), as esptool's targets define them.
IMAGE_CHIP_ID = {"esp32": 0, "esp32s3": 9, "esp32c3": 5, "esp32c6": 13}
CHIP_BY_ID = {v: k for k, v in IMAGE_CHIP_ID.items()} | {2: "esp32s2", 12: "esp32c2", 16: "esp32h2"}
ROM_BAUD = 115200


def chip_key(esptool_name: str) -> str:
    """esptool's CHIP_NAME ("ESP32-S3") as our board files spell chips ("esp32s3")."""
    return esptool_name.lower().replace("-", "")


def default_firmware(board: Board) -> Path:
    fb = board.data.get("micropython", {}).get("firmware_board", board.name)
    return project_root() / "build" / "firmware" / f"{fb}.bin"


def check_image(path: Path, board: Board) -> bytes:
    """The firmware bytes, after checking they are an ESP image for the board's chip that fits its flash."""
    fb = board.data.get("micropython", {}).get("firmware_board", "")
    if not path.is_file():
        raise EdgefleetError(
            f"firmware file not found: {path}",
            hint=f"download MicroPython for {fb} from https://micropython.org/download/{fb}/ and pass --firmware "
            f"FILE (or save it as {default_firmware(board)})",
        )
    data = path.read_bytes()
    if len(data) < 24 or data[0] != IMAGE_MAGIC:
        raise EdgefleetError(
            f"{path} is not an ESP32 firmware image (first byte {data[:1].hex() or 'missing'}, expected e9)",
            hint="use the .bin from micropython.org (not .elf, .uf2 or .hex)",
        )
    chip_id = struct.unpack_from("<H", data, 12)[0]
    if chip_id != IMAGE_CHIP_ID[board.chip]:
        other = CHIP_BY_ID.get(chip_id, f"unknown chip id {chip_id}")
        raise EdgefleetError(
            f"{path} is built for {other}, but board {board.name} is an {board.chip}",
            hint=f"download the {fb} build of MicroPython",
        )
    if board.firmware_offset + len(data) > board.flash_size:
        raise EdgefleetError(f"{path} ({len(data)} bytes at {board.firmware_offset:#x}) does not fit the "
                             f"{board.flash_size // (1 << 20)} MB flash of {board.name}")  # fmt: skip
    return data


@dataclass
class FlashPlan:
    regions: list[tuple[int, bytes]]
    table: bytes | None


def plan_flash(board: Board, firmware: bytes) -> FlashPlan:
    stock = board.data.get("micropython", {}).get("stock_partitions", True)
    if stock:
        return FlashPlan([(board.firmware_offset, firmware)], None)
    table = parttable.generate(board)
    pt_rel = board.partition_table_offset - board.firmware_offset
    if pt_rel >= 0 and pt_rel + len(table) <= len(firmware):
        patched = bytearray(firmware)
        patched[pt_rel : pt_rel + len(table)] = table
        return FlashPlan([(board.firmware_offset, bytes(patched))], table)
    return FlashPlan([(board.firmware_offset, firmware), (board.partition_table_offset, table)], table)


class _EsptoolLog:
    """esptool's log hooks -> our logging, and its progress -> a tqdm bar.

    esptool's logger is a process-wide singleton that can be replaced once (the replacement has no
    set_logger), so one adapter is installed per process and forwards to the _EsptoolLog of the running flash.
    """

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.bar: tqdm | None = None

    def install(self) -> None:
        global _ACTIVE
        _ACTIVE = self
        if not _INSTALLED:
            _install_adapter()

    def update(self, cur: int, total: int, prefix: str) -> None:
        if not self.progress:
            return
        if self.bar is None or self.bar.total != total or cur < self.bar.n:
            self.close()
            self.bar = tqdm(total=total, desc=prefix.strip()[:40] or "flash", leave=True)
        self.bar.update(cur - self.bar.n)
        if cur >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_ACTIVE: _EsptoolLog | None = None
_INSTALLED = False


def _install_adapter() -> None:
    global _INSTALLED
    from esptool.logger import TemplateLogger
    from esptool.logger import log as esplog

    class Adapter(TemplateLogger):
        def print(self, *args, **kwargs):
            msg = " ".join(str(a) for a in args).strip()
            if msg:
                log.info("esptool: %s", msg)

        def note(self, message):
            log.info("esptool: %s", message)

        def warning(self, message):
            log.warning("esptool: %s", message)

        def error(self, message):
            log.error("esptool: %s", message)

        def stage(self, finish=False):
            pass

        def progress_bar(self, cur_iter, total_iters, prefix="", suffix="", bar_length=30):
            if _ACTIVE is not None:
                _ACTIVE.update(cur_iter, total_iters, prefix)

        def set_verbosity(self, verbosity):
            pass

    esplog.set_logger(Adapter())
    _INSTALLED = True


def flash(
    board: Board,
    port: str,
    firmware: Path | None = None,
    erase: bool = False,
    baud: int = 460800,
    no_stub: bool = False,
    progress: bool = True,
    connect_mode: str = "default-reset",
) -> str:
    """Flash `board` on `port`; returns the chip esptool detected. Raises EdgefleetError for user mistakes."""
    if board.is_sim:
        raise EdgefleetError("the sim board has no chip to flash", hint="run `edgefleet board virtual --board sim`")
    image = check_image(firmware or default_firmware(board), board)
    plan = plan_flash(board, image)
    check_port(port)
    from esptool.cmds import attach_flash, detect_chip, erase_flash, reset_chip, run_stub, verify_flash, write_flash
    from esptool.util import FatalError

    elog = _EsptoolLog(progress)
    elog.install()
    esp = None
    try:
        try:
            esp = detect_chip(port, ROM_BAUD, connect_mode, connect_attempts=3)
        except (FatalError, OSError) as e:
            raise EdgefleetError(f"no ESP chip answered on {port}: {e}",
                                 hint="hold BOOT while pressing EN to enter the bootloader, check the cable") from None  # fmt: skip
        found = chip_key(esp.CHIP_NAME)
        log.info("detected %s on %s", esp.CHIP_NAME, port)
        if found != board.chip:
            raise EdgefleetError(
                f"the chip on {port} is an {found}, but board {board.name} is an {board.chip}",
                hint=f"pick the board definition for this chip (boards/*.json with chip {found})",
            )
        if not no_stub:
            esp = run_stub(esp)
        if baud != ROM_BAUD:
            esp.change_baud(baud)
        attach_flash(esp)
        if erase:
            log.info("erasing the whole flash (%d KB)", board.flash_size // 1024)
            if esp.IS_STUB:
                erase_flash(esp)
            else:  # the ROM loader has no chip erase; its FLASH_BEGIN erases the region it is given
                esp.flash_begin(board.flash_size, 0)
        for off, data in plan.regions:
            log.info("writing %d bytes at %#x", len(data), off)
        write_flash(esp, list(plan.regions), compress=not no_stub, no_compress=no_stub)
        verify_flash(esp, list(plan.regions))
        if connect_mode == "no-reset":  # no auto-reset circuit: the user presses EN to boot the new firmware
            log.warning("press EN (reset) on the board to start MicroPython")
        else:
            reset_chip(esp, "hard-reset")
    except FatalError as e:
        raise EdgefleetError(f"esptool failed: {e}") from None
    finally:
        elog.close()
        if esp is not None:
            try:
                esp._port.close()
            except Exception:  # closing a port that died is not the user's problem
                pass
    return found
