"""The fleet console against a running simulated fleet (issue 14): real mosquitto, the real collector (with its
metrics endpoint), three nodes of real firmware on the MicroPython unix port, the console served by uvicorn and
driven by a real headless Chromium (Debian's, through Playwright), the alert engine posting to a local HTTP
receiver, and the Home Assistant bridge checked by subscribing to its discovery topics.

One fleet for the whole module (module-scoped fixture): node-001 and node-003 replay activities through the
shipped model (class events), node-002 has an unplugged env sensor from ~9 s to ~17 s (fault_scenario).
Set EDGEFLEET_SCREENSHOTS=docs/img to write the console screenshots docs/console.md shows.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from netnode_harness import wait_until
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.broker.mosquitto import Mosquitto, free_port
from edgefleet.collect.collector import Collector
from edgefleet.collect.storage import open_storage
from edgefleet.console.homeassistant import HomeAssistantBridge
from edgefleet.console.metrics import serve_metrics
from edgefleet.console.server import ConsoleServer
from edgefleet.console.users import UserStore
from edgefleet.paths import models_dir
from edgefleet.sim.simulate import Fleet, activity_scenario, basicmotions_replay, fault_scenario

_wait = functools.partial(wait_until, every=0.2)  # the shared poll loop, at this file's pace

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # fmt: skip
PASSWORD = "op-password-1"
SHOTS = os.environ.get("EDGEFLEET_SCREENSHOTS")

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"
)


class Receiver(ThreadingHTTPServer):
    """A local webhook: keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.got: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                outer.got.append(json.loads(self.rfile.read(n)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        super().__init__(("127.0.0.1", 0), H)

    def alerts(self, name: str, device: str) -> list[str]:
        return [m["state"] for m in self.got if m["alert"] == name and m["device"] == device]


RULES = """
interval_s = 0.5
[[sink]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{port}/alerts"
[[rule]]
name = "node offline"
kind = "offline"
for_s = 1
[[rule]]
name = "env silent"
kind = "no_data"
sensor = "env"
for_s = 5
[[rule]]
name = "env unplugged"
kind = "event"
event_kind = "fault"
label = "unplugged"
[[rule]]
name = "activity"
kind = "event"
event_kind = "class"
for_s = 600
[[rule]]
name = "safe mode"
kind = "safe_mode"
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("console")
    broker = Mosquitto(data_dir=tmp / "broker").start()
    db = f"sqlite:///{tmp}/fleet.db"
    store = open_storage(db)
    collector = Collector(broker.url, store, client_id="console-test-collector", batch_ms=10)
    _metrics, metrics_server = serve_metrics(collector, "127.0.0.1:0")
    collector.start()
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    rules = tmp / "alerts.toml"
    rules.write_text(RULES.format(port=receiver.server_port))
    users = tmp / "users.json"
    UserStore(users).add("op", "operator", PASSWORD)
    UserStore(users).add("viewer", "viewer", PASSWORD)
    ha = HomeAssistantBridge(broker.url).start()
    scen = []
    for i in range(3):
        if i == 1:
            scen.append(fault_scenario(101, 40))
        else:
            replay = tmp / f"replay-{i}.csv"
            basicmotions_replay(replay, 10 + i)
            scen.append(activity_scenario(replay, 10 + i))
    fleet = Fleet(tmp / "fleet", 3, broker=broker, model=models_dir() / "basicmotions-rf", scenarios=scen,
                  status_interval_s=2)  # fmt: skip
    console = ConsoleServer(db, users, port=free_port(), broker=broker.url, alerts=rules)
    try:
        fleet.start()
        console.start()
        yield {"fleet": fleet, "console": console, "receiver": receiver, "db": db, "broker": broker, "ha": ha,
               "metrics_port": metrics_server.server_port, "tmp": tmp}  # fmt: skip
    finally:
        fleet.close()
        console.stop()
        ha.stop()
        collector.stop()
        metrics_server.shutdown()
        receiver.shutdown()
        store.close()
        broker.stop()


@pytest.fixture(scope="module")
def browser(stack):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def _login(browser, url: str, user: str = "op"):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url)
    assert "/login" in page.url
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("form[action='/login'] button")
    page.wait_for_url(url)
    return page


def _shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"), full_page=True)


def _cell(page, dev: str, col: str) -> str:
    loc = page.locator(f"#fleet tr[data-device='{dev}'] td[data-col='{col}']")
    return loc.inner_text() if loc.count() else ""


def test_browser_fleet_live_offline_and_device_chart(stack, browser) -> None:
    fleet, console = stack["fleet"], stack["console"]
    page = _login(browser, console.url)
    # the fleet page lists every node
    _wait(lambda: page.locator("#fleet tbody tr").count() == 3, 60, "three nodes on the fleet page")
    _wait(lambda: all(_cell(page, f"node-00{i}", "state") == "online" for i in (1, 2, 3)), 30, "nodes online")
    # a new reading appears without reload: the records count of node-001 grows while the page stays loaded
    page.evaluate("window.__marker = 1")
    first = int(_cell(page, "node-001", "records"))
    _wait(lambda: int(_cell(page, "node-001", "records") or 0) > first, 10, "records count to grow live")
    # sorting and filtering
    page.fill("#filter", "node-002")
    _wait(lambda: page.locator("#fleet tbody tr").count() == 1, 5, "filter to one row")
    page.fill("#filter", "")
    page.click("th[data-key='device']")  # second click on the sorted column: descending
    _wait(lambda: page.locator("#fleet tbody tr").first.get_attribute("data-device") == "node-003", 5, "sort")
    # a killed node turns offline, live
    fleet.kill(2)
    _wait(lambda: _cell(page, "node-003", "state") == "offline", 10, "node-003 offline on the fleet page")
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"
    _shot(page, "fleet")
    # the device page shows a chart per sensor, and new points arrive live
    page.click("#fleet a[href='/device/node-001']")
    page.wait_for_selector("canvas.chart[data-sensor='imu']")
    pts = int(page.get_attribute("canvas.chart[data-sensor='imu']", "data-points"))
    assert pts > 0
    _wait(lambda: int(page.get_attribute("canvas.chart[data-sensor='imu']", "data-points")) > pts, 10, "live points")
    _wait(lambda: page.locator("#events tbody tr").count() > 0, 20, "model events in the timeline")
    # an operator sends a ping; the node's ack shows next to it
    page.select_option("#cmd", "ping")
    page.click("#cmdform button")
    _wait(lambda: "ok" in page.locator("#cmds tbody tr").first.inner_text(), 15, "the ping's ack")
    _shot(page, "device")
    page.goto(console.url + "deadletters")
    page.wait_for_selector("#health tr")
    _shot(page, "deadletters")
    page.close()


def test_access_control(stack, browser) -> None:
    url = stack["console"].url
    # no session: pages redirect to the login, the API says 401
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "api/fleet")
    assert e.value.code == 401
    page = browser.new_page()
    page.goto(url)
    page.fill("input[name=user]", "op")
    page.fill("input[name=password]", "wrong-password")
    page.click("form[action='/login'] button")
    assert "wrong user name or password" in page.content()
    page.close()
    viewer = _login(browser, url, "viewer")
    viewer.goto(url + "device/node-001")
    viewer.wait_for_selector("canvas.chart")
    assert viewer.locator("#cmdform").is_hidden()
    csrf = viewer.get_attribute("meta[name=csrf]", "content")
    post = "async (a) => { const r = await fetch('/api/device/node-001/command', {method: 'POST', headers: a[1] ? " \
           "{'X-CSRF-Token': a[1], 'Content-Type': 'application/json'} : {'Content-Type': 'application/json'}, " \
           "body: JSON.stringify({cmd: a[0]})}); return r.status; }"  # fmt: skip
    assert viewer.evaluate(post, ["ping", csrf]) == 403  # a viewer may not send commands
    cookie = viewer.context.cookies()[0]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    viewer.close()
    op = _login(browser, url)
    assert op.evaluate(post, ["ping", None]) == 403  # no CSRF token: refused
    assert op.evaluate(post, ["ping", "forged-token"]) == 403
    assert op.evaluate(post, ["ping", op.get_attribute("meta[name=csrf]", "content")]) == 200
    op.close()


def test_alerts_fire_once_and_recover_once(stack) -> None:
    rx, fleet = stack["receiver"], stack["fleet"]

    def why(what: str):
        return lambda: f"{what}; alerts received: {[(m['alert'], m['device'], m['state']) for m in rx.got]}"

    _wait(lambda: rx.alerts("node offline", "node-003") == ["firing"], 20, why("offline alert for the killed node"))
    # the unplugged sensor of node-002: silence and the fault event, each firing then resolving, once
    _wait(lambda: rx.alerts("env silent", "node-002") == ["firing", "resolved"], 40, why("no_data fire + recover"))
    _wait(
        lambda: rx.alerts("env unplugged", "node-002") == ["firing", "resolved"], 20, why("fault event fire + recover")
    )
    assert "firing" in rx.alerts("activity", "node-001")  # a model class event
    fleet.restart(2)
    _wait(lambda: rx.alerts("node offline", "node-003") == ["firing", "resolved"], 30, why("offline alert resolved"))
    for m in rx.got:
        assert set(m) == {"alert", "kind", "state", "device", "detail", "ts_ms"}
    # nothing else: the running nodes never alerted as silent or offline, nobody is in safe mode
    assert rx.alerts("env silent", "node-001") == [] and rx.alerts("node offline", "node-001") == []
    time.sleep(3)  # node-003 booted again: its silence counts from the boot, not from before the power cut
    assert rx.alerts("env silent", "node-003") == []
    assert [m for m in rx.got if m["alert"] == "safe mode"] == []


# Home Assistant's documented MQTT discovery options (sensor.mqtt, binary_sensor.mqtt and the shared device /
# availability / origin mappings) that we use, and the sensor device classes / state classes we may send.
HA_COMMON = {"name", "unique_id", "object_id", "availability_topic", "availability_template", "payload_available",
             "payload_not_available", "device", "origin", "state_topic", "value_template", "icon", "device_class"}  # fmt: skip
HA_SENSOR = HA_COMMON | {"unit_of_measurement", "state_class"}
HA_BINARY = HA_COMMON | {"payload_on", "payload_off", "off_delay"}
HA_DEVICE = {"identifiers", "name", "manufacturer", "model", "sw_version"}
SENSOR_CLASSES = {"temperature", "humidity", "atmospheric_pressure"}
UNITS = {"temperature": {"°C"}, "humidity": {"%"}, "atmospheric_pressure": {"hPa"}}


def _discovery(broker, prefix: str = "homeassistant", wait: float = 1.5) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-check-{time.monotonic_ns()}")
    c.on_message = lambda cl, ud, m: got.__setitem__(m.topic, m.payload) if m.retain else None
    c.connect(broker.host, broker.port)
    c.subscribe(f"{prefix}/#", 1)
    c.loop_start()
    time.sleep(wait)
    c.loop_stop()
    c.disconnect()
    return got


def _check_payload(topic: str, cfg: dict) -> None:
    parts = topic.split("/")
    assert len(parts) == 5 and parts[0] == "homeassistant" and parts[-1] == "config", topic
    component = parts[1]
    assert component in ("sensor", "binary_sensor"), topic
    allowed = HA_SENSOR if component == "sensor" else HA_BINARY
    assert set(cfg) <= allowed, (topic, set(cfg) - allowed)
    assert cfg["unique_id"] == cfg["object_id"] and cfg["unique_id"].startswith(f"{parts[2]}_"), topic
    assert set(cfg["device"]) <= HA_DEVICE and cfg["device"]["identifiers"] == [parts[2]]
    dev = cfg["device"]["name"]
    assert cfg["availability_topic"] == f"edgefleet/{dev}/status"
    assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
    assert cfg["state_topic"].startswith(f"edgefleet-ha/{dev}/")
    assert cfg["origin"]["name"] == "edgefleet"
    if component == "sensor" and "state_class" in cfg:
        assert cfg["state_class"] in ("measurement", "total", "total_increasing")
        if "device_class" in cfg:
            assert cfg["device_class"] in SENSOR_CLASSES
            assert cfg["unit_of_measurement"] in UNITS[cfg["device_class"]]
    if component == "binary_sensor":
        assert cfg["device_class"] == "problem" and isinstance(cfg["off_delay"], int)


def test_home_assistant_discovery(stack) -> None:
    broker, ha = stack["broker"], stack["ha"]
    got = _wait(lambda: (g := _discovery(broker)) and any("/class/" in t for t in g) and g, 30, "discovery")
    for topic, payload in got.items():
        _check_payload(topic, json.loads(payload))
    topics = set(got)
    for dev in ("node-001", "node-002"):
        assert f"homeassistant/sensor/edgefleet_{dev}/env_temperature/config" in topics
        assert f"homeassistant/sensor/edgefleet_{dev}/env_humidity/config" in topics
    assert "homeassistant/sensor/edgefleet_node-001/imu_ax/config" in topics
    assert "homeassistant/sensor/edgefleet_node-001/class/config" in topics
    temp = json.loads(got["homeassistant/sensor/edgefleet_node-001/env_temperature/config"])
    assert (temp["device_class"], temp["unit_of_measurement"], temp["state_class"]) == ("temperature", "°C",
                                                                                         "measurement")  # fmt: skip
    # unique ids are stable across restarts: a second bridge publishes byte-identical configs
    ha2 = HomeAssistantBridge(broker.url, client_id="edgefleet-homeassistant-2").start()
    try:
        _wait(lambda: len(ha2.announced.get("node-001", ())) >= 9, 20, "second bridge announcing node-001")
        again = _discovery(broker)
        for t in ha2.announced["node-001"]:
            assert again[t] == got[t], t
        # a revoked device is removed: empty retained configs, nothing left under its node id
        removed = ha2.remove("node-003")
        assert removed and all("edgefleet_node-003" in t for t in removed)
        ha.removed.add("node-003")
        left = _discovery(broker)
        assert not [t for t in left if "edgefleet_node-003/" in t]
        assert any("edgefleet_node-001/" in t for t in left)
    finally:
        ha2.stop()


def test_collector_metrics_scraped(stack) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{stack['metrics_port']}/metrics", timeout=5).read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    val = {f: fams[f].samples[0].value for f in ("edgefleet_collector_messages", "edgefleet_collector_stored",
                                                  "edgefleet_collector_duplicates", "edgefleet_collector_dead_letters",
                                                  "edgefleet_collector_queue_depth")}  # fmt: skip
    assert val["edgefleet_collector_messages"] > 10 and val["edgefleet_collector_stored"] > 10
    s = open_storage(stack["db"])
    try:
        stored_db = s.counts()["readings"] + s.counts()["events"]
    finally:
        s.close()
    assert val["edgefleet_collector_stored"] <= stored_db  # the counter never claims more than the database holds
    lat = fams["edgefleet_collector_batch_latency_seconds"]
    assert next(x for x in lat.samples if x.name.endswith("_count")).value > 0
    ages = {x.labels["device"]: x.value for x in fams["edgefleet_device_last_seen_age_seconds"].samples}
    assert set(ages) == {"node-001", "node-002", "node-003"}
    assert ages["node-001"] < 5
    assert "edgefleet_collector_database_outages" in fams and "edgefleet_collector_stored_acks" in fams


def test_rollouts_page_pause_and_abort(stack, browser) -> None:
    """The rollouts page lists a rollout with its stages' counts and failed gate; a viewer sees no buttons and is
    refused by the API; an operator pauses it and then aborts it (the state a running `rollout start` obeys)."""
    from edgefleet.fleetops import rollout as ro
    from edgefleet.fleetops.ota import Artifact

    url = stack["console"].url
    store = open_storage(stack["db"])
    try:
        rs = ro.RolloutStore(store)
        art = Artifact(str(stack["tmp"] / "m.efm"), "model", 4, b"EFML" + bytes(60))
        rs.create("r-web1", art, "all", [["node-001"], ["node-002", "node-003"]], 30.0, ro.GateSettings(),
                  {"confirm_s": 60, "chunk": 1024})  # fmt: skip
        rs.set_device("r-web1", "node-001", state="confirmed")
        rs.save_gate("r-web1", ro.GateResult(0, False, [ro.Check("drift", False, "tvd 0.91 > 0.5", 0.91, 0.5)], 1))
    finally:
        store.close()
    viewer = _login(browser, url, "viewer")
    viewer.goto(url + "rollouts")
    viewer.wait_for_selector("#rollouts tr[data-rollout='r-web1']")
    row = viewer.locator("#rollouts tr[data-rollout='r-web1']")
    assert "1: 1/0/0 of 1, 2: 0/0/0 of 2" in row.locator("td[data-col='stages']").inner_text()
    assert "FAILED (drift: tvd 0.91 > 0.5)" in row.locator("td[data-col='gate']").inner_text()
    assert row.locator("button").count() == 0
    csrf = viewer.get_attribute("meta[name=csrf]", "content")
    post = "async (a) => (await fetch('/api/rollouts/r-web1/' + a[0], {method: 'POST', headers: a[1] ? " \
           "{'X-CSRF-Token': a[1]} : {}})).status"  # fmt: skip
    assert viewer.evaluate(post, ["pause", csrf]) == 403  # a viewer may not
    viewer.close()
    op = _login(browser, url)
    op.goto(url + "rollouts")
    op.wait_for_selector("#rollouts tr[data-rollout='r-web1'] button[data-action='pause']")
    assert op.evaluate(post, ["pause", None]) == 403  # no CSRF token
    op.click("#rollouts tr[data-rollout='r-web1'] button[data-action='pause']")
    _wait(lambda: op.locator("#rollouts tr[data-rollout='r-web1'] td[data-col='state']").inner_text() == "paused", 10,
          "paused on the page")  # fmt: skip
    _shot(op, "rollouts")
    assert op.evaluate(post, ["pause", op.get_attribute("meta[name=csrf]", "content")]) == 409  # not running now
    op.on("dialog", lambda d: d.dismiss())
    op.click("#rollouts tr[data-rollout='r-web1'] button[data-action='abort']")
    _wait(lambda: op.locator("#rollouts tr[data-rollout='r-web1'] td[data-col='state']").inner_text() == "aborted", 10,
          "aborted on the page")  # fmt: skip
    op.close()
    store = open_storage(stack["db"])
    try:
        assert ro.RolloutStore(store).get("r-web1").state == ro.ABORTED
    finally:
        store.close()
