"""MQTT broker URLs (`mqtt://[user@]host[:port]`, `mqtts://...`): the one parser on the host.

Why one: the collector, `edgefleet node`, simulate, deploy and the collector launcher each took a broker URL
apart their own way (urllib, a regex), and they disagreed: deploy's regex refused the IPv6 addresses
(`mqtt://[::1]:1883`) that the node's config accepts, and a rebuilt URL lost the brackets of an IPv6 host.
What a node finally accepts in its config.json is the node's own rule (firmware/node/config.py, which the host
runs through board/nodeconfig); the `node=True` checks here refuse early, with a clear message, what would
never work there. AMQP URLs (several hosts) are parsed by collect/collector_amqp.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from ..errors import EdgefleetError
from ..redact import redact_url

SCHEMES = {"mqtt": 1883, "mqtts": 8883}  # scheme -> default port
HINT = "mqtt://[user@]HOST[:PORT] or mqtts://... (an IPv6 host in brackets: mqtt://[::1]:1883)"


@dataclass
class BrokerURL:
    host: str  # a name or an address; IPv6 without brackets
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    @property
    def hostport(self) -> str:
        """host:port as it is written in a URL (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, username: str | None = None, password: str | None = None) -> str:
        """The URL with the given login (none: without a login). A URL with a password must never be printed:
        redact.redact_url it first."""
        login = ""
        if username:
            login = quote(username, safe="") + (f":{quote(password, safe='')}" if password else "") + "@"
        return f"{self.scheme}://{login}{self.hostport}"


def parse_broker_url(url: str, *, node: bool = False, login: bool = True) -> BrokerURL:
    """`url` taken apart; EdgefleetError naming what is wrong (the password never shown).

    node=True: the URL a node connects to, which has nothing after host:port (no path, query or fragment).
    login=False: no user name or password in the URL (a node deployed to a board gets its login from
    config.json's broker.username and broker.password).
    """
    try:
        u = urlsplit(url)
        hostname = u.hostname
    except ValueError:
        hostname = None
    if not hostname or u.scheme not in SCHEMES:
        raise EdgefleetError(f"bad broker URL {redact_url(url)!r}", hint=HINT)
    try:
        port = u.port or SCHEMES[u.scheme]
    except ValueError as e:
        raise EdgefleetError(f"bad port in broker URL {redact_url(url)!r}: {e}") from None
    if node and (u.path not in ("", "/") or u.query or u.fragment):
        raise EdgefleetError(f"broker URL {redact_url(url)!r} must not have a path or query", hint=HINT)
    if not login and (u.username or u.password):
        raise EdgefleetError(
            f"broker URL {redact_url(url)!r} must not hold a login",
            hint="the node's login goes in its config: broker.username and broker.password",
        )
    return BrokerURL(
        host=hostname,
        port=port,
        tls=u.scheme == "mqtts",
        username=unquote(u.username) if u.username else None,
        password=unquote(u.password) if u.password else None,
    )
