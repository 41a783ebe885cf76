"""`edgefleet serve`: the fleet console, a Starlette application served by uvicorn.

Security model (docs/console.md): loopback by default, a non-loopback address only with TLS (--cert/--key);
every page and API needs a login (users file, scrypt hashes); sessions are random server-side tokens in an
HttpOnly, SameSite=Strict, Secure cookie (Chromium and Firefox accept Secure cookies from http://127.0.0.1 and
localhost); every state-changing request carries the session's CSRF token (a form field or the X-CSRF-Token
header) and, when the browser sends one, an Origin equal to ours; no secret ever appears in a URL. Only the
operator role may send commands, over the operator's MQTT identity given in --broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..collect.storage import Storage, open_storage
from ..collect.storage.base import now_ms
from ..errors import EdgefleetError
from ..fleetops import rollout
from ..wire import protocol
from . import data
from .users import User, UserStore

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "edgefleet_session"
SESSION_S = 12 * 3600
LIVE_POLL_S = 0.5
PUBLIC = ("/login", "/static/", "/favicon.ico")


@dataclass
class Session:
    csrf: str
    user: User | None = None
    expires: float = field(default_factory=lambda: time.time() + SESSION_S)


class Database:
    """One connection shared by the request threads under a lock. Each use ends its transaction, so PostgreSQL
    never holds a snapshot open between requests and every poll sees the latest commit."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.store: Storage = open_storage(url)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def use(self) -> Iterator[Storage]:
        with self._lock:
            try:
                yield self.store
            finally:
                self.store.conn.rollback()

    def close(self) -> None:
        with self._lock:
            self.store.close()


class Commander:
    """Sends commands to nodes over MQTT as the operator identity (QoS 1, never retained) and remembers them."""

    def __init__(self, broker: str, prefix: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from ..wire.url import parse_broker_url

        self.prefix = prefix
        self.url = parse_broker_url(broker)
        self.sent: list[dict] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgefleet-console-{secrets.token_hex(4)}")
        if self.url.username:
            c.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            c.tls_set()
        try:
            c.connect(self.url.host, self.url.port, keepalive=30)
        except OSError as e:
            raise EdgefleetError(f"cannot connect to broker {self.url.host}:{self.url.port}: {e}") from None
        c.loop_start()
        self.client = c

    def send(self, device: str, cmd: str, args: dict | None, user: str) -> dict:
        cid = f"c-{secrets.token_hex(6)}"
        try:
            body = protocol.command(cid, cmd, args)
        except protocol.ProtocolError as e:
            raise EdgefleetError(f"bad command: {e.reason}") from None
        info = self.client.publish(protocol.topic(self.prefix, device, "cmd"), protocol.encode(body), qos=1)
        rec = {"id": cid, "device": device, "cmd": cmd, "args": args or {}, "user": user, "sent_ms": now_ms(),
               "published": info.rc == 0}  # fmt: skip
        self.sent.append(rec)
        del self.sent[:-1000]
        log.info("command %s %s to %s by %s (%s)", cid, cmd, device, user, "sent" if info.rc == 0 else "NOT sent")
        return rec

    def for_device(self, device: str) -> list[dict]:
        return [r for r in self.sent if r["device"] == device]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Console:
    """The application state: database, users, sessions, the optional commander."""

    def __init__(self, db_url: str, users: Path, commander: Commander | None = None) -> None:
        self.db = Database(db_url)
        self.users = UserStore(users)
        self.commander = commander
        self.sessions: dict[str, Session] = {}
        self._slock = threading.Lock()

    def new_session(self, user: User | None = None) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        s = Session(csrf=secrets.token_urlsafe(24), user=user)
        with self._slock:
            now = time.time()
            for t in [t for t, v in self.sessions.items() if v.expires < now]:
                del self.sessions[t]
            self.sessions[token] = s
        return token, s

    def session(self, request: Request) -> Session | None:
        token = request.cookies.get(COOKIE)
        s = self.sessions.get(token) if token else None
        if s is None or s.expires < time.time():
            return None
        return s

    def drop(self, request: Request) -> None:
        token = request.cookies.get(COOKIE)
        if token:
            with self._slock:
                self.sessions.pop(token, None)


# ---------------------------------------------------------------- pages


def _page(title: str, s: Session, body: str, script: str, extra_meta: str = "") -> HTMLResponse:
    user = s.user
    assert user is not None
    nav = (
        '<nav><a href="/">Fleet</a> <a href="/rollouts">Rollouts</a> <a href="/deadletters">Dead letters &amp; collector</a>'
        f'<span class="who">{html.escape(user.name)} ({user.role}) '
        f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" '
        f'value="{s.csrf}"><button>Log out</button></form></span></nav>'
    )
    doc = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} - edgefleet</title>'
        f'<meta name="csrf" content="{s.csrf}"><meta name="role" content="{user.role}">{extra_meta}'
        '<link rel="stylesheet" href="/static/console.css"></head><body>'
        f'{nav}<main>{body}</main><script src="/static/chart.js"></script><script src="/static/{script}"></script>'
        "</body></html>"
    )
    return HTMLResponse(doc)


