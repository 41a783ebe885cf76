# The simulated flash must behave like NOR flash, or firmware tested on it could corrupt a real chip.
import os

import vfs

from node import board as boardmod
from simboard.flash import NorViolation, PowerCut, SimFlash, mount_vfs, open_board_flash

BS = 4096


def test_program_only_clears_bits(flash_image):
    f = SimFlash(flash_image, 8 * BS)
    buf = bytearray(4)
    f.read(0, buf)
    assert bytes(buf) == b"\xff\xff\xff\xff", buf
    f.program(0, b"\x0f\xf0\xaa\x55")
    f.program(0, b"\x0f\x00\x00\x00")  # only clears bits: allowed
    f.read(0, buf)
    assert bytes(buf) == b"\x0f\x00\x00\x00", buf
    try:
        f.program(1, b"\x01")  # sets a bit that is 0
    except NorViolation:
        pass
    else:
        raise AssertionError("programming a 1 over a 0 must raise")
    f.erase_block(0)
    f.read(0, buf)
    assert bytes(buf) == b"\xff\xff\xff\xff"
    assert f.stats() == {"programmed": 8, "erased": 1}, f.stats()


def test_power_cut_stops_part_way(flash_image):
    f = SimFlash(flash_image, 8 * BS)
    f.lose_power_after(10)
    f.program(0, b"\x00" * 6)
    try:
        f.program(100, b"\x00" * 8)
    except PowerCut:
        pass
    else:
        raise AssertionError("expected a power cut")
    try:
        f.program(200, b"\x00")
    except PowerCut:
        pass
    else:
        raise AssertionError("a dead chip must stay dead")
    f.close()
    g = SimFlash(flash_image, 8 * BS)  # "reboot": the image kept what was written before the cut
    buf = bytearray(8)
    g.read(100, buf)
    assert bytes(buf) == b"\x00\x00\x00\x00\xff\xff\xff\xff", buf


def test_littlefs_on_vfs_partition_counts_wear(flash_image, sim_board):
    b = boardmod.load(sim_board)
    fl = open_board_flash(b, flash_image)
    mount_vfs(fl, b, "/flash")
    with open("data.txt", "w") as f:
        f.write("hello")
    assert fl.programmed > 0 and fl.erased > 0
    vfs.umount("/flash")
    os.chdir("/")
    fl.close()
    fl2 = open_board_flash(b, flash_image)
    mount_vfs(fl2, b, "/flash")
    with open("data.txt") as f:
        assert f.read() == "hello"
    vfs.umount("/flash")
