# The MicroPython side of the virtual board (runs on the unix port, NOT on CPython).
#
# The host process (edgefleet.board.vboard.board) speaks the REPL protocols on the pty; this process is the board's
# interpreter. It mounts the board's littlefs "vfs" partition from the sim flash image at "/" (the host's
# filesystem is unmounted, as on an ESP32 the flash is all there is), then executes what the host sends on
# stdin: "R <n>\n<code>" (raw REPL: output, \x04, error, \x04), "S <n>\n<code>" (one friendly-REPL input),
# "P <n>\n<code>" (friendly paste mode),
# "F <path>\n" (run boot.py / main.py if present). Console output goes to stdout; control messages to the
# host go to stderr as "\x00EFV <word>\n" (READY, DONE, RESET hard|soft).
import io
import sys

import node.board
import simboard.flash
import vfs

_out = sys.stdout
_err = sys.stderr


def _ctl(word):
    _err.write("\x00EFV " + word + "\n")


_board = node.board.load(sys.argv[1])
_flash = simboard.flash.open_board_flash(_board, sys.argv[2])
vfs.umount("/")
simboard.flash.mount_vfs(_flash, _board, "/")
# The firmware deployed on the flash has its own `node` and `simboard` packages: forget the host copies used to
# mount (the flash chip object made by the host's simboard.flash stays in use).
for _m in [m for m in sys.modules if m.split(".")[0] in ("node", "simboard")]:
    del sys.modules[_m]
sys.path[:] = ["", ".frozen", "/lib"]


class _Reset(BaseException):
    pass


class _Machine:
    # machine as on a board: reset() and soft_reset() restart the board; the rest is the unix port's module.
    def __init__(self, real):
        self._real = real

    def reset(self):
        raise _Reset("hard")

    def soft_reset(self):
        raise _Reset("soft")

    def unique_id(self):
        return b"\x5e\xef\x1e\xe7\x00\x01"

    def __getattr__(self, name):
        return getattr(self._real, name)


class _Partition:
    # esp32.Partition over the sim flash: find(type, subtype, label) -> block devices of the same flash chip.
    TYPE_APP = 0
    TYPE_DATA = 1

    @staticmethod
    def find(type=1, subtype=255, label=None):
        out = []
        for p in _board["flash"]["partitions"]:
            if (p["type"] == "data") == (type == 1) and (label is None or p["name"] == label):
                off, size = node_board_partition(p)
                dev = _flash.partition(off, size)
                dev.info = lambda p=p, off=off, size=size: (type, subtype, off, size, p["name"], False)
                out.append(dev)
        return out


def node_board_partition(p):
    def to_int(v):
        return v if isinstance(v, int) else int(v, 16)

    return to_int(p["offset"]), to_int(p["size"])


class _Esp32:
    Partition = _Partition


import machine as _real_machine  # noqa: E402

sys.modules["machine"] = _Machine(_real_machine)
sys.modules["esp32"] = _Esp32()
sys.modules["_efv_flash"] = _flash  # the raw flash chip, for sim code that wants it directly

_g = {"__name__": "__main__"}

# The process was started with more heap than the board has, because this agent, the board JSON and the
# simulated flash's buffers live in it too (on an ESP32 those are C structures outside the MicroPython heap).
# A ballast takes up the surplus, so user code sees about the free heap a board has after boot.
import gc  # noqa: E402

gc.collect()
_ballast = gc.mem_free() - int(sys.argv[3])
_ballast = bytearray(_ballast) if _ballast > 0 else None
gc.collect()


def _read(n):
    buf = b""
    while len(buf) < n:
        chunk = sys.stdin.buffer.read(n - len(buf))
        if not chunk:
            sys.exit(0)
        buf += chunk
    return buf


def _readline():
    line = sys.stdin.buffer.readline()
    if not line:
        sys.exit(0)
    return line.decode().strip()


def _run(code, mode, markers):
    # Compile and run one input. The reply is built first and written in one call, so a Ctrl-C (SIGINT) that
    # lands after the user's code returned cannot cut the reply in half; the host only sends SIGINT between
    # RUN and DONE.
    reset = None
    err = None
    try:
        c = compile(code, "<stdin>", mode)
        _ctl("RUN")
        exec(c, _g)
    except _Reset as e:
        reset = e.args[0]
    except SystemExit:
        reset = "soft"  # sys.exit() at a board's REPL soft-resets it
    except BaseException as e:  # a board's REPL reports every exception and carries on
        err = e
    text = ""
    if err is not None:
        buf = io.StringIO()
        sys.print_exception(err, buf)
        text = buf.getvalue()
    return ("\x04" + text + "\x04" if markers else text), reset


def _run_file(path):
    try:
        with open(path) as f:
            code = f.read()
    except OSError:
        return "", None
    return _run(code, "exec", False)


# The host sends SIGINT only between our RUN and DONE messages, so a Ctrl-C lands in the user's code or, rarely,
# just after it; the loop then still delivers the reply it owes, and DONE, exactly once.
_owed = None  # (console text, reset) still to be written for the current command
_done_owed = False
_ctl("READY")
while True:
    try:
        if _owed is None and not _done_owed:
            cmd = _readline()
            kind, _, arg = cmd.partition(" ")
            _done_owed = True
            _owed = ("\x04\x04" if kind == "R" else "", None)
            if kind == "F":
                _owed = _run_file(arg)
            else:
                _owed = _run(_read(int(arg)), "single" if kind == "S" else "exec", kind == "R")
        if _owed is not None:
            text, reset = _owed
            _owed = None
            _out.write(text)
            if reset:
                _ctl("RESET " + reset)
                sys.exit(0)
        if _done_owed:
            _done_owed = False
            _ctl("DONE")
    except KeyboardInterrupt:
        pass
