// Rollouts: every staged over-the-air rollout with its stages' counts and last gate; operators may pause or abort.
"use strict";
(() => {
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const operator = document.querySelector('meta[name="role"]').content === "operator";
  const when = (ms) => (ms ? new Date(ms).toLocaleString() : "-");
  const tb = document.querySelector("#rollouts tbody");

  function gateText(g) {
    if (!g) return "-";
    const failed = g.checks.filter((c) => !c.passed).map((c) => `${c.name}: ${c.detail}`);
    return g.passed ? `stage ${g.stage + 1} passed` : `stage ${g.stage + 1} FAILED (${failed.join("; ")})`;
  }
  function act(id, action) {
    fetch(`/api/rollouts/${encodeURIComponent(id)}/${action}`, { method: "POST", headers: { "X-CSRF-Token": csrf } })
      .then((r) => r.json()).then((j) => { if (j.error) alert(j.error); load(); });
  }
  function load() {
    fetch("/api/rollouts").then((r) => r.json()).then((j) => {
      tb.replaceChildren();
      for (const r of j.rollouts) {
        const row = tb.insertRow(); row.dataset.rollout = r.id;
        const stages = r.stages.map((s) => `${s.stage}: ${s.confirmed}/${s.failed}/${s.rolled_back} of ${s.devices}`).join(", ");
        const cells = [r.id, `${r.kind} v${r.version} (${r.sha256})`, r.target, r.reason ? `${r.state}: ${r.reason}` : r.state,
          `${r.stage}/${r.n_stages} ${r.phase}`, stages, gateText(r.gates[r.gates.length - 1]), when(r.updated_ms)];
        const cols = ["id", "artifact", "target", "state", "stage", "stages", "gate", "updated"];
        cells.forEach((v, i) => { const c = row.insertCell(); c.textContent = String(v); c.dataset.col = cols[i]; });
        const c = row.insertCell();
        if (operator && (r.state === "running" || r.state === "paused")) {
          for (const a of r.state === "running" ? ["pause", "abort"] : ["abort"]) {
            const b = document.createElement("button"); b.textContent = a; b.dataset.action = a;
            b.addEventListener("click", () => act(r.id, a)); c.appendChild(b);
          }
        }
      }
    });
  }
  load(); setInterval(load, 3000);
})();
