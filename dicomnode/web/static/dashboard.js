// Dashboard: reload the figures from /api/stats in the background, without reloading the page.
// Served from /static (the CSP allows no inline script); every value is written as text, never as HTML.
(function () {
  const status = document.getElementById("refresh");
  if (!status) return;
  const every = Math.max(1, Number(status.dataset.refreshS) || 5) * 1000;
  const updated = document.getElementById("updated-at");

  function time(iso) { return iso ? String(iso).replace("T", " ").slice(0, 19) : ""; }
  function age(s) {
    if (s === null || s === undefined) return "";
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return s < 172800 ? (s / 3600).toFixed(1) + " h" : (s / 86400).toFixed(1) + " d";
  }
  function bytes(n) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i];
  }
  function shorten(text, limit) {
    text = (text || "").split(/\s+/).join(" ").trim();
    return text.length <= limit ? text : text.slice(0, limit - 1) + "\u2026";
  }
  function lookup(stats, path) {
    return path.split(".").reduce((v, k) => (v === null || v === undefined ? v : v[k]), stats);
  }

  function cards(stats) {
    document.querySelectorAll("[data-stat]").forEach((el) => {
      const value = lookup(stats, el.dataset.stat);
      el.textContent = el.dataset.format === "bytes" ? bytes(value || 0) : String(value === undefined ? 0 : value);
    });
    const deadLink = document.querySelector("#dead-letters a");
    if (deadLink) deadLink.textContent = String(stats.dead_letters);
    const dead = document.getElementById("dead-letters-card");
    if (dead) dead.classList.toggle("bad", stats.dead_letters > 0);
  }

  function deliveries(stats) {
    const body = document.querySelector("#deliveries-by-state tbody") || document.getElementById("deliveries-by-state");
    if (!body) return;
    const rows = Object.keys(stats.deliveries_by_state).sort().map((state) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      const td = document.createElement("td");
      th.textContent = state;
      td.textContent = String(stats.deliveries_by_state[state]);
      td.dataset.stat = "deliveries_by_state." + state;
      tr.append(th, td);
      return tr;
    });
    if (rows.length) body.replaceChildren(...rows);
  }

  function destinationRow(table, name) {
    for (const tr of table.querySelectorAll("tr[data-destination]")) {
      if (tr.dataset.destination === name) return tr;
    }
    // a destination that appeared since the page was drawn (e.g. "sender"): a row without a C-ECHO button
    const template = table.querySelector("tr[data-destination]");
    if (!template) return null;
    const tr = template.cloneNode(true);
    tr.dataset.destination = name;
    tr.cells[0].textContent = name;
    const form = tr.querySelector("form");
    if (form) form.remove();
    table.tBodies[0].append(tr);
    return tr;
  }

  function destinations(stats) {
    const table = document.getElementById("destination-health");
    if (!table) return;
    for (const d of stats.destinations) {
      const tr = destinationRow(table, d.destination);
      if (!tr) continue;
      tr.dataset.state = d.state;
      tr.classList.toggle("warn-row", d.warning);
      const badge = tr.querySelector('[data-field="state"]');
      badge.textContent = d.state;
      badge.className = "badge h-" + d.state;
      tr.querySelector('[data-field="pending"]').textContent = String(d.pending);
      tr.querySelector('[data-field="oldest_pending_age_s"]').textContent = age(d.oldest_pending_age_s);
      tr.querySelector('[data-field="dead"]').textContent = String(d.dead);
      tr.querySelector('[data-field="last_success_at"]').textContent = time(d.last_success_at) || "never";
      tr.querySelector('[data-field="last_failure_at"]').textContent = time(d.last_failure_at);
      const error = tr.querySelector('[data-field="last_error_text"]');
      error.textContent = shorten(d.last_error, 60);
      error.title = d.last_error || "";
    }
  }

  function badge(text, css, title) {
    const span = document.createElement("span");
    span.className = "badge " + css;
    span.textContent = text;
    if (title) span.title = title;
    return span;
  }

  function seriesRow(r) {
    const cells = [];
    const add = (...content) => { const td = document.createElement("td"); td.append(...content); cells.push(td); return td; };
    add(time(r.first_received_at)).title = r.first_received_at || "";
    add(r.patient_id || "");
    const link = document.createElement("a");
    link.href = "/series/" + r.series_instance_uid;
    link.textContent = (r.series_number === null ? "" : r.series_number) + " " + (r.series_description || r.series_instance_uid);
    add(link);
    add(r.modality || "");
    add(String(r.instance_count));
    add(r.calling_ae || "");
    add(badge(r.status, "s-" + r.status, r.status_reason));
    add(...(r.job_state ? [badge(r.job_state, "j-" + r.job_state), " " + (r.job_progress || "")] : []));
    add(r.verdict || "");
    const tr = document.createElement("tr");
    tr.append(...cells);
    return tr;
  }

  async function recentSeries() {
    const body = document.querySelector("#recent-series tbody");
    if (!body) return;
    const response = await fetch("/api/series?limit=10", { headers: { Accept: "application/json", "X-Dicomnode-Background": "1" } });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const rows = await response.json();
    if (rows.length) body.replaceChildren(...rows.map(seriesRow));
  }

  async function refresh() {
    try {
      // X-Dicomnode-Background: this poll does not count as activity for the session's idle timeout
      const response = await fetch("/api/stats", { headers: { Accept: "application/json", "X-Dicomnode-Background": "1" } });
      if (response.status === 401) {
        status.textContent = "The session has ended: reload the page to log in again.";
        status.classList.add("error");
        return; // no more polling
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const stats = await response.json();
      cards(stats);
      deliveries(stats);
      destinations(stats);
      await recentSeries();
      status.classList.remove("error");
      if (updated) updated.textContent = time(stats.now);
      status.dataset.refreshed = String(Number(status.dataset.refreshed || 0) + 1);
    } catch (err) {
      status.classList.add("error");
      if (updated) updated.textContent = "refresh failed (" + err.message + "), retrying";
    }
    setTimeout(refresh, every);
  }
  setTimeout(refresh, every);
})();
