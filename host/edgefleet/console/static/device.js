// Device page: a chart per sensor (server-downsampled), events drawn on it, the event timeline, the last status,
// commands and their acks. New readings arrive over /api/live/device/<id> (server-sent events) by seq watermark.
"use strict";
(() => {
  const dev = document.querySelector('meta[name="device"]').content;
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const role = document.querySelector('meta[name="role"]').content;
  const live = document.getElementById("live");
  const follow = document.getElementById("follow");
  const MAX_LIVE = 6000;
  let state = null, es = null;

  const when = (ms) => (ms ? new Date(ms).toLocaleString() : "-");
  const toLocal = (ms) => { const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000); return d.toISOString().slice(0, 19); };
  const fromLocal = (s) => new Date(s).getTime();

  function range() {
    const f = document.getElementById("from").value, t = document.getElementById("to").value;
    if (!follow.checked && f && t) return [fromLocal(f), fromLocal(t)];
    const span = Number(document.getElementById("range").value);
    const now = Date.now();
    return [now - span, now + 5000];
  }

  function drawAll() {
    if (!state) return;
    const host = document.getElementById("charts");
    const [x0, x1] = follow.checked ? [Date.now() - Number(document.getElementById("range").value), Date.now() + 2000] : state.xrange;
    let total = 0;
    for (const [sensor, data] of Object.entries(state.sensors)) {
      let c = host.querySelector(`canvas[data-sensor="${sensor}"]`);
      if (!c) { c = document.createElement("canvas"); c.dataset.sensor = sensor; c.className = "chart"; host.appendChild(c); }
      c.dataset.points = data.ts.length;
      total += data.ts.length;
      const evs = state.events.filter((e) => !e.sensor || e.sensor === sensor || e.kind !== "fault");
      EFChart.draw(c, data, evs, [x0, x1], sensor);
    }
    if (!Object.keys(state.sensors).length) host.textContent = "no readings in this range";
    document.getElementById("pts").textContent = `${total} points drawn (${state.raw} stored in range)`;
  }

  function merge(sensors) {
    for (const [sensor, add] of Object.entries(sensors)) {
      let s = state.sensors[sensor];
      if (!s) s = state.sensors[sensor] = { ts: [], flags: [], channels: {} };
      const n = s.ts.length;
      s.ts.push(...add.ts); s.flags.push(...add.flags);
      for (const ch of new Set([...Object.keys(s.channels), ...Object.keys(add.channels)])) {
        if (!s.channels[ch]) s.channels[ch] = new Array(n).fill(null);
        s.channels[ch].push(...(add.channels[ch] || new Array(add.ts.length).fill(null)));
      }
      const drop = s.ts.length - MAX_LIVE;
      if (drop > 0) { s.ts.splice(0, drop); s.flags.splice(0, drop); for (const ch in s.channels) s.channels[ch].splice(0, drop); }
    }
  }

  function showStatus(d) {
    const st = document.getElementById("state");
    st.textContent = d.state + (d.safe_mode ? " / SAFE MODE" : ""); st.className = "state " + d.state;
    const rows = [["state", d.state], ["last seen", when(d.last_seen_ms)], ["state since", when(d.state_ms)],
      ["safe mode", d.safe_mode === null ? "-" : d.safe_mode ? "yes" : "no"], ["error", d.error || "-"],
      ["firmware", d.fw || "-"], ["model", d.model || "-"], ["free heap", d.heap_free ?? "-"], ["boot", d.boot ?? "-"],
      ["uptime (s)", d.uptime_s ?? "-"], ["E_buffer", d.e_buffer ?? "-"], ["R_noise", d.r_noise ?? "-"],
      ["records", d.records], ["seq", d.min_seq === null ? "-" : `${d.min_seq}-${d.max_seq}`], ["missing (gaps)", d.missing],
      ["duplicates", d.duplicates], ["boots seen", d.lifetime.boots],
      ...Object.entries(d.lifetime.counters).map(([k, v]) => ["lifetime " + k, v]),
      ["logged vs records", d.lifetime.balance], ["lifetime counters", d.lifetime_note],
      ...Object.entries(d.counters || {}).map(([k, v]) => ["this boot " + k, v])];
    const t = document.getElementById("status"); t.replaceChildren();
    for (const [k, v] of rows) { const r = t.insertRow(); r.insertCell().textContent = k; r.insertCell().textContent = String(v); }
  }

  function showEvents() {
    const tb = document.querySelector("#events tbody"); tb.replaceChildren();
    for (const e of state.events.slice(-200).reverse()) {
      const r = tb.insertRow(); r.className = "ev " + e.kind;
      for (const v of [when(e.ts_ms), e.seq, e.kind, e.label, Number(e.score).toFixed(2), e.sensor || e.action || ""]) r.insertCell().textContent = String(v);
    }
  }

  function showCommands() {
    const acks = new Map(state.acks.map((a) => [a.id, a]));
    const tb = document.querySelector("#cmds tbody"); tb.replaceChildren();
    for (const c of state.commands.slice().reverse()) {
      const a = acks.get(c.id); const r = tb.insertRow();
      const ack = a ? (a.ok ? "ok " : "FAILED ") + when(a.received_ms) + (a.body && a.body.error ? " " + a.body.error : "") : "waiting";
      for (const v of [when(c.sent_ms), c.id, c.cmd + " " + JSON.stringify(c.args), c.user, ack]) r.insertCell().textContent = v;
    }
  }

  function connect() {
    if (es) es.close();
    if (!follow.checked) { live.textContent = "paused"; live.className = "live"; return; }
    let q = `after=${state.lastSeq}&after_event=${state.lastEvent}`;
    if (state.log !== null) q += `&log=${encodeURIComponent(state.log)}`;
    if (state.eventLog !== null) q += `&event_log=${encodeURIComponent(state.eventLog)}`;
    es = new EventSource(`/api/live/device/${encodeURIComponent(dev)}?${q}`);
    es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    es.onerror = () => { live.textContent = "reconnecting"; live.className = "live"; };
    es.addEventListener("update", (ev) => {
      const u = JSON.parse(ev.data);
      if (u.sensors) { merge(u.sensors); state.lastSeq = u.last_seq; state.log = u.log; }
      if (u.events) { state.events.push(...u.events); state.lastEvent = u.events[u.events.length - 1].seq; state.eventLog = u.event_log; showEvents(); }
      if (u.device) showStatus(u.device);
      drawAll();
    });
  }

  function load() {
    const [f, t] = range();
    return fetch(`/api/device/${encodeURIComponent(dev)}?from=${f}&to=${t}&points=1500`).then((r) => r.json()).then((j) => {
      if (j.error) { document.getElementById("charts").textContent = j.error; return; }
      state = { sensors: j.series.sensors, raw: j.series.raw_rows, events: j.events, acks: j.acks, commands: j.commands,
        lastSeq: j.last_reading_seq, lastEvent: j.last_event_seq, log: j.reading_log, eventLog: j.event_log, xrange: [f, t] };
      document.getElementById("from").value = toLocal(f); document.getElementById("to").value = toLocal(t);
      showStatus(j.device); showEvents(); showCommands(); drawAll(); connect();
      document.getElementById("cmdform").hidden = !(j.can_command && role === "operator");
    });
  }

  document.getElementById("apply").addEventListener("click", () => { follow.checked = false; load(); });
  document.getElementById("range").addEventListener("change", () => { document.getElementById("from").value = ""; load(); });
  follow.addEventListener("change", () => { if (follow.checked) load(); else connect(); });
  window.addEventListener("resize", drawAll);
  document.getElementById("cmdform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const msg = document.getElementById("cmdmsg");
    let args = null;
    const raw = document.getElementById("args").value.trim();
    if (raw) { try { args = JSON.parse(raw); } catch (e) { msg.textContent = "args: not JSON"; return; } }
    fetch(`/api/device/${encodeURIComponent(dev)}/command`, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ cmd: document.getElementById("cmd").value, args }) })
      .then((r) => r.json()).then((j) => { msg.textContent = j.error || `sent ${j.id}`; if (!j.error) { state.commands.push(j); showCommands(); } });
  });
  setInterval(() => { if (state && state.commands.some((c) => !state.acks.find((a) => a.id === c.id))) refreshAcks(); }, 2000);
  function refreshAcks() {
    fetch(`/api/device/${encodeURIComponent(dev)}?from=0&to=1&points=10`).then((r) => r.json()).then((j) => { if (!j.error) { state.acks = j.acks; state.commands = j.commands; showCommands(); } });
  }
  load();
})();
