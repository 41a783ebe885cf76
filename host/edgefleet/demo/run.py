"""`edgefleet demo`: the main job on one machine, end to end, with no arguments.

1. model: reuse models/basicmotions-rf when its model file verifies, else train and convert it (BasicMotions);
2. mosquitto with the fleet config, a password per device and per-device ACLs; the collector into SQLite;
3. 20 simulated nodes (the real firmware on the MicroPython unix port) for ~60 s: even nodes replay labelled
   BasicMotions activities on their IMU and run the model, odd nodes get sensor faults on env (spike, stuck,
   dropout, unplugged); one node is power-cut and rebooted mid-run, one is stopped (offline at the end);
4. drain: every node is stopped cleanly, its flash log read, booted again until everything it had logged is
   stored, then stopped;
5. the report (docs/demo.md): per-device counts, online/offline, events against ground truth, R_ingest, E_buffer,
   R_noise, L_infer, A_forecast, a plot of one node's signal with its events -> demo/report.html.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from ..collect.launch import start_collector
from ..errors import EdgefleetError
from ..paths import models_dir
from ..sim.run import drain, shut_down, wait_collector_idle
from ..sim.simulate import IMU_CHANNELS, Fleet, activity_scenario, basicmotions_replay, fault_scenario

log = logging.getLogger(__name__)

MODEL_NAME = "basicmotions-rf"


# ---------------------------------------------------------------- setup


def ensure_model(name: str = MODEL_NAME) -> Path:
    """The shipped model when its file verifies; otherwise train + convert it again from BasicMotions."""
    from ..model import modelfile

    out = models_dir() / name
    efm = out / "model.efm"
    if efm.is_file():
        try:
            modelfile.decode(efm.read_bytes())
            log.info("model: reusing %s", efm)
            return out
        except EdgefleetError as e:
            log.warning("model %s does not verify (%s): training it again", efm, e)
    from ..model.train import TrainOptions, train

    log.info("model: training %s on BasicMotions", name)
    return train(TrainOptions(data="basicmotions", model="rf", name=name))


# ---------------------------------------------------------------- ground truth and metrics


@dataclass
class NodePlan:
    device: str
    kind: str  # "activity" | "faults"
    scenario: dict
    segments: list[tuple[float, str]] = field(default_factory=list)
    replay: Path | None = None


def prf(pairs: list[tuple[str, str]], classes: list[str]) -> dict[str, dict]:
    """Precision/recall per class from (truth, predicted) pairs."""
    out = {}
    for c in classes:
        tp = sum(1 for t, p in pairs if t == c and p == c)
        fp = sum(1 for t, p in pairs if t != c and p == c)
        fn = sum(1 for t, p in pairs if t == c and p != c)
        out[c] = {
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "support": tp + fn,
        }
    return out


def replay_offset(con: sqlite3.Connection, plan: NodePlan) -> float | None:
    """Node clock (s) minus replay time, from the stored IMU readings matched to the replay's rows.

    The node's logged IMU values are the replay's rows (float32), so the nearest row gives each reading's
    replay time exactly; the median over readings removes the odd reading cleaning changed."""
    rows = np.loadtxt(plan.replay, delimiter=",", skiprows=1, usecols=range(7))
    vals = [
        (ts, [v.get(c, 0.0) for c in IMU_CHANNELS])
        for ts, v in ((ts, json.loads(vj)) for ts, vj in con.execute(
            "SELECT ts_ms, vals FROM readings WHERE device = ? AND sensor = 'imu' ORDER BY seq", (plan.device,)))
    ]  # fmt: skip
    if not vals:
        return None
    offs = []
    for ts, v in vals:
        d = np.abs(rows[:, 1:] - np.asarray(v)).sum(axis=1)
        k = int(np.argmin(d))
        # the MPU6050 model quantizes (16-bit registers): a few LSB per channel
        if d[k] < 0.1 + 0.01 * np.abs(rows[k, 1:]).sum():
            offs.append(ts / 1000 - rows[k, 0])
    return float(np.median(offs)) if len(offs) >= 3 else None


def activity_pairs(con: sqlite3.Connection, plan: NodePlan) -> list[tuple[str, str]]:
    """(truth, decision) per replayed 10 s segment: the class decision in force at the segment's end."""
    off = replay_offset(con, plan)
    if off is None:
        return []
    events = list(con.execute(
        "SELECT ts_ms, label FROM events WHERE device = ? AND kind = 'class' ORDER BY ts_ms", (plan.device,)))  # fmt: skip
    last_ts = con.execute(
        "SELECT MAX(ts_ms) FROM readings WHERE device = ? AND sensor = 'imu'", (plan.device,)
    ).fetchone()[0]
    if not events or last_ts is None:
        return []
    pairs = []
    for k, (start, label) in enumerate(plan.segments):
        end = plan.segments[k + 1][0] if k + 1 < len(plan.segments) else start + 10.0
        at_ms = (off + end - 0.05) * 1000
        if at_ms > last_ts or at_ms < events[0][0]:
            continue
        decided = [lab for ts, lab in events if ts <= at_ms]
        pairs.append((label, decided[-1] if decided else "none"))
    return pairs


