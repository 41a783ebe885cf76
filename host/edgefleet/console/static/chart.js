// edgefleet's own small canvas chart: time on x, one line per channel, flagged samples and events drawn on it.
// Written for the console (no library, nothing loaded from the internet).
"use strict";
const EFChart = (() => {
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  const EVENT_COLORS = { fault: "#d62728", class: "#2ca02c", anomaly: "#ff7f0e", forecast: "#9467bd" };

  function fmtTime(ms, span) {
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, "0");
    const hm = `${p(d.getHours())}:${p(d.getMinutes())}`;
    if (span < 10 * 60 * 1000) return `${hm}:${p(d.getSeconds())}`;
    if (span < 2 * 86400 * 1000) return hm;
    return `${d.getMonth() + 1}/${d.getDate()} ${hm}`;
  }

  function niceTicks(lo, hi, n) {
    const span = hi - lo || 1;
    const step0 = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(v);
    return out;
  }

  // data: {ts: [...], flags: [...], channels: {name: [...]}}; events: [{ts_ms, kind, label, sensor}]
  function draw(canvas, data, events, xrange, title) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = w * dpr; canvas.height = h * dpr;
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const L = 56, R = 10, T = 22, B = 22;
    const [x0, x1] = xrange;
    let lo = Infinity, hi = -Infinity;
    const names = Object.keys(data.channels);
    for (const n of names) for (const v of data.channels[n]) if (v !== null) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (lo === Infinity) { lo = 0; hi = 1; }
    if (lo === hi) { lo -= 1; hi += 1; }
    const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
    const X = (t) => L + ((t - x0) / (x1 - x0 || 1)) * (w - L - R);
    const Y = (v) => T + (1 - (v - lo) / (hi - lo)) * (h - T - B);
    g.font = "11px sans-serif"; g.fillStyle = "#555"; g.strokeStyle = "#e4e4e4"; g.lineWidth = 1;
    for (const v of niceTicks(lo, hi, 5)) {
      const y = Y(v); g.beginPath(); g.moveTo(L, y); g.lineTo(w - R, y); g.stroke();
      g.fillText(String(+v.toPrecision(4)), 4, y + 4);
    }
    for (const t of niceTicks(x0, x1, 6)) {
      const x = X(t); g.beginPath(); g.moveTo(x, T); g.lineTo(x, h - B); g.stroke();
      g.fillText(fmtTime(t, x1 - x0), x - 18, h - 6);
    }
    // events: a vertical line each, the label on top
    for (const e of events || []) {
      if (e.ts_ms < x0 || e.ts_ms > x1) continue;
      const x = X(e.ts_ms);
      g.strokeStyle = EVENT_COLORS[e.kind] || "#999"; g.setLineDash([3, 3]);
      g.beginPath(); g.moveTo(x, T); g.lineTo(x, h - B); g.stroke(); g.setLineDash([]);
      g.fillStyle = g.strokeStyle; g.fillText(e.label, x + 2, T + 10);
    }
    names.forEach((n, i) => {
      const vals = data.channels[n];
      g.strokeStyle = COLORS[i % COLORS.length]; g.lineWidth = 1.2; g.beginPath();
      let pen = false;
      for (let k = 0; k < vals.length; k++) {
        const v = vals[k];
        if (v === null) { pen = false; continue; }
        const x = X(data.ts[k]), y = Y(v);
        if (pen) g.lineTo(x, y); else g.moveTo(x, y);
        pen = true;
      }
      g.stroke();
      g.fillStyle = g.strokeStyle; g.fillRect(L + 8 + i * 90, 6, 10, 3); g.fillText(n, L + 22 + i * 90, 11);
    });
    // samples the node flagged (cleaning): red dots
    g.fillStyle = "#d62728";
    for (let k = 0; k < data.ts.length; k++) {
      if (!data.flags[k]) continue;
      for (const n of names) { const v = data.channels[n][k]; if (v !== null) { g.beginPath(); g.arc(X(data.ts[k]), Y(v), 2.5, 0, 7); g.fill(); } }
    }
    g.fillStyle = "#222"; g.font = "bold 12px sans-serif"; g.fillText(title || "", w - R - 8 * (title || "").length, 12);
  }
  return { draw, fmtTime };
})();
