"""A virtual MicroPython board on a pseudo-terminal, for the stock mpremote, ampy and `edgefleet deploy`.

The lowest level we can fake is the serial line, so that is what this is: a pty that speaks MicroPython's
friendly REPL, raw REPL and raw-paste mode byte for byte as mpremote's transport_serial.py expects them,
backed by a MicroPython unix-port process (vboard/agent.py) whose filesystem is the sim board's flash image
(littlefs on the board's `vfs` partition, mounted at `/`). The protocol state machine lives here, in CPython,
because two things a board does cannot be done from inside one interpreter: Ctrl-C while code runs (we send
SIGINT, which the unix port turns into KeyboardInterrupt) and a soft reset (we restart the process, which
then runs boot.py and main.py from the flash, as a board does).
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import signal
import struct
import subprocess
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

from ... import procs
from ...errors import EdgefleetError
from ...runtime import find_micropython, micropython_env, unix_heap_bytes
from ..boards import Board

log = logging.getLogger(__name__)

AGENT = Path(__file__).with_name("agent.py")
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
SOFT_REBOOT = b"MPY: soft reboot\r\n"
PASTE_WINDOW = 128  # raw-paste flow-control window, bytes (an ESP32 advertises a similar small window)
MAX_PENDING_OUTPUT = 1 << 20  # console output kept while nobody reads the pty; more is dropped, as on a UART
CTL = b"\x00EFV "
AGENT_HEAP = 64 * 1024  # extra heap for the agent, the board JSON and the sim flash buffers (~31 KB measured)
BOOT_HEAP = 2048  # what a bare unix port with the board's heap has allocated at its first prompt


class VirtualBoard:
    """One virtual board: `open()` gives the pty path, `serve_forever()` runs it until `stop()`."""

    def __init__(self, board: Board, flash_path: Path | str, heap_bytes: int | None = None) -> None:
        self.board = board
        self.flash_path = Path(flash_path)
        # the unix port's heap for this board (scaled on a 64-bit interpreter, see runtime.unix_heap_bytes)
        self.heap_bytes = heap_bytes or unix_heap_bytes(board.heap_bytes, source=True)  # a REPL compiles source
        self.banner = (
            f"MicroPython v1.29.0 on virtual board {board.name}; {board.chip} with unix\r\n"
            'Type "help()" for more information.\r\n'
        ).encode()
        self.master = self.slave = -1
        self.path = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.sel = selectors.DefaultSelector()
        self.mode = "friendly"  # friendly | raw | paste (raw-paste) | fpaste (friendly paste mode)
        self.busy = True  # the agent is executing (or starting); input waits, except Ctrl-C
        self.running = False  # the agent is in user code (between RUN and DONE): Ctrl-C becomes SIGINT
        self.interrupt_pending = False
        self.steps: collections.deque[Callable[[], None]] = collections.deque()
        self.input = bytearray()
        self.line = bytearray()
        self.block: list[str] = []
        self.paste = bytearray()
        self.paste_count = 0
        self.esc = 0
        self.cook = True
        self.out = bytearray()
        self.ctl_buf = bytearray()
        self.boots = 0
        self.ready_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()

    # --- lifecycle -------------------------------------------------------------------------------------

    def open(self) -> str:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # a UART has no line discipline: no echo, no \n -> \r\n
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.sel.register(self.master, selectors.EVENT_READ, "pty")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._boot(power_on=True)
        log.info("virtual board %s on %s (flash %s, heap %d bytes)", self.board.name, self.path, self.flash_path,
                 self.heap_bytes)  # fmt: skip
        return self.path

    def start(self) -> str:
        """open() and serve in a background thread (for tests and fixtures)."""
        path = self.open()
        self._thread = threading.Thread(target=self.serve_forever, name=f"vboard-{self.path}", daemon=True)
        self._thread.start()
        return path

    def stop(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread:
            self._thread.join(10)
        self._kill_agent()
        for fd in (self.master, self.slave, self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master = self.slave = -1

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
            self.sel.modify(self.master, want, "pty")
            for key, events in self.sel.select(timeout=1.0):
                if key.data == "pty":
                    if events & selectors.EVENT_WRITE:
                        self._flush_out()
                    if events & selectors.EVENT_READ:
                        self._read_pty()
                elif key.data == "stdout":
                    self._read_agent_stdout()
                elif key.data == "stderr":
                    self._read_agent_stderr()
                elif key.data == "wake":
                    os.read(self._wake_r, 64)

    # --- the interpreter process -----------------------------------------------------------------------

    def _start_agent(self) -> None:
        # heap: the board's, plus room for the agent's own machinery, which a ballast then fills (agent.py)
        argv = [find_micropython(), "-X", f"heapsize={self.heap_bytes + AGENT_HEAP}", str(AGENT),
                str(self.board.path), str(self.flash_path), str(self.heap_bytes - BOOT_HEAP)]  # fmt: skip
        self.proc = procs.spawn(  # own process group, dies with us (procs)
            argv,
            name="virtual board interpreter",
            stop_signal=signal.SIGKILL,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=micropython_env(source=True),
            cwd=str(self.flash_path.parent),
        )
        assert self.proc.stdout and self.proc.stderr
        for f, tag in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr")):
            os.set_blocking(f.fileno(), False)
            self.sel.register(f.fileno(), selectors.EVENT_READ, tag)
        self.ctl_buf.clear()
        self.busy = True
        self.running = False
        self.ready_at = 0.0

    def _kill_agent(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                try:
                    self.sel.unregister(f.fileno())
                except (KeyError, ValueError):
                    pass
        procs.kill(proc)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()

    def _boot(self, power_on: bool = False) -> None:
        """Restart the interpreter: boot.py always, main.py only in the friendly REPL (as pyexec does)."""
        self._kill_agent()
        self.boots += 1
        if power_on:
            self.mode = "friendly"
        else:
            self._console(SOFT_REBOOT)
        self.line.clear()
        self.block.clear()
        self.steps.clear()
        self.cook = self.mode == "friendly"
        self.steps.append(lambda: self._run_file("boot.py"))
        if self.mode == "friendly":
            self.steps.append(lambda: self._run_file("main.py"))
            self.steps.append(lambda: self._console(self.banner + b">>> "))
        else:
            self.steps.append(lambda: self._console(RAW_BANNER + b">"))
        self._start_agent()

    def _send(self, kind: str, code: bytes = b"", arg: str = "") -> None:
        assert self.proc and self.proc.stdin
        header = f"{kind} {arg or len(code)}\n".encode()
        self.busy = True
        try:
            self.proc.stdin.write(header + code)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            log.warning("virtual board interpreter is gone; rebooting")
            self._boot(power_on=True)

    def _run_file(self, name: str) -> None:
        if self.interrupt_pending:  # Ctrl-C arrived during start-up: interrupt the script before it runs
            return
        self._send("F", arg=name)

    def _read_agent_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        try:
            data = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            self._agent_ended()
            return
        self._console(data.replace(b"\n", b"\r\n") if self.cook else data)

    def _drain_agent_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        while True:
            try:
                data = os.read(self.proc.stdout.fileno(), 65536)
            except BlockingIOError:
                return
            if not data:
                return
            self._console(data.replace(b"\n", b"\r\n") if self.cook else data)

    def _read_agent_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        try:
            data = os.read(self.proc.stderr.fileno(), 65536)
        except BlockingIOError:
            return
        if not data:
            self._agent_ended()
            return
        self.ctl_buf += data
        while b"\n" in self.ctl_buf:
            line, _, rest = bytes(self.ctl_buf).partition(b"\n")
            self.ctl_buf[:] = rest
            if line.startswith(CTL):
                self._control(line[len(CTL) :].decode())
                if self.proc is None or not self.ctl_buf:
                    return
            else:
                self._console(line + b"\r\n")

    def _agent_ended(self) -> None:
        if self.proc is None:
            return
        proc = self.proc
        try:
            code = proc.wait(2)
        except subprocess.TimeoutExpired:
            code = -1
        self._drain_agent_stdout()
        assert proc.stderr
        os.set_blocking(proc.stderr.fileno(), True)
        self.ctl_buf += proc.stderr.read() or b""
        for line in bytes(self.ctl_buf).split(b"\n"):
            if line.startswith(CTL + b"RESET"):
                self.ctl_buf.clear()
                self._control(line[len(CTL) :].decode())
                return
        if not self.ready_at:
            self._kill_agent()
            self._stop.set()
            log.error("virtual board interpreter failed to start (exit code %s)", code)
            return
        log.warning("virtual board interpreter exited (code %s): rebooting like a board after a crash", code)
        self._boot(power_on=True)

    def _control(self, word: str) -> None:
        if word == "READY":
            self.ready_at = time.monotonic()
            self._next_step()
        elif word == "RUN":
            self.running = True
            if self.interrupt_pending:  # Ctrl-C came while the code was being read or compiled
                self.interrupt_pending = False
                self._interrupt()
        elif word == "DONE":
            self.running = False
            self._drain_agent_stdout()
            self._next_step()
        elif word.startswith("RESET"):
            self.running = False
            self._drain_agent_stdout()
            hard = word.endswith("hard")
            if hard:
                log.info("machine.reset(): power-cycling the virtual board")
            self._boot(power_on=hard)

    def _next_step(self) -> None:
        self.busy = False
        while self.steps and not self.busy:
            self.steps.popleft()()
        if not self.busy:
            self.interrupt_pending = False
            self.cook = self.mode in ("friendly", "fpaste")
            self._process_input()

    # --- the console (pty) ---------------------------------------------------------------------------

    def _console(self, data: bytes) -> None:
        log.debug("out %r", data[:200])
        self.out += data
        if len(self.out) > MAX_PENDING_OUTPUT:
            del self.out[: len(self.out) - MAX_PENDING_OUTPUT]
        self._flush_out()

    def _flush_out(self) -> None:
        while self.out:
            try:
                n = os.write(self.master, self.out)
            except (BlockingIOError, OSError):
                return
            del self.out[:n]

    def _read_pty(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return
        log.debug("in %r (mode %s, busy %s)", data[:200], self.mode, self.busy)
        for b in data:
            if b == 0x03 and self.busy:
                self._interrupt()
            else:
                self.input.append(b)
        self._process_input()

    def _interrupt(self) -> None:
        if self.proc and self.running:
            self.proc.send_signal(signal.SIGINT)
        else:
            self.interrupt_pending = True

    def _process_input(self) -> None:
        while self.input and not self.busy and self.proc is not None:
            b = self.input.pop(0)
            {"friendly": self._friendly_char, "raw": self._raw_char, "paste": self._paste_char,
             "fpaste": self._fpaste_char}[self.mode](b)  # fmt: skip

    # friendly REPL: line editing with echo, continuation lines, Ctrl-A/B/C/D/E
    def _friendly_char(self, b: int) -> None:
        if self.esc:  # swallow ANSI escape sequences (arrow keys): ESC [ X
            self.esc = self.esc + 1 if (self.esc == 1 and b == 0x5B) else 0
            return
        if b == 0x01:
            self.mode, self.cook = "raw", False
            self.line.clear()
            self._console(b"\r\n" + RAW_BANNER + b">")
        elif b == 0x02:
            self._console(b"\r\n" + self.banner + b">>> ")
        elif b == 0x03:
            self.line.clear()
            self.block.clear()
            self._console(b"\r\n>>> ")
        elif b == 0x04:
            if not self.line and not self.block:
                self._console(b"\r\n")
                self._boot()
        elif b == 0x05:
            self.mode = "fpaste"
            self.paste.clear()
            self._console(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
        elif b == 0x0D:
            self._console(b"\r\n")
            self._friendly_line(self.line.decode(errors="replace"))
            self.line.clear()
        elif b in (0x08, 0x7F):
            if self.line:
                self.line.pop()
                self._console(b"\b \b")
        elif b == 0x1B:
            self.esc = 1
        elif b >= 0x20 or b == 0x09:
            self.line.append(b)
            self._console(bytes([b]))

    def _friendly_line(self, line: str) -> None:
        if self.block:
            if line.strip():
                self.block.append(line)
                self._console(b"... ")
                return
            code, self.block = "\n".join(self.block) + "\n", []
            self._exec_friendly("S", code)
        elif not line.strip():
            self._console(b">>> ")
        elif line.rstrip().endswith((":", "\\")):
            self.block = [line]
            self._console(b"... ")
        else:
            self._exec_friendly("S", line + "\n")

    def _exec_friendly(self, kind: str, code: str) -> None:
        self.steps.append(lambda: self._console(b">>> "))
        self.cook = True
        self._send(kind, code.encode())

    def _fpaste_char(self, b: int) -> None:
        if b == 0x03:
            self.mode = "friendly"
            self._console(b"\r\n>>> ")
        elif b == 0x04:
            self.mode = "friendly"
            self._console(b"\r\n")
            self._exec_friendly("P", self.paste.decode(errors="replace"))
        elif b == 0x0D:
            self.paste += b"\n"
            self._console(b"\r\n=== ")
        elif b != 0x0A:
            self.paste.append(b)
            self._console(bytes([b]))

    # raw REPL: no echo; Ctrl-D executes ("OK", output, \x04, error, \x04, ">"), Ctrl-D alone soft-resets
    def _raw_char(self, b: int) -> None:
        if b == 0x01:
            if self.line == b"\x05A":
                self.mode = "paste"
                self.paste.clear()
                self.paste_count = 0
                self._console(b"R\x01" + struct.pack("<H", PASTE_WINDOW))
            else:
                self.line.clear()
                self._console(RAW_BANNER + b">")
        elif b == 0x02:
            self.mode, self.cook = "friendly", True
            self.line.clear()
            self._console(b"\r\n" + self.banner + b">>> ")
        elif b == 0x03:
            self.line.clear()
        elif b == 0x04:
            if not self.line:
                self._console(b"OK\r\n")
                self._boot()
            else:
                code = bytes(self.line)
                self.line.clear()
                self._console(b"OK")
                self._exec_raw(code)
        else:
            self.line.append(b)

    def _exec_raw(self, code: bytes) -> None:
        self.steps.append(lambda: self._console(b">"))
        self.cook = False
        self._send("R", code)

    def _paste_char(self, b: int) -> None:
        if b == 0x04:
            self.mode = "raw"
            self._console(b"\x04")
            self._exec_raw(bytes(self.paste))
            return
        self.paste.append(b)
        self.paste_count += 1
        if self.paste_count == PASTE_WINDOW:  # the window is consumed: the host may send the next one
            self.paste_count = 0
            self._console(b"\x01")


def run_virtual_board(board: Board, flash_path: Path, heap_bytes: int | None = None) -> None:
    """`edgefleet board virtual`: print the pty path, serve until Ctrl-C."""
    vb = VirtualBoard(board, flash_path, heap_bytes)
    path = vb.open()
    print(f"virtual board {board.name} on {path}  (flash image {flash_path}; Ctrl-C to stop)", flush=True)
    print(f"  try: mpremote connect {path} fs ls", flush=True)
    try:
        vb.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        vb.stop()
    if vb.boots and not vb.ready_at and vb._stop.is_set():
        raise EdgefleetError("the virtual board's MicroPython process failed to start", hint="run with -vv")