def fault_pairs(
    con: sqlite3.Connection, plan: NodePlan, boots_ms: list[int], end_ms: int
) -> tuple[list[tuple[str, str]], list[dict]]:
    """Injected faults vs fault events. Scenario time starts at each boot, so a node that was power-cut replays
    its faults from the start in its next boot: each boot's faults (those that start before the boot ended) are
    ground truth. A fault counts as detected by an event of the expected label that begins within its interval
    (+ 8 s for detection: stuck needs ~20 identical readings, unplugged three failed reads). Events matching no
    injected fault count as false positives (truth "none")."""
    expect = {"stuck": "stuck", "unplugged": "unplugged"}
    evs = list(con.execute(
        "SELECT ts_ms, label FROM events WHERE device = ? AND kind = 'fault' AND sensor = 'env' "
        "AND (action = 'begin' OR action IS NULL) AND ts_ms < ? ORDER BY ts_ms", (plan.device, end_ms)))  # fmt: skip
    used: set[int] = set()
    pairs, rows = [], []
    faults = plan.scenario["sensors"]["env"].get("faults", [])
    for k, boot_ms in enumerate(boots_ms):
        boot_end = boots_ms[k + 1] if k + 1 < len(boots_ms) else end_ms
        for f in faults:
            start = f.get("from_s", f.get("at_s"))
            if boot_ms + start * 1000 >= boot_end:
                continue  # the node was off (power cut) or the run over before this fault began
            row = {"device": plan.device, "boot": k + 1, "fault": f["kind"], "from_s": start,
                   "to_s": f.get("to_s", start), "detected": "(no event expected)", "delay_s": None}  # fmt: skip
            rows.append(row)
            if f["kind"] not in expect:
                # a spike is cleaned (rejected, R_noise) and a short dropout only counted missing: no event is
                # expected, so an event during them counts as a false positive below
                continue
            a = boot_ms / 1000 + f["from_s"]
            b = min(boot_ms / 1000 + f["to_s"] + 8, boot_end / 1000)
            hit = next((i for i, (ts, lab) in enumerate(evs) if i not in used and a - 1 <= ts / 1000 <= b
                        and lab == expect[f["kind"]]), None)  # fmt: skip
            if hit is None and boot_ms / 1000 + f["from_s"] + 25 > boot_end / 1000 and f["kind"] == "stuck":
                rows.pop()  # cut short before it could be detected (~20 s): not judged
                continue
            pairs.append((expect[f["kind"]], evs[hit][1] if hit is not None else "none"))
            if hit is not None:
                used.add(hit)
            row["detected"] = evs[hit][1] if hit is not None else "missed"
            row["delay_s"] = round(evs[hit][0] / 1000 - a, 1) if hit is not None else None
    for i, (_ts, lab) in enumerate(evs):
        if i not in used:
            pairs.append(("none", lab))
            rows.append({"device": plan.device, "boot": None, "fault": "(none)", "from_s": None, "to_s": None,
                         "detected": lab, "delay_s": None})  # fmt: skip
    return pairs, rows


def ingest_rate(con: sqlite3.Connection) -> tuple[float, int, float]:
    """Records stored per second over the run (first to last received record)."""
    rows = [r for (r,) in con.execute("SELECT received_ms FROM readings UNION ALL SELECT received_ms FROM events")]
    if len(rows) < 2:
        return 0.0, len(rows), 0.0
    span = (max(rows) - min(rows)) / 1000
    return len(rows) / span if span else 0.0, len(rows), span


