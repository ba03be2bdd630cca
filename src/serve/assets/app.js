// unoflow serve: keys to label rows, and live node states on the DAG page. Plain script, no
// dependencies, nothing fetched from elsewhere.
"use strict";

(function () {
  const rows = () => Array.from(document.querySelectorAll("[data-row-id]"));
  let current = -1;

  function select(i) {
    const all = rows();
    if (all.length === 0) return;
    current = Math.max(0, Math.min(all.length - 1, i));
    all.forEach((r, j) => r.classList.toggle("current", j === current));
    all[current].focus({ preventScroll: true });
    all[current].scrollIntoView({ block: "nearest" });
  }

  function status(text, bad) {
    let el = document.getElementById("status");
    if (!el) {
      el = document.createElement("div");
      el.id = "status";
      document.body.appendChild(el);
    }
    el.textContent = text;
    el.className = bad ? "bad" : "";
  }

  async function label(verdict) {
    const all = rows();
    if (current < 0) select(0);
    const row = all[current];
    if (!row) return;
    const body = JSON.stringify({ node: row.dataset.node, row_id: row.dataset.rowId, label: verdict });
    try {
      const answer = await fetch("/api/labels", { method: "POST", headers: { "Content-Type": "application/json" }, body });
      if (!answer.ok) {
        status("label not saved: " + (await answer.text()), true);
        return;
      }
      row.dataset.label = verdict;
      status(verdict + " " + row.dataset.rowId.slice(0, 12), false);
      select(current + 1);
    } catch (e) {
      status("label not saved: " + e, true);
    }
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA")) return;
    switch (e.key) {
      case "j": select(current + 1); break;
      case "k": select(current - 1); break;
      case "a": label("accept"); break;
      case "r": label("reject"); break;
      case "s": label("skip"); break;
      default: return;
    }
    e.preventDefault();
  });

  document.addEventListener("click", (e) => {
    const row = e.target.closest && e.target.closest("[data-row-id]");
    if (row && !e.target.closest("a")) select(rows().indexOf(row));
  });

  // The DAG page follows a run: states and row counts from /api/dag every two seconds.
  const live = document.getElementById("live");
  if (live) {
    setInterval(async () => {
      try {
        const answer = await fetch("/api/dag");
        if (!answer.ok) return;
        const dag = await answer.json();
        live.textContent = dag.live ? "a run is at work" : "no run at work";
        for (const n of dag.nodes) {
          document.querySelectorAll('[data-state-of="' + CSS.escape(n.name) + '"]').forEach((el) => {
            el.classList.remove("cached", "stale", "missing", "view", "running");
            el.classList.add(n.state);
            if (el.tagName === "TD") el.textContent = n.state;
          });
          document.querySelectorAll('[data-rows-of="' + CSS.escape(n.name) + '"]').forEach((el) => {
            el.textContent = n.rows === null ? "" : String(n.rows);
          });
        }
      } catch (e) {
        /* the server is restarting: try again next time */
      }
    }, 2000);
  }
})();
