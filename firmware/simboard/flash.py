# Simulated NOR flash chip backed by a file the size of the board's flash.
#
# It behaves like the ESP32's SPI flash as far as the node can tell: erase sets a 4 KB block to 0xFF,
# programming can only clear bits (writing a 1 over a 0 raises, which would silently corrupt a real chip),
# and every programmed byte and erased block is counted so benchmarks can measure write amplification.
# lose_power_after(n) makes the chip stop after n more programmed bytes, part way through a write, for
# power-cut tests. SimFlash.partition() gives block devices with the same interface as esp32.Partition
# (readblocks/writeblocks with offset, ioctl with erase), so littlefs (vfs.VfsLfs2) mounts on them.
import micropython
from micropython import const

BLOCK = const(4096)
_IOCTL_BLOCK_COUNT = const(4)
_IOCTL_BLOCK_SIZE = const(5)
_IOCTL_BLOCK_ERASE = const(6)


class PowerCut(Exception):
    pass


class NorViolation(OSError):
    pass


@micropython.viper
def _first_bad_bit(old: ptr8, new: ptr8, n: int) -> int:
    # Index of the first byte where `new` sets a bit that `old` has cleared, or -1.
    i = 0
    while i < n:
        if (old[i] & new[i]) != new[i]:
            return i
        i += 1
    return -1


class SimFlash:
    def __init__(self, path, size, block_size=BLOCK):
        if size % block_size:
            raise ValueError("flash size must be a multiple of the block size")
        self.size = size
        self.block_size = block_size
        try:
            self.f = open(path, "r+b")
            self.f.seek(0, 2)
            have = self.f.tell()
        except OSError:
            self.f = open(path, "w+b")
            have = 0
        self._ff = b"\xff" * block_size
        if have < size:
            self.f.seek(have)
            while have < size:
                n = min(block_size, size - have)
                self.f.write(self._ff[:n])
                have += n
        self._scratch = bytearray(block_size)
        self.programmed = 0
        self.erased = 0
        self.power_budget = -1  # bytes that may still be programmed; -1 = unlimited
        self.dead = False

    def close(self):
        self.f.close()

    def lose_power_after(self, nbytes):
        self.power_budget = nbytes

    def stats(self):
        return {"programmed": self.programmed, "erased": self.erased}

    def _check_power(self):
        if self.dead:
            raise PowerCut("flash has no power")

    def read(self, offset, buf):
        self._check_power()
        if offset < 0 or offset + len(buf) > self.size:
            raise ValueError("read outside flash")
        self.f.seek(offset)
        self.f.readinto(buf)

    def program(self, offset, data):
        # NOR program: data may only clear bits. Splits at block boundaries to reuse one scratch buffer.
        self._check_power()
        n = len(data)
        if offset < 0 or offset + n > self.size:
            raise ValueError("program outside flash")
        mv = memoryview(data)
        done = 0
        while done < n:
            chunk = min(n - done, self.block_size - (offset + done) % self.block_size)
            self._program_chunk(offset + done, mv[done:done + chunk])
            done += chunk

    def _program_chunk(self, offset, mv):
        n = len(mv)
        old = memoryview(self._scratch)[:n]
        self.f.seek(offset)
        self.f.readinto(old)
        bad = _first_bad_bit(old, mv, n)
        if bad >= 0:
            raise NorViolation("program over unerased byte at 0x%x" % (offset + bad))
        if self.power_budget >= 0 and n > self.power_budget:
            n = self.power_budget
            self.f.seek(offset)
            self.f.write(mv[:n])
            self.programmed += n
            self.power_budget = 0
            self.dead = True
            raise PowerCut("power lost after programming %d of %d bytes at 0x%x" % (n, len(mv), offset))
        self.f.seek(offset)
        self.f.write(mv)
        self.programmed += n
        if self.power_budget >= 0:
            self.power_budget -= n

    def erase_block(self, block):
        self._check_power()
        if block < 0 or (block + 1) * self.block_size > self.size:
            raise ValueError("erase outside flash")
        self.f.seek(block * self.block_size)
        self.f.write(self._ff)
        self.erased += 1

    def partition(self, offset, size):
        return SimPartition(self, offset, size)


class SimPartition:
    # A region of the flash as a block device, the interface esp32.Partition has.
    def __init__(self, flash, offset, size):
        if offset % flash.block_size or size % flash.block_size or offset + size > flash.size:
            raise ValueError("partition not block aligned or outside flash")
        self.flash = flash
        self.offset = offset
        self.size = size
        self.first = offset // flash.block_size
        self.nblocks = size // flash.block_size

    def readblocks(self, block, buf, off=0):
        self.flash.read(self.offset + block * self.flash.block_size + off, buf)

    def writeblocks(self, block, buf, off=None):
        if off is None:
            # Simple interface: whole blocks, erase implied.
            for i in range((len(buf) + self.flash.block_size - 1) // self.flash.block_size):
                self.flash.erase_block(self.first + block + i)
            off = 0
        self.flash.program(self.offset + block * self.flash.block_size + off, buf)

    def ioctl(self, op, arg):
        if op == _IOCTL_BLOCK_COUNT:
            return self.nblocks
        if op == _IOCTL_BLOCK_SIZE:
            return self.flash.block_size
        if op == _IOCTL_BLOCK_ERASE:
            if arg < 0 or arg >= self.nblocks:
                raise ValueError("erase outside partition")
            self.flash.erase_block(self.first + arg)
            return 0
        return 0


def open_board_flash(board, image_path):
    # The whole flash chip of a sim board, backed by image_path (created erased if missing).
    from node.board import to_int

    f = board["flash"]
    return SimFlash(image_path, to_int(f["size"]), f["block_size"])


def mount_vfs(flash, board, mountpoint="/flash"):
    # Mount the board's "vfs" partition as littlefs2 at mountpoint, formatting a blank or unreadable one,
    # and make it the working directory so node code uses relative paths, as on the ESP32 (root = flash).
    import os
    import vfs

    from node.board import partition

    off, size = partition(board, "vfs")
    bdev = flash.partition(off, size)
    try:
        fs = vfs.VfsLfs2(bdev)
        vfs.mount(fs, mountpoint)
    except OSError:
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
        vfs.mount(fs, mountpoint)
    os.chdir(mountpoint)
    return bdev