def latency_stats(con: sqlite3.Connection) -> dict:
    lat = np.asarray([r - t for r, t in con.execute("SELECT received_ms, ts_ms FROM readings")], dtype=float)
    if not len(lat):
        return {}
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def measure_inference(model_dir: Path, heap: int) -> dict:
    """L_infer: the firmware's runner (features + model) on the unix port over BasicMotions test windows, as the
    node runs it on every hop of its IMU window."""
    from ..model import parity
    from ..model.datasets import load_basicmotions

    manifest = json.loads((model_dir / "manifest.json").read_text())
    w = load_basicmotions(manifest["window"], manifest["hop"])
    x = w.x[w.split == "test"][:80].astype(np.float32)
    run = parity.run_node(model_dir / "model.efm", x, len(manifest["features"]), heap=heap)
    return {"windows": len(x), "us_per_infer": run.us_per_infer, "us_per_features": run.us_per_features,
            "ms_total": (run.us_per_infer + run.us_per_features) / 1000, "backend": run.backend}  # fmt: skip


def forecast_accuracy(db: Path, work: Path, window: int = 10) -> dict:
    """A_forecast of the node's `forecast` model kind (edgefleet.forecast.node: a forest on the shared window
    features predicting the change of the next env temperature from the last one), trained on the first 70% of
    each node's series and tested on the last 30%, beside naive (last value) and seasonal naive (the value one
    window back), with a plot of forecast against actual for one node's test part."""
    from ..collect.export import export_csv
    from ..collect.storage import open_storage
    from ..forecast import node as forecast_node
    from ..model import datasets, modelfile, train

    csv_path = work / "env-export.csv"
    store = open_storage(f"sqlite:///{db}")
    try:
        export_csv(store, csv_path, sensors=["env"])
    finally:
        store.close()
    w = forecast_node.target_first(datasets.load_csv(csv_path, window, 1, "env"), "temperature")
    y = forecast_node.delta_target(w)
    tr_idx, te_idx = [], []
    for g in np.unique(w.groups):
        idx = np.where((w.groups == g) & ~np.isnan(y))[0]
        cut = int(len(idx) * 0.7)
        tr_idx += list(idx[:cut])
        te_idx += list(idx[cut:])
    if len(tr_idx) < 4 or not te_idx:
        return {"error": f"too little env data ({len(tr_idx)} train windows)"}
    tr, te = np.array(tr_idx), np.array(te_idx)
    x = train.feature_matrix(w)
    scaling = modelfile.Scaling.fit(x[tr])
    xq = scaling.apply(x).astype(np.float64)
    est = train.fit("forecast", xq[tr], y[tr], 0, trees=10, max_depth=None, seed=1)
    pred = est.predict(xq[te])
    extra = forecast_node.testset_extra(w, te)
    m = forecast_node.regress_metrics({"y": y[te], **extra}, pred)
    g0 = w.groups[te[0]]
    one = w.groups[te] == g0
    last = extra["last"][one]
    plot = plot_forecast(last + y[te][one], last + pred[one], last, extra["season_ago"][one], m)
    return {"a_forecast": m["A_forecast"], "naive_last_value": m["naive_A_forecast"],
            "seasonal_naive": m["seasonal_naive_A_forecast"], "mae": m["mae"], "naive_mae": m["naive_mae"],
            "seasonal_naive_mae": m["seasonal_naive_mae"], "beats_naive": m["beats_naive"],
            "beats_seasonal_naive": m["beats_seasonal_naive"], "train_windows": len(tr), "test_windows": len(te),
            "target": m["target"], "plot": plot, "host": host_forecast(db)}  # fmt: skip


