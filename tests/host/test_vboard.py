"""The virtual board against the stock mpremote (a real subprocess on the pty), as a user would drive it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import serial

from edgefleet.board.boards import load_board
from edgefleet.board.vboard.board import VirtualBoard
from edgefleet.runtime import find_micropython, micropython_env


def mpremote(vb: VirtualBoard, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "mpremote", "connect", vb.path, *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def flash_listing(board_path: Path, image: Path, tmp_path: Path) -> str:
    """List the littlefs on the image from a separate MicroPython process: proof the files are on the flash."""
    script = tmp_path / "ls.py"
    script.write_text(
        "import os, vfs, node.board, simboard.flash as f\n"
        f"b = node.board.load({str(board_path)!r})\n"
        f"fl = f.open_board_flash(b, {str(image)!r})\n"
        "f.mount_vfs(fl, b, '/mnt')\n"
        "for n in sorted(os.listdir('/mnt')): print(n, os.stat('/mnt/' + n)[6])\n"
    )
    out = subprocess.run([find_micropython(), str(script)], env=micropython_env(source=True), capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_fs_cp_both_ways_cat_ls_rm(vboard, tmp_path):
    blob = bytes(range(256)) * 40  # every byte value, control characters of the REPL protocols included
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    mpremote(vboard, "fs", "cp", str(src), ":blob.bin")
    mpremote(vboard, "fs", "mkdir", ":lib")
    (tmp_path / "hello.txt").write_text("hello from the host\n")
    mpremote(vboard, "fs", "cp", str(tmp_path / "hello.txt"), ":lib/hello.txt")
    ls = mpremote(vboard, "fs", "ls", ":").stdout
    assert "10240 blob.bin" in ls and "lib/" in ls
    assert mpremote(vboard, "fs", "cat", ":lib/hello.txt").stdout == "hello from the host\n"
    back = tmp_path / "back.bin"
    mpremote(vboard, "fs", "cp", ":blob.bin", str(back))
    assert back.read_bytes() == blob
    sha = mpremote(vboard, "fs", "sha256sum", ":blob.bin").stdout
    assert hashlib.sha256(blob).hexdigest() in sha
    assert "blob.bin 10240" in flash_listing(vboard.board.path, vboard.flash_path, tmp_path)
    mpremote(vboard, "fs", "rm", ":blob.bin")
    assert "blob.bin" not in mpremote(vboard, "fs", "ls", ":").stdout
    assert "blob.bin" not in flash_listing(vboard.board.path, vboard.flash_path, tmp_path)
    missing = mpremote(vboard, "fs", "cat", ":nope.txt", check=False)
    assert missing.returncode != 0 and "nope.txt" in missing.stdout + missing.stderr


def test_root_is_the_flash(vboard):
    out = mpremote(vboard, "exec", "import os, vfs; print(os.getcwd(), vfs.mount())").stdout
    assert out.startswith("/ ") and "VfsLfs2" in out and "VfsPosix" not in out


def test_exec_errors_and_run(vboard, tmp_path):
    assert mpremote(vboard, "exec", "print(6 * 7)").stdout.strip() == "42"
    err = mpremote(vboard, "exec", "1 / 0", check=False)
    assert err.returncode == 1 and "ZeroDivisionError" in err.stdout + err.stderr
    script = tmp_path / "script.py"
    # longer than several raw-paste windows, so mpremote must wait for the board's flow-control bytes
    script.write_text("".join(f"x{i} = {i}\n" for i in range(300)) + "print('sum', sum(x for x in range(300)))\n")
    assert mpremote(vboard, "run", str(script)).stdout.strip() == "sum 44850"


def test_heap_is_the_boards(vboard):
    """User code sees about the free heap of the board (boards/sim.json heap_bytes, scaled for a 64-bit
    interpreter by runtime.unix_heap_bytes), not more."""
    heap = vboard.heap_bytes
    free = int(mpremote(vboard, "exec", "import gc; gc.collect(); print(gc.mem_free())").stdout)
    assert heap - 8 * 1024 < free <= heap
    err = mpremote(vboard, "exec", f"b = bytearray({heap})", check=False)
    assert "MemoryError" in err.stdout + err.stderr
    ok = mpremote(vboard, "exec", f"b = bytearray({heap * 3 // 4}); print(len(b))").stdout
    assert int(ok) == heap * 3 // 4


def test_soft_reset_and_reset_restart_the_interpreter(vboard, tmp_path):
    mpremote(vboard, "exec", "marker = 1")
    assert mpremote(vboard, "resume", "exec", "print('marker' in globals())").stdout.strip() == "True"
    mpremote(vboard, "soft-reset")
    assert mpremote(vboard, "resume", "exec", "print('marker' in globals())").stdout.strip() == "False"
    boots = vboard.boots
    (tmp_path / "keep.txt").write_text("survives a reset")
    mpremote(vboard, "fs", "cp", str(tmp_path / "keep.txt"), ":keep.txt")
    mpremote(vboard, "reset")
    deadline = time.monotonic() + 10
    while vboard.boots == boots and time.monotonic() < deadline:
        time.sleep(0.05)
    assert vboard.boots > boots
    assert mpremote(vboard, "fs", "cat", ":keep.txt").stdout == "survives a reset"


def test_files_survive_a_power_cycle(tmp_path):
    board = load_board("sim")
    vb = VirtualBoard(board, tmp_path / "flash.img")
    vb.start()
    try:
        (tmp_path / "a.txt").write_text("persisted")
        mpremote(vb, "fs", "cp", str(tmp_path / "a.txt"), ":a.txt")
    finally:
        vb.stop()
    vb2 = VirtualBoard(board, tmp_path / "flash.img")
    vb2.start()
    try:
        assert mpremote(vb2, "fs", "cat", ":a.txt").stdout == "persisted"
    finally:
        vb2.stop()


def test_friendly_repl_over_the_serial_line(vboard):
    with serial.Serial(vboard.path, 115200, timeout=0.1) as s:
        s.write(b"\r\x03")
        time.sleep(0.2)
        s.read(4096)
        s.write(b"6*7\r")
        data = b""
        end = time.monotonic() + 10
        while b"42\r\n>>> " not in data and time.monotonic() < end:
            data += s.read(4096)
        assert b"6*7\r\n42\r\n>>> " in data
        s.write(b"def f():\r    return 'in a block'\r\rf()\r")
        end = time.monotonic() + 10
        while b"'in a block'" not in data and time.monotonic() < end:
            data += s.read(4096)
        assert b"... " in data and b"'in a block'\r\n" in data


def test_raw_partitions_as_on_an_esp32(vboard):
    """esp32.Partition.find gives block devices on the same flash image (the node's raw `log` partition)."""
    code = (
        "import esp32\n"
        "p = esp32.Partition.find(esp32.Partition.TYPE_DATA, label='log')[0]\n"
        "p.ioctl(6, 0)\n"
        "p.writeblocks(0, b'EFLOG123', 0)\n"
        "b = bytearray(8)\n"
        "p.readblocks(0, b, 0)\n"
        "print(bytes(b), p.ioctl(4, 0), p.ioctl(5, 0), p.info()[4])"
    )
    assert mpremote(vboard, "exec", code).stdout.strip() == "b'EFLOG123' 128 4096 log"
    with open(vboard.flash_path, "rb") as f:
        f.seek(vboard.board.partition("log").offset)
        assert f.read(8) == b"EFLOG123"


def test_cli_prints_the_pty_and_runs_until_interrupted(tmp_path):
    import os
    import signal

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "host")}
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "-q", "board", "virtual", "--flash",
                             str(tmp_path / "cli.img")], stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        first = proc.stdout.readline()
        assert first.startswith("virtual board sim on /dev/pts/")
        path = first.split()[4]
        out = subprocess.run([sys.executable, "-m", "mpremote", "connect", path, "exec", "print('via cli')"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.stdout.strip() == "via cli"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == -signal.SIGINT  # stopped by SIGINT: shown as 130 by a shell
    assert (tmp_path / "cli.img").stat().st_size == vboard_size()


def vboard_size() -> int:
    return load_board("sim").flash_size


def test_virtual_board_refuses_a_real_chip(capsys):
    from edgefleet.cli import main

    assert main(["board", "virtual", "--board", "esp32-devkitc"]) == 2
    assert "use --board sim" in capsys.readouterr().err


def test_bad_flash_image_paths(tmp_path, capsys):
    from edgefleet.cli import main

    assert main(["board", "virtual", "--flash", str(tmp_path / "no" / "such" / "flash.img")]) == 2
    assert "no directory" in capsys.readouterr().err
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"\xff" * 1000)
    assert main(["board", "virtual", "--flash", str(odd)]) == 2
    assert "not a 4 MB flash image of sim" in capsys.readouterr().err
    assert odd.read_bytes() == b"\xff" * 1000  # left as it was


def test_friendly_paste_mode(vboard):
    with serial.Serial(vboard.path, 115200, timeout=0.1) as s:
        s.write(b"\r\x03")
        time.sleep(0.2)
        s.read(4096)
        s.write(b"\x05for i in range(3):\r    print('p', i)\r\x04")
        data = b""
        end = time.monotonic() + 10
        while b"p 2\r\n>>> " not in data and time.monotonic() < end:
            data += s.read(4096)
        assert b"paste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== " in data
        assert b"p 0\r\np 1\r\np 2\r\n>>> " in data


def test_virtual_board_flash_that_is_a_directory_is_one_line(tmp_path, capsys) -> None:
    from edgefleet.cli import main

    assert main(["board", "virtual", "--flash", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a regular file" in err and "bytes" not in err, err