def _login_form(csrf: str, error: str = "") -> str:
    err = f'<p class="error">{html.escape(error)}</p>' if error else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Log in - edgefleet</title>'
        '<link rel="stylesheet" href="/static/console.css"></head><body><main class="login"><h1>edgefleet console</h1>'
        f'{err}<form method="post" action="/login"><input type="hidden" name="csrf" value="{csrf}">'
        '<label>User <input name="user" autocomplete="username" required></label>'
        '<label>Password <input name="password" type="password" autocomplete="current-password" required></label>'
        "<button>Log in</button></form></main></body></html>"
    )


def _set_cookie(resp: Response, token: str, secure: bool) -> None:
    resp.set_cookie(COOKIE, token, max_age=SESSION_S, httponly=True, samesite="strict", secure=secure, path="/")


def _csrf_ok(request: Request, s: Session | None, token: str | None) -> bool:
    if s is None or not token or not hmac.compare_digest(token, s.csrf):
        return False
    origin = request.headers.get("origin")
    return not origin or origin == f"{request.url.scheme}://{request.url.netloc}"


async def login_page(request: Request) -> Response:
    c: Console = request.app.state.console
    s = c.session(request)
    if s and s.user:
        return RedirectResponse("/", 303)
    if s is not None:  # keep the anonymous session: a second tab or a favicon fetch must not void the first form
        return HTMLResponse(_login_form(s.csrf))
    token, s = c.new_session()
    resp = HTMLResponse(_login_form(s.csrf))
    _set_cookie(resp, token, request.app.state.secure_cookie)
    return resp


async def login_post(request: Request) -> Response:
    c: Console = request.app.state.console
    form = await request.form()
    s = c.session(request)
    if not _csrf_ok(request, s, str(form.get("csrf", ""))):
        return HTMLResponse("CSRF check failed: reload the login page", 403)
    name, password = str(form.get("user", "")), str(form.get("password", ""))
    from starlette.concurrency import run_in_threadpool

    user = await run_in_threadpool(c.users.check, name, password)
    if user is None:
        log.warning("failed login for %r from %s", name[:32], request.client.host if request.client else "?")
        token, s = c.new_session()
        resp = HTMLResponse(_login_form(s.csrf, "wrong user name or password"), 401)
        _set_cookie(resp, token, request.app.state.secure_cookie)
        return resp
    c.drop(request)  # a new session id on login: a planted pre-login cookie is worth nothing
    token, s = c.new_session(user)
    log.info("%s logged in (%s)", user.name, user.role)
    resp = RedirectResponse("/", 303)
    _set_cookie(resp, token, request.app.state.secure_cookie)
    return resp


