"""Running the console: uvicorn in this process (or in a thread, for tests and the demo), loopback by default."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path

from ..errors import EdgefleetError

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsoleServer:
    """uvicorn serving the console app. `start()` runs it in a daemon thread; `run()` in the foreground."""

    def __init__(
        self,
        db: str,
        users: Path,
        host: str = "127.0.0.1",
        port: int = 8080,
        broker: str | None = None,
        prefix: str = "edgefleet",
        cert: str | None = None,
        key: str | None = None,
        alerts: Path | None = None,
    ) -> None:
        import uvicorn

        from .app import Commander, Console, create_app

        if not is_loopback(host) and not (cert and key):
            raise EdgefleetError(
                f"refusing to serve on {host} without TLS",
                hint="give --cert and --key (the console carries logins), or keep the default 127.0.0.1",
            )
        if not Path(users).is_file():
            raise EdgefleetError(
                f"no users file {users}", hint="add a user first: edgefleet serve user add NAME --role operator"
            )
        self.commander = Commander(broker, prefix) if broker else None
        self.console = Console(db, Path(users), self.commander)
        self.alerts = None
        if alerts:
            from .alerts import AlertEngine, load_rules

            self.alerts = AlertEngine(db, load_rules(alerts))
        app = create_app(self.console, secure_cookie=True)
        self.scheme = "https" if cert else "http"
        self.host, self.port = host, port
        cfg = uvicorn.Config(
            app, host=host, port=port, log_level="warning", ssl_certfile=cert, ssl_keyfile=key, lifespan="off",
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self.server = uvicorn.Server(cfg)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/"

    def start(self, timeout: float = 10) -> ConsoleServer:
        self._thread = threading.Thread(target=self.server.run, name="console", daemon=True)
        self._thread.start()
        if self.alerts:
            self.alerts.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise EdgefleetError(f"the console did not start on {self.host}:{self.port} (port in use?)")
            time.sleep(0.05)
        log.info("console at %s", self.url)
        return self

    def run(self) -> int:
        _check_port(self.host, self.port)
        if self.alerts:
            self.alerts.start()
        log.info("console at %s (Ctrl-C stops)", self.url)
        print(f"edgefleet console: {self.url}", flush=True)
        try:
            self.server.run()
        finally:
            self.close()
        return 0

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread:
            self._thread.join(10)
        self.close()

    def close(self) -> None:
        if self.alerts:
            self.alerts.stop()
            self.alerts = None
        if self.commander:
            self.commander.close()
            self.commander = None
        self.console.db.close()


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        except OSError as e:
            raise EdgefleetError(
                f"cannot listen on {host}:{port}: {e.strerror}", hint="choose another --port"
            ) from None
