"""A virtual ESP32 ROM bootloader on a pty: the serial protocol esptool speaks with --no-stub.

So `edgefleet flash` (and plain esptool) can be tested end to end without a chip. It implements what the
ESP32's ROM loader does for a flash write, at the byte level esptool sees: SLIP framing (0xC0 frames,
0xDB escapes), command packets `<B dir=0, B op, H len, I checksum> data`, responses `<B dir=1, B op, H len,
I value> data status`, with the ROM's 4 status bytes. Commands: SYNC (answered 8 times, as the ROM does),
READ_REG/WRITE_REG over a register file (the chip-detect magic at 0x40001000, the UART clock divider, and the
SPI peripheral so esptool's SFDP/JEDEC-id reads work), SPI_ATTACH, SPI_SET_PARAMS, CHANGE_BAUDRATE,
FLASH_BEGIN (erases the region), FLASH_DATA (checksum checked), FLASH_END, SPI_FLASH_MD5. Anything else gets
the ROM's "invalid command" status, which is how esptool learns a command needs the stub.
The flash is a file (the same raw image format as the sim board's flash), written in place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import tty
from pathlib import Path

log = logging.getLogger(__name__)

SYNC, FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x08, 0x02, 0x03, 0x04
WRITE_REG, READ_REG, SPI_SET_PARAMS, SPI_ATTACH, CHANGE_BAUDRATE, SPI_FLASH_MD5 = 0x09, 0x0A, 0x0B, 0x0D, 0x0F, 0x13
CHECKSUM_SEED = 0xEF
SECTOR = 0x1000

# ESP32 (the chip esptool identifies by this magic value at CHIP_DETECT_MAGIC_REG_ADDR)
CHIP_MAGIC = {"esp32": 0x00F01D83}
MAGIC_REG = 0x40001000
UART_CLKDIV_REG = 0x3FF40014
SPI_BASE = 0x3FF42000
SPI_CMD, SPI_USR2, SPI_W0 = SPI_BASE + 0x00, SPI_BASE + 0x24, SPI_BASE + 0x80
SPI_CMD_USR = 1 << 18
JEDEC_ID = {0x400000: 0x1640EF, 0x800000: 0x1740EF}  # Winbond W25Q32 / W25Q64
SFDP_SIGNATURE = 0x50444653


def slip_encode(payload: bytes) -> bytes:
    return b"\xc0" + payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class VirtualRom:
    def __init__(self, image: Path | str, flash_size: int = 0x400000, chip: str = "esp32") -> None:
        if chip not in CHIP_MAGIC:
            raise ValueError(f"the virtual ROM emulates {sorted(CHIP_MAGIC)}, not {chip}")
        self.image = Path(image)
        self.flash_size = flash_size
        self.chip = chip
        if not self.image.exists() or self.image.stat().st_size < flash_size:
            with open(self.image, "ab") as f:
                f.write(b"\xff" * (flash_size - f.tell()))
        self.regs: dict[int, int] = {MAGIC_REG: CHIP_MAGIC[chip], UART_CLKDIV_REG: 40_000_000 // 115200}
        self.master = self.slave = -1
        self.path = ""
        self.frame = bytearray()
        self.in_frame = False
        self.escape = False
        self.write_at: tuple[int, int, int] | None = None  # (offset, size, block size) of the FLASH_BEGIN
        self.commands: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._thread = threading.Thread(target=self._serve, name=f"vrom-{self.path}", daemon=True)
        self._thread.start()
        return self.path

    def stop(self) -> None:
        self._stop.set()
        for fd in (self.slave, self.master):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._thread:
            self._thread.join(5)

    def _serve(self) -> None:
        import select

        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self.master], [], [], 0.5)
                if not r:
                    continue
                data = os.read(self.master, 65536)
            except OSError:
                return
            for b in data:
                self._byte(b)

    def _byte(self, b: int) -> None:
        if b == 0xC0:
            if self.in_frame and self.frame:
                self._packet(bytes(self.frame))
            self.frame.clear()
            self.in_frame = True
            self.escape = False
        elif not self.in_frame:
            return  # noise between frames (the ROM ignores it too)
        elif self.escape:
            self.frame.append({0xDC: 0xC0, 0xDD: 0xDB}.get(b, b))
            self.escape = False
        elif b == 0xDB:
            self.escape = True
        else:
            self.frame.append(b)

    def _reply(self, op: int, value: int = 0, data: bytes = b"", status: bytes = b"\x00\x00\x00\x00") -> None:
        body = data + status
        os.write(self.master, slip_encode(struct.pack("<BBHI", 1, op, len(body), value) + body))

    def _packet(self, pkt: bytes) -> None:
        if len(pkt) < 8 or pkt[0] != 0:
            return
        _, op, size, chk = struct.unpack_from("<BBHI", pkt)
        data = pkt[8 : 8 + size]
        self.commands.append(op)
        if op == SYNC:
            for _ in range(8):
                self._reply(op, 0x20120707)
        elif op == READ_REG:
            (addr,) = struct.unpack_from("<I", data)
            self._reply(op, self.regs.get(addr, 0))
        elif op == WRITE_REG:
            addr, value, mask, _delay = struct.unpack_from("<IIII", data)
            self.regs[addr] = (self.regs.get(addr, 0) & ~mask) | (value & mask)
            if addr == SPI_CMD and value & SPI_CMD_USR:
                self._spi_command()
            self._reply(op)
        elif op in (SPI_ATTACH, SPI_SET_PARAMS, CHANGE_BAUDRATE):
            self._reply(op)
        elif op == FLASH_BEGIN:
            erase, _blocks, block, offset = struct.unpack_from("<IIII", data)
            if offset + erase > self.flash_size:
                self._reply(op, status=b"\x01\x06\x00\x00")  # 0x06: flash error (past the chip)
                return
            start, end = offset - offset % SECTOR, -(-(offset + erase) // SECTOR) * SECTOR
            with open(self.image, "r+b") as f:
                f.seek(start)
                f.write(b"\xff" * (end - start))
            self.write_at = (offset, erase, block)
            self._reply(op)
        elif op == FLASH_DATA:
            self._flash_data(op, data, chk)
        elif op == FLASH_END:
            self.write_at = None
            self._reply(op)
        elif op == SPI_FLASH_MD5:
            addr, size = struct.unpack_from("<II", data)
            with open(self.image, "rb") as f:
                f.seek(addr)
                digest = hashlib.md5(f.read(size)).hexdigest().encode()
            self._reply(op, data=digest)
        else:
            log.debug("virtual ROM: unsupported command %#04x", op)
            self._reply(op, status=b"\x01\x05\x00\x00")  # 0x05: invalid command, as the ROM answers

    def _flash_data(self, op: int, data: bytes, chk: int) -> None:
        size, seq = struct.unpack_from("<II", data)
        payload = data[16 : 16 + size]
        calc = CHECKSUM_SEED
        for b in payload:
            calc ^= b
        if self.write_at is None or len(payload) != size or calc != chk:
            self._reply(op, status=b"\x01\x07\x00\x00")  # 0x07: bad data checksum / not begun
            return
        offset, _erase, block = self.write_at
        at = offset + seq * block
        payload = payload[: max(0, self.flash_size - at)]
        with open(self.image, "r+b") as f:
            f.seek(at)
            old = f.read(len(payload))
            f.seek(at)
            f.write(bytes(a & b for a, b in zip(old, payload, strict=True)))  # NOR: programming clears bits only
        self._reply(op)

    def _spi_command(self) -> None:
        opcode = self.regs.get(SPI_USR2, 0) & 0xFFFF
        if opcode == 0x9F:
            self.regs[SPI_W0] = JEDEC_ID.get(self.flash_size, 0x1640EF)
        elif opcode == 0x5A:
            self.regs[SPI_W0] = SFDP_SIGNATURE
        else:
            self.regs[SPI_W0] = 0
        self.regs[SPI_CMD] = 0  # the command is done at once
