// Fleet page: every device, sortable and filterable; rows change live from /api/live/fleet (server-sent events).
"use strict";
(() => {
  const COLS = [
    ["device", "device"], ["state", "state"], ["last_seen_ms", "last seen"], ["missing", "seq gaps"],
    ["e_buffer", "E_buffer"], ["r_noise", "R_noise"], ["safe_mode", "safe mode"], ["model", "model"],
    ["model_ver", "model version"], ["ota", "last update"], ["rollout", "rollout"], ["fw", "firmware"], ["records", "records"],
    ["logged", "logged (lifetime)"], ["balance", "logged vs records"], ["heap_free", "free heap"], ["error", "error"],
  ];
  const devices = new Map();
  let sortKey = "device", sortDir = 1, timer = null;
  const tbody = document.querySelector("#fleet tbody");
  const thead = document.querySelector("#fleet thead");
  const filter = document.getElementById("filter");
  const live = document.getElementById("live");

  const tr = document.createElement("tr");
  for (const [k, label] of COLS) {
    const th = document.createElement("th"); th.textContent = label; th.dataset.key = k;
    th.addEventListener("click", () => { sortDir = sortKey === k ? -sortDir : 1; sortKey = k; render(); });
    tr.appendChild(th);
  }
  thead.appendChild(tr);

  const when = (ms) => (ms ? new Date(ms).toLocaleString() : "-");
  function cell(d, k) {
    const v = d[k];
    if (k === "last_seen_ms") return when(v);
    if (k === "safe_mode") return v === null ? "-" : v ? "SAFE MODE" : "no";
    if (k === "e_buffer" || k === "r_noise") return v === null || v === undefined ? "-" : Number(v).toFixed(3);
    return v === null || v === undefined ? "-" : String(v);
  }
  function cmp(a, b) {
    const x = a[sortKey], y = b[sortKey];
    if (x === y) return a.device < b.device ? -1 : 1;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * sortDir;
  }
  function render() {
    const q = filter.value.trim().toLowerCase();
    const rows = [...devices.values()].filter((d) => !q || COLS.some(([k]) => cell(d, k).toLowerCase().includes(q)));
    rows.sort(cmp);
    const frag = document.createDocumentFragment();
    for (const d of rows) {
      const r = document.createElement("tr");
      r.dataset.device = d.device;
      r.className = d.state + (d.safe_mode ? " safe" : "");
      for (const [k] of COLS) {
        const td = document.createElement("td"); td.dataset.col = k;
        if (k === "device") { const a = document.createElement("a"); a.href = "/device/" + encodeURIComponent(d.device); a.textContent = d.device; td.appendChild(a); }
        else td.textContent = cell(d, k);
        r.appendChild(td);
      }
      frag.appendChild(r);
    }
    tbody.replaceChildren(frag);
    const online = [...devices.values()].filter((d) => d.state === "online").length;
    document.getElementById("summary").textContent = `${rows.length} of ${devices.size} devices, ${online} online`;
    document.querySelectorAll("#fleet th").forEach((th) => th.classList.toggle("sorted", th.dataset.key === sortKey));
  }
  function schedule() { if (!timer) timer = setTimeout(() => { timer = null; render(); }, 100); }
  filter.addEventListener("input", schedule);

  fetch("/api/fleet").then((r) => r.json()).then((j) => {
    for (const d of j.devices) devices.set(d.device, d);
    render();
    const es = new EventSource("/api/live/fleet?since=" + j.now_ms);
    es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    es.onerror = () => { live.textContent = "reconnecting"; live.className = "live"; };
    es.addEventListener("devices", (ev) => {
      for (const d of JSON.parse(ev.data).devices) {
        devices.set(d.device, d);
      }
      schedule();
    });
  });
})();