async def logout(request: Request) -> Response:
    c: Console = request.app.state.console
    form = await request.form()
    if not _csrf_ok(request, c.session(request), str(form.get("csrf", ""))):
        return HTMLResponse("CSRF check failed", 403)
    c.drop(request)
    resp = RedirectResponse("/login", 303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


async def fleet_page(request: Request) -> Response:
    body = (
        '<h1>Fleet</h1><div class="bar"><input id="filter" placeholder="filter: device, state, model..." '
        'autofocus> <span id="summary"></span> <span id="live" class="live">connecting</span></div>'
        '<table id="fleet" class="grid"><thead></thead><tbody></tbody></table>'
    )
    return _page("Fleet", request.state.session, body, "fleet.js")


async def device_page(request: Request) -> Response:
    dev = request.path_params["device"]
    d = html.escape(dev)
    body = (
        f'<h1>Device <span id="dev">{d}</span> <span id="state" class="state"></span></h1>'
        '<div class="bar"><label>Range <select id="range"><option value="300000" selected>5 min</option>'
        '<option value="3600000">1 h</option><option value="86400000">1 day</option>'
        '<option value="604800000">7 days</option></select></label> '
        '<label>from <input id="from" type="datetime-local" step="1"></label> '
        '<label>to <input id="to" type="datetime-local" step="1"></label> <button id="apply">Show</button> '
        '<label><input id="follow" type="checkbox" checked> live</label> <span id="live" class="live">connecting'
        '</span> <span id="pts"></span></div><div id="charts"></div>'
        '<div class="cols"><section><h2>Last status</h2><table id="status" class="kv"></table></section>'
        '<section><h2>Commands</h2><form id="cmdform" hidden><select id="cmd"><option>ping</option><option>flush'
        '</option><option>reboot</option><option>set_config</option></select> <input id="args" '
        'placeholder=\'args JSON, e.g. {"status_interval_s": 30}\'> <button>Send</button> <span id="cmdmsg"></span>'
        '</form><table id="cmds" class="grid"><thead><tr><th>sent</th><th>id</th><th>command</th><th>by</th>'
        "<th>ack</th></tr></thead><tbody></tbody></table></section></div>"
        '<section><h2>Events</h2><table id="events" class="grid"><thead><tr><th>time</th><th>seq</th><th>kind</th>'
        "<th>label</th><th>score</th><th>sensor / action</th></tr></thead><tbody></tbody></table></section>"
    )
    return _page(f"Device {dev}", request.state.session, body, "device.js", f'<meta name="device" content="{d}">')


async def rollouts_page(request: Request) -> Response:
    body = (
        '<h1>Rollouts</h1><p class="note">Started with <code>edgefleet rollout start</code>; operators may pause or '
        "abort one here (a running <code>rollout start</code> stops at its next step).</p>"
        '<table id="rollouts" class="grid"><thead><tr><th>rollout</th><th>artifact</th><th>target</th>'
        "<th>state</th><th>stage</th><th>stages: confirmed / failed / rolled back of devices</th><th>last gate</th>"
        "<th>updated</th><th></th></tr></thead><tbody></tbody></table>"
    )
    return _page("Rollouts", request.state.session, body, "rollouts.js")


async def deadletters_page(request: Request) -> Response:
    body = (
        '<h1>Collector health</h1><table id="health" class="kv"></table><h1>Dead letters</h1>'
        '<table id="dead" class="grid"><thead><tr><th>received</th><th>topic</th><th>reason</th><th>bytes</th>'
        "<th>payload (start)</th></tr></thead><tbody></tbody></table>"
    )
    return _page("Dead letters", request.state.session, body, "deadletters.js")


# ---------------------------------------------------------------- JSON API


def _db(request: Request) -> Database:
    return request.app.state.console.db


async def _in_thread(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _fleet_json(db: Database) -> dict:
    with db.use() as store:
        rows = data.fleet_rows(store)
    return {"devices": rows, "now_ms": now_ms()}


async def api_fleet(request: Request) -> Response:
    return JSONResponse(await _in_thread(_fleet_json, _db(request)))


def _int_arg(request: Request, name: str, default: int) -> int:
    v = request.query_params.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise EdgefleetError(f"{name} must be an integer") from None


def _device_json(db: Database, commander: Commander | None, dev: str, since: int, until: int, points: int) -> dict:
    with db.use() as store:
        row = data.device_row(store, dev)
        if row is None:
            return {}
        ser = data.series(store, dev, since, until, points)
        evs = data.events(store, dev, since, until)
        ev_log, last_event = data.event_log(store, dev)
        acks = data.acks(store, dev)
        history = data.status_history(store, dev, 20)
    return {
        "device": row,
        "series": ser.as_dict(),
        "events": evs,
        "last_event_seq": last_event,
        "event_log": ev_log,
        "last_reading_seq": ser.last_seq,
        "reading_log": ser.log,
        "acks": acks,
        "commands": commander.for_device(dev) if commander else [],
        "status_history": history,
        "can_command": commander is not None,
    }


async def api_device(request: Request) -> Response:
    dev = request.path_params["device"]
    try:
        until = _int_arg(request, "to", now_ms() + 60_000)
        since = _int_arg(request, "from", until - 3_600_000)
        points = _int_arg(request, "points", 1500)
    except EdgefleetError as e:
        return JSONResponse({"error": str(e)}, 400)
    c: Console = request.app.state.console
    out = await _in_thread(_device_json, c.db, c.commander, dev, since, until, points)
    if not out:
        return JSONResponse({"error": f"no device {dev}"}, 404)
    return JSONResponse(out)


def _dead_json(db: Database) -> dict:
    with db.use() as store:
        return {"dead_letters": data.dead_letters(store), "health": data.health(store), "now_ms": now_ms()}


async def api_deadletters(request: Request) -> Response:
    return JSONResponse(await _in_thread(_dead_json, _db(request)))


def _operator_refusal(request: Request, s: Session, what: str) -> Response | None:
    """The answer to a state-changing API request that may not go on (no CSRF token, or not an operator)."""
    if not _csrf_ok(request, s, request.headers.get("x-csrf-token")):
        return JSONResponse({"error": "CSRF check failed"}, 403)
    if s.user is None or not s.user.can_command:
        return JSONResponse({"error": f"only operators may {what}"}, 403)
    return None


def _rollouts_json(db: Database) -> dict:
    with db.use() as store:
        return {"rollouts": data.rollouts(store), "now_ms": now_ms()}


async def api_rollouts(request: Request) -> Response:
    return JSONResponse(await _in_thread(_rollouts_json, _db(request)))


def _mark_rollout(db: Database, rid: str, new: str) -> str:
    with db.use() as store:
        return rollout.mark_in(rollout.RolloutStore(store), rid, new)


async def api_rollout_action(request: Request) -> Response:
    """POST /api/rollouts/{rid}/pause|abort: operators only, with the CSRF token."""
    s: Session = request.state.session
    refused = _operator_refusal(request, s, "pause or abort rollouts")
    if refused is not None:
        return refused
    action = request.path_params["action"]
    new = {"pause": rollout.PAUSED, "abort": rollout.ABORTED}.get(action)
    if new is None:
        return JSONResponse({"error": f"unknown action {action!r}: pause or abort"}, 404)
    try:
        state = await _in_thread(_mark_rollout, _db(request), request.path_params["rid"], new)
    except EdgefleetError as e:
        return JSONResponse({"error": str(e)}, 409)
    log.info("console: %s %s rollout %s", s.user.name, action, request.path_params["rid"])
    return JSONResponse({"state": state})


async def api_command(request: Request) -> Response:
    c: Console = request.app.state.console
    s: Session = request.state.session
    refused = _operator_refusal(request, s, "send commands")
    if refused is not None:
        return refused
    if c.commander is None:
        return JSONResponse({"error": "no broker: start serve with --broker (the operator's login)"}, 409)
    try:
        body = await request.json()
        cmd, args = body.get("cmd"), body.get("args")
        if args is not None and not isinstance(args, dict):
            raise EdgefleetError("args must be a JSON object")
        rec = c.commander.send(request.path_params["device"], str(cmd), args, s.user.name)
    except (ValueError, AttributeError):
        return JSONResponse({"error": "body must be JSON {cmd, args}"}, 400)
    except EdgefleetError as e:
        return JSONResponse({"error": str(e)}, 400)
    return JSONResponse(rec)


# ---------------------------------------------------------------- live updates (server-sent events)


def _sse(event: str, obj: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


async def live_fleet(request: Request) -> Response:
    """Devices whose last_seen_ms or state_ms moved past the watermark, every LIVE_POLL_S."""
    db = _db(request)
    since = _int_arg(request, "since", now_ms())

    async def stream():
        nonlocal since
        yield b"retry: 1000\n\n"
        while not await request.is_disconnected():
            mark = now_ms()

            def poll(since=since):
                with db.use() as store:
                    return data.fleet_rows(store, since_ms=since)

            rows = await _in_thread(poll)
            if rows:
                since = max(max(r["last_seen_ms"] or 0, r["state_ms"] or 0) for r in rows)
                yield _sse("devices", {"devices": rows, "now_ms": mark})
            else:
                yield b": idle\n\n"
            await asyncio.sleep(LIVE_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


async def live_device(request: Request) -> Response:
    """New readings and events of one device by (flash log, seq) watermark, and its row when it changed. When the
    device starts a new log (board replaced, log erased), the watermark moves to the new log's first seq."""
    db = _db(request)
    dev = request.path_params["device"]
    mark = {
        "log": request.query_params.get("log"),
        "after": _int_arg(request, "after", 0),
        "event_log": request.query_params.get("event_log"),
        "after_event": _int_arg(request, "after_event", 0),
    }

    def poll() -> dict:
        out: dict = {}
        with db.use() as store:
            cur = data.current_log(store, dev)
            if cur is not None and cur != mark["log"]:
                mark["log"], mark["after"] = cur, 0
            sensors, last = data.new_readings(store, dev, mark["log"], mark["after"])
            ev_log, _last = data.event_log(store, dev)
            if ev_log is not None and ev_log != mark["event_log"]:
                mark["event_log"], mark["after_event"] = ev_log, 0
            evs = data.events_after(store, dev, mark["event_log"], mark["after_event"])
            row = data.device_row(store, dev)
        if sensors:
            out["sensors"], mark["after"] = sensors, last
            out["last_seq"], out["log"] = last, mark["log"]
        if evs:
            out["events"], mark["after_event"] = evs, evs[-1]["seq"]
            out["event_log"] = mark["event_log"]
        out["_row"] = row
        return out

    async def stream():
        seen_row: dict | None = None
        yield b"retry: 1000\n\n"
        while not await request.is_disconnected():
            out = await _in_thread(poll)
            row = out.pop("_row")
            if row is not None and row != seen_row:
                out["device"], seen_row = row, row
            yield _sse("update", out) if out else b": idle\n\n"
            await asyncio.sleep(LIVE_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------- wiring


class AuthMiddleware(BaseHTTPMiddleware):
    """Everything but the login page and static files needs a logged-in session; adds security headers."""

    async def dispatch(self, request: Request, call_next):
        path = request.url.path
        if not path.startswith(PUBLIC):
            s = request.app.state.console.session(request)
            if s is None or s.user is None:
                if path.startswith("/api/"):
                    return JSONResponse({"error": "login required"}, 401)
                return RedirectResponse("/login", 303)
            request.state.session = s
        try:
            resp = await call_next(request)
        except EdgefleetError as e:
            resp = JSONResponse({"error": str(e)}, 400)
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
        )
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make form posts send Origin: null
        return resp


def create_app(console: Console, secure_cookie: bool = True) -> Starlette:
    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/", fleet_page),
        Route("/device/{device}", device_page),
        Route("/deadletters", deadletters_page),
        Route("/rollouts", rollouts_page),
        Route("/api/rollouts", api_rollouts),
        Route("/api/rollouts/{rid}/{action}", api_rollout_action, methods=["POST"]),
        Route("/api/fleet", api_fleet),
        Route("/api/device/{device}", api_device),
        Route("/api/device/{device}/command", api_command, methods=["POST"]),
        Route("/api/deadletters", api_deadletters),
        Route("/api/live/fleet", live_fleet),
        Route("/api/live/device/{device}", live_device),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(AuthMiddleware)])
    app.state.console = console
    app.state.secure_cookie = secure_cookie
    return app
