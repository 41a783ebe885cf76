"""The console's commands: `edgefleet serve` (with `serve user ...`), `edgefleet alerts`, `edgefleet homeassistant`.
What each command does once its arguments are parsed (cli/console.py parses them); the work is in
app/server/users/alerts/homeassistant."""

from __future__ import annotations

import getpass
import logging
import signal
import sys
import threading
from pathlib import Path

from ..errors import EdgefleetError

log = logging.getLogger(__name__)

DEFAULT_USERS = "console-users.json"


def _read_password(name: str) -> str:
    """From the terminal (asked twice) or, when stdin is not a terminal, its first line: never from argv."""
    if sys.stdin.isatty():
        pw = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != pw:
            raise EdgefleetError("the passwords differ")
        return pw
    return sys.stdin.readline().rstrip("\n")


def manage_users(action: str, users_file: str, name: str | None = None, role: str = "viewer",
                 replace: bool = False) -> int:  # fmt: skip
    """`edgefleet serve user add|remove|list` on the users file."""
    from .users import UserStore

    path = Path(users_file)
    store = UserStore(path)
    if action == "add":
        store.add(name, role, _read_password(name), replace=replace)
        print(f"user {name} ({role}) saved in {path}")
    elif action == "remove":
        store.remove(name)
        print(f"user {name} removed")
    else:
        for name, role in sorted(store.names().items()):
            print(f"{name}\t{role}")
    return 0


def serve(*, db: str, users: str, host: str, port: int, broker: str | None, prefix: str, cert: str | None,
          key: str | None, alerts: str | None) -> int:  # fmt: skip
    """`edgefleet serve`: the console's web server until stopped."""
    from .server import ConsoleServer

    srv = ConsoleServer(
        db, Path(users), host=host, port=port, broker=broker, prefix=prefix,
        cert=cert, key=key, alerts=Path(alerts) if alerts else None,
    )  # fmt: skip
    return srv.run()


def run_alerts(db: str, rules: str) -> int:
    """`edgefleet alerts`: evaluate the rules file on the database until SIGINT or SIGTERM."""
    from .alerts import AlertEngine, load_rules

    engine = AlertEngine(db, load_rules(rules))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    engine.start()
    log.info("evaluating %d alert rules every %.1f s", len(engine.rules.rules), engine.rules.interval_s)
    while not stop.wait(0.5):
        pass
    engine.stop()
    return 0


def homeassistant(*, broker: str, prefix: str, discovery_prefix: str, state_prefix: str,
                  remove: list[str] | None = None) -> int:  # fmt: skip
    """`edgefleet homeassistant`: announce the fleet to Home Assistant until stopped, or remove devices and exit."""
    from .homeassistant import HomeAssistantBridge

    bridge = HomeAssistantBridge(broker, prefix, discovery_prefix, state_prefix).start()
    try:
        if remove:
            for dev in remove:
                topics = bridge.remove(dev)
                print(f"{dev}: removed {len(topics)} Home Assistant entities")
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        log.info("announcing the fleet under %s/ (Ctrl-C stops)", discovery_prefix)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        bridge.stop()
