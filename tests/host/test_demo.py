"""`edgefleet demo` end to end, small: 4 nodes for 30 s (the real broker, collector, firmware and model)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_small_fleet_writes_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "demo", "--devices", "4", "--duration", "30", "--dir", str(out)],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    # secure configuration, no secret in any output or log; the collector's password in a 0600 file
    secrets = json.loads(next(out.rglob("credentials.json")).read_text()).values()
    texts = [r.stdout, r.stderr, *(p.read_text(errors="replace") for p in out.rglob("*.log"))]
    assert not [s for s in secrets for t in texts if s in t], "a password in a log or on the console"
    assert (next(out.rglob("collector.secret")).stat().st_mode & 0o777) == 0o600
    assert "R_ingest" in r.stdout and "edgefleet fleet status --db sqlite:///" in r.stdout, r.stdout[-2000:]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "A_forecast" in html
    rep = json.loads((out / "report.json").read_text())
    devs = {d["device"]: d for d in rep["devices"]}
    assert sorted(devs) == ["node-001", "node-002", "node-003", "node-004"]
    assert all(d["readings"] > 20 for d in devs.values()), devs
    # node-002 was power-cut once (at most one RAM batch lost), node-003 stopped: offline at the end of the run
    assert devs["node-002"]["boots"] == 2 and devs["node-002"]["missing"] <= 10
    assert devs["node-003"]["state"] == "offline" and devs["node-001"]["state"] == "online"
    assert all(d["missing"] == 0 for k, d in devs.items() if k != "node-002"), devs
    m = rep["metrics"]
    assert m["records"] == sum(d["readings"] + d["events"] for d in devs.values())
    assert 0.5 < m["e_buffer"] <= 1.5 and 0 <= m["r_noise"] < 1 and m["r_ingest"] > 0
    assert m["l_infer"]["ms_total"] > 0 and m["l_infer"]["windows"] == 80
    assert 0 < m["forecast"]["a_forecast"] <= 1
    # A_forecast beside both baselines, with the forecast-against-actual plot (issue 15 item 4)
    f = m["forecast"]
    assert 0 < f["naive_last_value"] <= 1 and 0 < f["seasonal_naive"] <= 1 and "plot" not in f
    assert "seasonal naive" in r.stdout and "Forecast against actual" in html and html.count("data:image/png") >= 2
    assert "edgefleet forecast on " in r.stdout and 0 < f["host"]["a_forecast"] <= 1, f["host"]  # the host's command
    # the activity nodes' model decisions were judged against the replayed labels, the faults against injections
    assert sum(s["support"] for s in rep["activity"].values()) >= 2
    assert rep["faults"]["unplugged"]["support"] >= 1
    # the console command the demo prints runs its alert rules: on the demo's data, the stopped node is offline
    from edgefleet.collect.storage import open_storage
    from edgefleet.console.alerts import AlertEngine, load_rules

    assert f"--alerts {out / 'alerts.toml'}" in r.stdout
    engine = AlertEngine(f"sqlite:///{out / 'fleet.db'}", load_rules(out / "alerts.toml"))
    store = open_storage(engine.db_url, create=False)
    try:
        fired = engine.evaluate(store, now=int(time.time() * 1000) + 600_000)
    finally:
        store.close()
    assert ("node offline", "node-003", "firing") in {(m["alert"], m["device"], m["state"]) for m in fired}, fired


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dir", "{tmp}/afile"], "--dir {tmp}/afile is not a directory"),
        (["--dir", ""], "--dir is empty"),
        (["--dir", "/proc/edgefleet/d"], "cannot create --dir /proc/edgefleet/d"),
        (["--dir", "{tmp}/d", "--duration", "0"], "--duration must be a positive number"),
        (["--dir", "{tmp}/d", "--devices", "0"], "--devices must be at least 1"),
    ],
)
def test_demo_user_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "afile").write_text("x")
    args = [a.format(tmp=tmp_path) for a in args]
    # cwd: an empty --dir used to mean the working directory, which the old demo deleted
    r = subprocess.run([sys.executable, "-m", "edgefleet.cli", "demo", *args], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert message.format(tmp=tmp_path) in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "d").exists(), "nothing may be started or written for a refused run"


def test_demo_never_deletes_a_directory_it_did_not_make(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    r = subprocess.run([sys.executable, "-m", "edgefleet.cli", "demo", "--devices", "1", "--duration", "1", "--dir",
                        str(mine)], capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert r.returncode == 2 and "not empty and does not hold a previous demo run" in r.stderr, r.stderr[-2000:]
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_demo_clears_only_its_own_previous_run(tmp_path: Path) -> None:
    from edgefleet.demo.run import RUN_MARKER, clear_previous_run

    work = tmp_path / "demo"
    clear_previous_run(work, keep=False)  # a new directory: created and marked
    (work / "fleet.db").write_text("old run")
    clear_previous_run(work, keep=False)
    assert sorted(p.name for p in work.iterdir()) == [RUN_MARKER]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    clear_previous_run(mine, keep=True)  # --keep runs in it, and does not mark it for a later clearing
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
