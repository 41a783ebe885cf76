"""report.html for a converted model: plots (matplotlib, Agg, PNG inlined as base64) and the parity table."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _confusion(y, pred, classes) -> str:
    n = len(classes)
    m = np.zeros((n, n), dtype=int)
    for t, p in zip(y, pred, strict=True):
        m[int(t), int(p)] += 1
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1.5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="black" if m[i, j] < m.max() / 2 else "white")
    ax.set_title("confusion matrix (test split)")
    return _png(fig)


def _per_class(per: dict) -> str:
    names = list(per)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4, len(names) * 1.2), 3))
    ax.bar(x - 0.2, [per[c]["precision"] for c in names], 0.4, label="precision")
    ax.bar(x + 0.2, [per[c]["recall"] for c in names], 0.4, label="recall")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    ax.set_title("per-class precision and recall")
    return _png(fig)


def _relevance(rel: list) -> str:
    top = rel[:20][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(top) + 1))
    ax.barh([n for n, _ in top], [v for _, v in top])
    ax.set_xlabel("mutual information with the label (nats)")
    ax.set_title("feature relevance S_feature (top 20)")
    return _png(fig)


def _sizes(m: dict, out_dir: Path) -> str:
    h = out_dir / "model.h"
    items = {"model.efm (flash)": m["flash_bytes"], "node heap (measured)": max(0, m["ram_bytes"]),
             "model.h source": h.stat().st_size if h.exists() else 0}  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.barh(list(items), list(items.values()))
    for i, v in enumerate(items.values()):
        ax.text(v, i, f" {v:,} B", va="center")
    ax.set_title("model size")
    return _png(fig)


def headline(m: dict) -> str:
    """One line that leads with what the node will do (its runner on the test split), the host model beside it."""
    mt = m["metrics"]
    parts = []
    if "accuracy_node" in mt:
        parts.append(f"node accuracy {mt['accuracy_node']:.3f} (host model {mt['accuracy']:.3f})")
        if "case_accuracy_node" in mt:
            parts.append(f"per case {mt['case_accuracy_node']:.3f} over {mt['n_cases']} cases")
    if "fpr_measured" in mt:
        lo, hi = mt["fpr_ci95"]
        parts.append(f"false positives {mt['fpr_measured']:.2%} [{lo:.2%}, {hi:.2%}] on {mt['n_normal_test']} normal "
                     f"windows (target {mt['fpr_target']:.2%})")  # fmt: skip
    parts.append(f"agreement host/node {m['parity']['a_vs_c']:.2%}")
    parts.append(f"body {m['model_file']['bytes']:,} B on {m.get('board', '?')}")
    return ", ".join(parts)


def lead(m: dict) -> str:
    """The headline: what the node will do (its runner on the test split), the host model beside it."""
    mt = m["metrics"]
    rows = []
    if "accuracy_node" in mt:
        rows.append(("accuracy on the node (its runner, test split)", f"{mt['accuracy_node']:.3f}",
                     f"host model {mt['accuracy']:.3f}"))  # fmt: skip
        if "case_accuracy_node" in mt:
            rows.append((f"per case, majority vote over each case's windows ({mt['n_cases']} cases)",
                         f"{mt['case_accuracy_node']:.3f}", f"host model {mt['case_accuracy']:.3f}"))  # fmt: skip
    if mt.get("fpr_measured") is not None:
        lo, hi = mt["fpr_ci95"]
        rows.append((f"false-positive rate on {mt['n_normal_test']} held-out normal windows (node)",
                     f"{mt['fpr_measured']:.2%} (95% Wilson interval {lo:.2%} to {hi:.2%})",
                     f"target {mt.get('fpr_target', 0):.2%}, threshold from {mt.get('n_normal_threshold', '?')} "
                     f"cross-validated windows"))  # fmt: skip
    rows.append(("trained model = node runner", f"{m['parity']['a_vs_c']:.2%}", "of test windows"))
    body = "".join(f"<tr><td>{html.escape(a)}</td><td><b>{html.escape(b)}</b></td><td>{html.escape(c)}</td></tr>"
                   for a, b, c in rows)  # fmt: skip
    warn = mt.get("warning")
    return ("<h2>On the node</h2><table border=1 cellpadding=4>" + body + "</table>"
            + (f"<p><b>Warning:</b> {html.escape(warn)}</p>" if warn else ""))  # fmt: skip


def fit_section(m: dict) -> str:
    """What train chose to fit the board, its accuracy cost, and what quantization floored or clipped."""
    e = html.escape
    f = m.get("fit") or {}
    out = []
    if f:
        ch = f.get("chosen", {})
        cost = ""
        if f.get("resized") and f.get("accuracy_requested") is not None:
            cost = f"; host test accuracy {f['accuracy_requested']:.3f} as requested -> {f['accuracy_chosen']:.3f} as fitted"
        out.append(f"<h2>Fit to {e(str(f.get('board')))}</h2><p>body {ch.get('body_bytes', 0):,} of "
                   f"{f.get('max_body', 0):,} bytes; chosen {e(str(ch))}"
                   + (f", requested {e(str(f.get('requested')))}" if f.get("resized") else " (as requested)") + cost
                   + "</p>")  # fmt: skip
    t = m.get("timing") or {}
    if t:
        out.append(f"<p>estimated {t['board_ms_per_window']:.1f} ms per window on {e(t['board'])} "
                   f"(budget {t['budget_ms']:.0f} ms)</p>")  # fmt: skip
    q = m.get("quantization") or {}
    if q.get("floored") or q.get("clipped"):
        out.append("<h3>Quantization</h3><p>range floored (near-constant, float32 error bound): "
                   f"{e(', '.join(q.get('floored', [])) or 'none')}; clipped heavy tails (fraction of training "
                   f"values at the clamp): {e(', '.join(f'{k} {v:.2%}' for k, v in q.get('clipped', {}).items()) or 'none')}</p>")  # fmt: skip
    return "".join(out)


def write(path: Path, m: dict, res: dict) -> None:
    e = html.escape
    parts = [f"<html><head><meta charset='utf-8'><title>{e(m['name'])}</title></head><body style='font-family:sans-serif'>",
             f"<h1>{e(m['name'])}: {e(m['model'])} ({e(m['task'])})</h1>",
             f"<p>data {e(str(m['data']))}, sensor {e(m['sensor'])}, channels {e(', '.join(m['channels']))}, window "
             f"{m['window']} hop {m['hop']}, {len(m['features'])} features, model file {m['flash_bytes']:,} bytes "
             f"(sha256 {m['model_file']['sha256'][:16]}..., signed: {m['model_file']['signed']})</p>",
             lead(m),
             "<h2>Metrics</h2><pre>" + e(str({k: v for k, v in m["metrics"].items() if k != "per_class"})) + "</pre>",
             fit_section(m)]  # fmt: skip
    if m["task"] == "classify":
        parts.append(_confusion(res["y"], res["pred"], m["classes"]))
        parts.append(_per_class(m["metrics"]["per_class"]))
    if m["feature_relevance"]:
        parts.append(_relevance(m["feature_relevance"]))
    parts.append(_sizes(m, path.parent))
    p = m["parity"]
    parts.append("<h2>Parity on the full test split</h2><table border=1 cellpadding=4>"
                 "<tr><th>pair</th><th>agreement</th></tr>"
                 f"<tr><td>(a) trained model = (c) node runner (MicroPython)</td><td>{p['a_vs_c']:.2%}</td></tr>"
                 f"<tr><td>(b) emlearn C (gcc) = (c) node runner, same int16 features</td><td>{p['b_vs_c']:.2%}</td></tr>"
                 f"<tr><td>(a) trained model = (b) emlearn C on host features</td><td>{p['a_vs_b']:.2%}</td></tr>"
                 f"<tr><td>our C core (firmware/cmodule) = (b) emlearn C</td><td>{p['core_vs_b']:.2%}</td></tr>"
                 f"<tr><td>int16 features: host (float64) = node (float32), whole rows</td><td>{p['q_host_vs_node']:.2%} "
                 f"(max |diff| {p['q_max_abs_diff']})</td></tr></table>")  # fmt: skip
    dis = m["disagreements"]
    parts.append(f"<h3>Disagreements ({len(dis)})</h3>")
    if dis:
        parts.append(
            "<table border=1 cellpadding=3><tr><th>pair</th><th>window</th><th>truth</th><th>left</th><th>right</th></tr>"
        )
        parts += [f"<tr><td>{d['pair']}</td><td>{d['window']}</td><td>{e(str(d['truth']))}</td><td>{e(str(d['left']))}</td>"
                  f"<td>{e(str(d['right']))}</td></tr>" for d in dis]  # fmt: skip
        parts.append("</table>")
    else:
        parts.append("<p>none</p>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
