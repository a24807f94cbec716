// Upload page: poll each uploaded series until its latest job is done or failed.
(function () {
  const rows = document.querySelectorAll("#upload-progress tr[data-series]");
  const finished = new Set(["done", "failed"]);
  const settled = new Set(["ignored", "not_selected"]);
  async function poll(row) {
    const uid = row.dataset.series;
    try {
      const response = await fetch("/api/series/" + encodeURIComponent(uid), { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const detail = await response.json();
      const job = detail.jobs.length ? detail.jobs[0] : null;
      row.querySelector(".series-status").textContent = detail.series.status + (detail.series.status_reason ? " (" + detail.series.status_reason + ")" : "");
      row.querySelector(".job-state").textContent = job ? job.state + (job.progress ? ": " + job.progress : "") + (job.verdict ? ", " + job.verdict : "") : "waiting for the series to complete";
      row.dataset.state = job ? job.state : detail.series.status;
      if ((job && finished.has(job.state)) || settled.has(detail.series.status)) return;
    } catch (err) {
      row.querySelector(".job-state").textContent = "cannot read progress: " + err.message;
    }
    setTimeout(() => poll(row), 1000);
  }
  rows.forEach(poll);
})();