def host_forecast(db: Path, horizon_s: int = 5) -> dict:
    """`edgefleet forecast` (backtest, auto model) on the env temperature of the node with the most readings."""
    from ..forecast import forecast

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute(
            "SELECT device FROM readings WHERE sensor = 'env' GROUP BY device ORDER BY count(*) DESC, device LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    if row is None:
        return {"error": "no env readings"}
    try:
        r = forecast(f"sqlite:///{db}", row[0], "env", "temperature", horizon_s * 1000, folds=3)
    except EdgefleetError as e:
        return {"device": row[0], "error": str(e)}
    bt = r.backtest
    best, naive, snaive = bt.score(bt.best), bt.score("naive"), bt.score("seasonal-naive")
    return {"device": row[0], "model": bt.best, "horizon_steps": bt.h, "step_ms": r.series.step_ms,
            "season": bt.season, "folds": bt.folds, "a_forecast": best.a_forecast, "naive": naive.a_forecast,
            "seasonal_naive": snaive.a_forecast, "vs_naive": best.vs_naive, "vs_snaive": best.vs_snaive}  # fmt: skip


def host_forecast_text(h: dict) -> str:
    if "error" in h:
        return f"edgefleet forecast: {h['error']}"
    return (f"edgefleet forecast on {h['device']} ({h['horizon_steps']} steps ahead, {h['folds']}-fold backtest): "
            f"{h['model']} A_forecast {_f(h['a_forecast'], '{:.4f}')}, naive {_f(h['naive'], '{:.4f}')}, seasonal "
            f"naive {_f(h['seasonal_naive'], '{:.4f}')} (season {h['season']}), MAE x{h['vs_naive']:.2f} of naive")  # fmt: skip


def forecast_verdict(f: dict) -> str:
    """Says plainly whether the forecaster beats "no change" and the seasonal baseline."""
    if "beats_naive" not in f:
        return f.get("error", "not measured")
    if f["beats_naive"] and f["beats_seasonal_naive"]:
        return f"beats both baselines (MAE {f['mae']:.4g} vs {f['naive_mae']:.4g} naive)"
    lost = [n for n, k in (("naive", "beats_naive"), ("seasonal naive", "beats_seasonal_naive")) if not f[k]]
    return "does NOT beat " + " and ".join(lost)


def plot_forecast(actual: np.ndarray, pred: np.ndarray, naive: np.ndarray, snaive: np.ndarray, m: dict) -> str:
    """Base64 PNG: one node's held-out env temperature, the forecast and both baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2))
    k = np.arange(len(actual))
    ax.plot(k, actual, "k", lw=1.2, label="actual")
    ax.plot(k, pred, "C0", lw=1.2, label=f"forecast model: A_forecast {_f(m['A_forecast'], '{:.4f}')}")
    ax.plot(k, naive, "C1--", lw=1, label=f"naive: {_f(m['naive_A_forecast'], '{:.4f}')}")
    ax.plot(k, snaive, "C2:", lw=1, label=f"seasonal naive: {_f(m['seasonal_naive_A_forecast'], '{:.4f}')}")
    ax.set_xlabel("held-out sample (next-sample forecasts)")
    ax.set_ylabel("temperature")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


# ---------------------------------------------------------------- plot and report


def plot_node(con: sqlite3.Connection, plan: NodePlan, off: float | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(con.execute("SELECT ts_ms, vals FROM readings WHERE device = ? AND sensor = 'imu' ORDER BY seq",
                            (plan.device,)))  # fmt: skip
    evs = list(con.execute("SELECT ts_ms, label FROM events WHERE device = ? AND kind = 'class' ORDER BY ts_ms",
                           (plan.device,)))  # fmt: skip
    if not rows:
        return ""
    t0 = rows[0][0]
    t = np.asarray([(r[0] - t0) / 1000 for r in rows])
    vals = [json.loads(r[1]) for r in rows]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for c in ("ax", "ay", "az"):
        ax.plot(t, [v.get(c, np.nan) for v in vals], lw=1, label=c)
    classes = sorted({lab for _, lab in plan.segments} | {lab for _, lab in evs})
    colors = {c: plt.cm.tab10(i) for i, c in enumerate(classes)}
    if off is not None:
        for k, (s, lab) in enumerate(plan.segments):
            e = plan.segments[k + 1][0] if k + 1 < len(plan.segments) else s + 10
            a, b = off + s - t0 / 1000, off + e - t0 / 1000
            if b < 0 or a > t[-1]:
                continue
            ax.axvspan(max(a, t[0]), min(b, t[-1]), color=colors[lab], alpha=0.12)
            ax.text(max(a, 0) + 0.2, ax.get_ylim()[1] * 0.9, lab, fontsize=7, color=colors[lab])
    for ts, lab in evs:
        x = (ts - t0) / 1000
        ax.axvline(x, color=colors.get(lab, "k"), ls="--", lw=1)
        ax.text(x, ax.get_ylim()[0], lab, rotation=90, fontsize=7, va="bottom", color=colors.get(lab, "k"))
    ax.set_xlabel("s since the node's first stored reading")
    ax.set_ylabel("acceleration (logged, 1 Hz)")
    ax.set_title(f"{plan.device}: IMU replay; shaded = ground-truth activity, dashed = model's class events")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _f(v: object, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def render_text(r: dict) -> str:
    lines = ["", "== edgefleet demo: fleet report =="]
    lines.append(f"{'device':10} {'kind':8} {'state':8} {'readings':>8} {'events':>6} {'missing':>7} {'boots':>5} "
                 f"{'logged':>6} {'publ.':>6} {'rej.':>5}")  # fmt: skip
    for d in r["devices"]:
        c = d["counters"]
        lines.append(f"{d['device']:10} {d['kind']:8} {d['state']:8} {d['readings']:>8} {d['events']:>6} "
                     f"{d['missing']:>7} {d['boots']:>5} {c.get('logged', '-'):>6} {c.get('published', '-'):>6} "
                     f"{c.get('rejected', '-'):>5}")  # fmt: skip
    m = r["metrics"]
    lines += [
        "",
        f"R_ingest   {m['r_ingest']:.1f} records/s stored ({m['records']} records in {m['span_s']:.0f} s); "
        f"logged-to-stored latency p50 {_f(m['latency'].get('p50_ms'), '{:.0f}')} ms, "
        f"p99 {_f(m['latency'].get('p99_ms'), '{:.0f}')} ms",
        f"E_buffer   {m['e_buffer']:.3f} (published / logged, node status at the end of the run)",
        f"R_noise    {m['r_noise']:.4f} (rejected / sampled, node status)",
        f"L_infer    {_f(m['l_infer'].get('ms_total'), '{:.2f}')} ms per window on the unix port "
        f"(features {_f(m['l_infer'].get('us_per_features'), '{:.0f}')} us + model "
        f"{_f(m['l_infer'].get('us_per_infer'), '{:.0f}')} us, {m['l_infer'].get('backend', '?')} runner)",
        f"A_forecast {_f(m['forecast'].get('a_forecast'), '{:.4f}')} (env temperature, next sample; naive last value "
        f"{_f(m['forecast'].get('naive_last_value'), '{:.4f}')}, seasonal naive "
        f"{_f(m['forecast'].get('seasonal_naive'), '{:.4f}')}): {forecast_verdict(m['forecast'])}",
        f"           {host_forecast_text(m['forecast'].get('host', {'error': 'not measured'}))}",
        "",
        "activity (per replayed 10 s segment, decision in force at its end):",
    ]
    for c, s in r["activity"].items():
        lines.append(f"  {c:10} precision {_f(s['precision'], '{:.2f}')}  recall {_f(s['recall'], '{:.2f}')}  "
                     f"segments {s['support']}")  # fmt: skip
    lines.append("sensor faults (injected vs fault events):")
    for c, s in r["faults"].items():
        lines.append(f"  {c:10} precision {_f(s['precision'], '{:.2f}')}  recall {_f(s['recall'], '{:.2f}')}  "
                     f"injected {s['support']}")  # fmt: skip
    return "\n".join(lines)


def _prf_table(title: str, d: dict) -> str:
    rows = "".join(
        f"<tr><td>{escape(c)}</td><td>{_f(s['precision'], '{:.2f}')}</td><td>{_f(s['recall'], '{:.2f}')}</td>"
        f"<td>{s['support']}</td></tr>"
        for c, s in d.items()
    )
    return f"<h3>{title}</h3><table><tr><th>class</th><th>precision</th><th>recall</th><th>n</th></tr>{rows}</table>"


def render_html(r: dict) -> str:
    devs = "".join(
        f"<tr class='{d['state']}'><td>{d['device']}</td><td>{d['kind']}</td><td>{d['state']}</td>"
        f"<td>{d['readings']}</td><td>{d['events']}</td><td>{d['missing']}</td><td>{d['duplicates']}</td>"
        f"<td>{d['boots']}</td>"
        + "".join(
            f"<td>{d['counters'].get(k, '-')}</td>"
            for k in ("sampled", "rejected", "logged", "published", "dropped", "reconnects")
        )
        + f"<td>{escape(str(d.get('error') or ''))}</td></tr>"
        for d in r["devices"]
    )
    faults = "".join(
        f"<tr><td>{f['device']}</td><td>{f['boot'] or '-'}</td><td>{f['fault']}</td>"
        f"<td>{'-' if f['from_s'] is None else str(f['from_s']) + '-' + str(f['to_s']) + ' s'}</td><td>{f['detected']}</td>"
        f"<td>{_f(f['delay_s'], '{:.1f}')}</td></tr>"
        for f in r["fault_rows"]
    )
    metric_rows = "".join(f"<tr><td>{k}</td><td>{v}</td><td>{escape(d)}</td></tr>" for k, v, d in r["metric_rows"])
    img = f"<img alt='signal and events' src='data:image/png;base64,{r['plot']}'>" if r["plot"] else "<p>no plot</p>"
    fp = r.get("forecast_plot")
    fimg = f"<img alt='forecast against actual' src='data:image/png;base64,{fp}'>" if fp else "<p>no forecast plot</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>edgefleet demo report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;font-size:13px}}tr.offline td{{background:#fee}}</style></head><body>
<h1>edgefleet demo: fleet report</h1>
<p>{r["summary"]}</p>
<h2>Metrics</h2><table><tr><th>metric</th><th>value</th><th>how it is measured</th></tr>{metric_rows}</table>
<h2>Detected events against ground truth</h2>
{_prf_table("Activities (model class events vs replayed BasicMotions segments)", r["activity"])}
{_prf_table("Sensor faults (fault events vs injected faults)", r["faults"])}
<table><tr><th>device</th><th>boot</th><th>injected</th><th>when (s after boot)</th><th>detected as</th><th>delay s</th></tr>{faults}</table>
<h2>One node's signal and its events</h2>{img}
<h2>Forecast against actual (one node's held-out env temperature)</h2>{fimg}
<h2>Devices</h2><table><tr><th>device</th><th>scenario</th><th>state at end of run</th><th>readings</th><th>events</th>
<th>missing seq</th><th>dup deliveries</th><th>boots</th><th>sampled</th><th>rejected</th><th>logged</th><th>published</th>
<th>dropped</th><th>reconnects</th><th>error</th></tr>{devs}</table>
<h2>Look further</h2><pre>{escape(r["commands"])}</pre>
</body></html>"""


# ---------------------------------------------------------------- the run

# Written into --dir when a run starts: only a directory holding it is ever cleared for the next run.
RUN_MARKER = ".edgefleet-demo"


def clear_previous_run(work: Path, keep: bool) -> None:
    """Empties --dir for a new run, but only when it holds a previous demo run (our marker file).

    Why: the demo used to rmtree any non-empty --dir, so `--dir .` or `--dir ""` deleted the working directory.
    A directory with other files is refused and left untouched; with --keep it is used as it is and never marked
    (so a later run will not clear it either)."""
    if work.exists() and any(work.iterdir()):
        if keep:
            return
        if not (work / RUN_MARKER).is_file():
            raise EdgefleetError(
                f"--dir {work} is not empty and does not hold a previous demo run; nothing was deleted",
                hint="give a new or empty directory (default ./demo), or --keep to run in it without clearing",
            )
        import shutil

        log.info("demo: clearing the previous run in %s", work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / RUN_MARKER).write_text("a directory of `edgefleet demo`: the next run clears it\n")


def run_demo(*, workdir: str = "demo", devices: int = 20, duration: float = 60, keep: bool = False) -> dict:
    """`edgefleet demo`: the whole run in `workdir` (a previous run there is cleared unless `keep`); the report."""
    from tqdm import tqdm

    work = Path(workdir).resolve()
    clear_previous_run(work, keep)
    db = work / "fleet.db"
    model_dir = ensure_model()
    n = devices
    ids = [f"node-{i + 1:03d}" for i in range(n)]
    plans: list[NodePlan] = []
    (work / "nodes").mkdir(exist_ok=True)
    for i, dev in enumerate(ids):
        if i % 2 == 0:
            replay = work / "nodes" / f"{dev}.replay.csv"
            segs = basicmotions_replay(replay, 100 + i)
            plans.append(NodePlan(dev, "activity", activity_scenario(replay, 100 + i), segs, replay))
        else:
            plans.append(NodePlan(dev, "faults", fault_scenario(100 + i, duration)))
    broker = Fleet.secure_broker(work, ids).start()
    collector = None
    fleet = None
    try:
        fleet = Fleet(work, n, broker=broker, model=model_dir, scenarios=[p.scenario for p in plans],
                      status_interval_s=5)  # fmt: skip
        collector = start_collector(fleet.collector_url(), db, work / "collector.log")
        log.info("collector -> %s (log %s)", db, work / "collector.log")
        fleet.start()
        # a fault node gets a power cut and boots again; an activity node goes offline for good
        cut_node, stop_node = 1, n - 2 if n > 3 else n - 1
        t0 = time.monotonic()
        events_done = set()
        with tqdm(total=int(duration), unit="s", desc="fleet run", dynamic_ncols=True) as bar:
            while (el := time.monotonic() - t0) < duration:
                time.sleep(1)
                bar.update(1)
                if el > duration * 0.4 and "cut" not in events_done and n > 2:
                    fleet.kill(cut_node)
                    events_done.add("cut")
                if el > duration * 0.5 and "boot" not in events_done and n > 2:
                    fleet.restart(cut_node)
                    events_done.add("boot")
                if el > duration * 0.75 and "stop" not in events_done and n > 3:
                    fleet.stop_node(stop_node)
                    events_done.add("stop")
                s = fleet.summary()
                bar.set_postfix(up=s["processes"], online=s["online"], logged=s.get("logged", 0),
                                published=s.get("published", 0))  # fmt: skip
        time.sleep(1.0)
        end_status = fleet.status()
        boot_ms = {nd.device_id: list(nd.started_ms) for nd in fleet.nodes}
        run_end_ms = int(time.time() * 1000)
        boots = {nd.device_id: nd.boots for nd in fleet.nodes}
        flash = drain(fleet, db)
        wait_collector_idle(db)
    finally:
        shut_down(fleet, collector, broker)
    log.info("measuring L_infer (runner on the unix port) and A_forecast (forecast on env data)")
    l_infer = measure_inference(model_dir, fleet.heap)
    forecast = forecast_accuracy(db, work)
    report = build_report(db, plans, end_status, boot_ms, run_end_ms, boots, flash, l_infer, forecast, work)
    (work / "report.json").write_text(
        json.dumps({k: v for k, v in report.items() if k not in ("plot", "forecast_plot")}, indent=1)
    )
    (work / "report.html").write_text(render_html(report))
    (work / "alerts.toml").write_text(DEMO_ALERTS)
    return report


# The alert rules the demo's follow-up `serve --alerts` runs (docs/console.md, Alerts): on the demo's data
# they fire for the power-cut node's gap and its fault events; on a live fleet for offline nodes too.
DEMO_ALERTS = """# edgefleet demo: alert rules for `edgefleet serve --alerts` (docs/console.md, Alerts)
interval_s = 2

[[sink]]
name = "log"
type = "log"

[[rule]]
name = "node offline"
kind = "offline"
for_s = 30

[[rule]]
kind = "seq_gap"
max_missing = 0

[[rule]]
kind = "safe_mode"

[[rule]]
name = "sensor fault"
kind = "event"
event_kind = "fault"
"""


def build_report(db, plans, end_status, boot_ms, run_end_ms, boots, flash, l_infer, forecast, work) -> dict:
    from ..collect.storage import open_storage

    store = open_storage(f"sqlite:///{db}")
    try:
        rows = {r.device: r for r in store.fleet()}
    finally:
        store.close()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    devices, act_pairs, flt_pairs, fault_rows = [], [], [], []
    sampled = rejected = logged = published = 0
    for p in plans:
        st = end_status.get(p.device, {})
        c = st.get("counters", {})
        sampled += c.get("sampled", 0)
        rejected += c.get("rejected", 0)
        logged += c.get("logged", 0)
        published += c.get("published", 0)
        nread = con.execute("SELECT COUNT(*) FROM readings WHERE device = ?", (p.device,)).fetchone()[0]
        nev = con.execute("SELECT COUNT(*) FROM events WHERE device = ?", (p.device,)).fetchone()[0]
        row = rows.get(p.device)
        devices.append({"device": p.device, "kind": p.kind, "state": st.get("state", "never seen"), "readings": nread,
                        "events": nev, "missing": row.missing if row else 0, "duplicates": row.duplicates if row else 0,
                        "boots": boots.get(p.device, 0), "counters": c, "error": st.get("error"),
                        "flash": flash.get(p.device)})  # fmt: skip
        if p.kind == "activity":
            act_pairs += activity_pairs(con, p)
        else:
            pairs, frows = fault_pairs(con, p, boot_ms[p.device], run_end_ms)
            flt_pairs += pairs
            fault_rows += frows
    r_ingest, records, span = ingest_rate(con)
    lat = latency_stats(con)
    plot_plan = next((p for p in plans if p.kind == "activity"), None)
    plot = plot_node(con, plot_plan, replay_offset(con, plot_plan)) if plot_plan else ""
    con.close()
    classes = sorted({t for t, _ in act_pairs} | {p for _, p in act_pairs} - {"none"})
    e_buffer = published / logged if logged else 0.0
    r_noise = rejected / sampled if sampled else 0.0
    metrics = {"r_ingest": r_ingest, "records": records, "span_s": span, "latency": lat, "e_buffer": e_buffer,
               "r_noise": r_noise, "l_infer": l_infer, "forecast": forecast}  # fmt: skip
    forecast_plot = forecast.pop("plot", "")
    metric_rows = [
        ("R_ingest", f"{r_ingest:.1f} records/s", f"records stored / time from first to last stored ({records} in "
         f"{span:.0f} s); logged-to-stored p50 {_f(lat.get('p50_ms'), '{:.0f}')} ms, p99 {_f(lat.get('p99_ms'), '{:.0f}')} ms"),
        ("E_buffer", f"{e_buffer:.3f}", "sum of published / sum of logged, from each node's last status of the run"),
        ("R_noise", f"{r_noise:.4f}", "sum of rejected / sum of sampled (cleaning: range + Hampel), node status"),
        ("L_infer", f"{_f(l_infer.get('ms_total'), '{:.2f}')} ms",
         f"node runner on the MicroPython unix port (x64), features {_f(l_infer.get('us_per_features'), '{:.0f}')} us + "
         f"model {_f(l_infer.get('us_per_infer'), '{:.0f}')} us per window, {l_infer.get('windows')} BasicMotions "
         "test windows; an ESP32 is slower"),
        ("A_forecast", _f(forecast.get("a_forecast"), "{:.4f}"),
         "1 - mean(|y - y_hat| / |y|) of the node's forecast model kind (a forest predicting the change from the "
         "last value) on the fleet's env temperature, first 70% of each node train, last 30% test "
         f"({forecast.get('test_windows')} windows); naive last value {_f(forecast.get('naive_last_value'), '{:.4f}')}, "
         f"seasonal naive (one window back) {_f(forecast.get('seasonal_naive'), '{:.4f}')}: {forecast_verdict(forecast)}"),
        ("A_forecast (host)", _f(forecast.get("host", {}).get("a_forecast"), "{:.4f}"),
         host_forecast_text(forecast.get("host", {"error": "not measured"}))),
    ]  # fmt: skip
    online = sum(1 for d in devices if d["state"] == "online")
    commands = "\n".join([
        f"edgefleet fleet status --db sqlite:///{db}",
        f"edgefleet serve user add admin --role operator --users {work / 'console-users.json'}",
        f"edgefleet serve --db sqlite:///{db} --users {work / 'console-users.json'} --alerts {work / 'alerts.toml'}"
        "   # console: http://127.0.0.1:8080/, alerts in its log",
        f"edgefleet export --db sqlite:///{db} --sensor imu --out {work / 'imu.csv'}",
        f"open {work / 'report.html'}",
    ])  # fmt: skip
    return {
        "summary": f"{len(devices)} nodes, {online} online at the end of the run, {records} records stored, "
        f"{sum(d['missing'] for d in devices)} missing upstream (power cut), "
        f"{sum(d['duplicates'] for d in devices)} duplicate deliveries stored once.",
        "devices": devices,
        "activity": prf(act_pairs, classes),
        "faults": prf(flt_pairs, ["stuck", "unplugged"]),
        "fault_rows": fault_rows,
        "metrics": metrics,
        "metric_rows": metric_rows,
        "plot": plot,
        "forecast_plot": forecast_plot,
        "commands": commands,
    }
