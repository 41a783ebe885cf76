// Dead letters (messages the collector refused, with the reason) and the collector's health from the database.
"use strict";
(() => {
  const when = (ms) => (ms ? new Date(ms).toLocaleString() : "-");
  function load() {
    fetch("/api/deadletters").then((r) => r.json()).then((j) => {
      const h = document.getElementById("health"); h.replaceChildren();
      const age = j.health.last_write_ms ? ((j.now_ms - j.health.last_write_ms) / 1000).toFixed(1) + " s ago" : "never";
      const rows = [["database", `${j.health.backend} (schema v${j.health.schema})`], ["last message stored", `${when(j.health.last_write_ms)} (${age})`],
        ...Object.entries(j.health.counts).map(([k, v]) => [k.replace("_", " "), v])];
      for (const [k, v] of rows) { const r = h.insertRow(); r.insertCell().textContent = k; r.insertCell().textContent = String(v); }
      const tb = document.querySelector("#dead tbody"); tb.replaceChildren();
      for (const d of j.dead_letters) { const r = tb.insertRow(); for (const v of [when(d.received_ms), d.topic, d.reason, d.size, d.payload]) r.insertCell().textContent = String(v); }
    });
  }
  load(); setInterval(load, 5000);
})();
