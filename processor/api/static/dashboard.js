// The dashboard's script: polls the JSON API with the session cookie and fills the page.
// /v1/stats every 2 s (totals, partitions), /v1/stats/throughput every 5 s (the chart),
// /v1/dead-letters?limit=10&include_raw=false every 5 s (admin pages only; without the raw
// bytes, which the page never shows), the child lookup on demand.
// Values go into the page as text (textContent), never as HTML. A 401 (the token was revoked
// or expired, or the session ended) goes back to the sign-in form.
"use strict";

(function () {
  const STATS_EVERY_MS = 2000;
  const SLOW_EVERY_MS = 5000;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const admin = document.body.dataset.admin === "true";
  const byId = (id) => document.getElementById(id);
  const number = new Intl.NumberFormat("en");
  const rate = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });

  class SignedOut extends Error {}

  async function getJson(path) {
    const response = await fetch(path, {
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRF-Token": csrf },
    });
    if (response.status === 401) {
      window.location.assign("/sign-in");
      throw new SignedOut("signed out");
    }
    const body = await response.json();
    if (!response.ok) {
      const error = new Error(body.error ? body.error.message : response.statusText);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function showProblem(element, error) {
    if (error instanceof SignedOut) return;
    element.textContent = error.message;
    element.hidden = false;
  }

  function cell(row, text, className) {
    const td = row.insertCell();
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function time(value) {
    return value ? new Date(value).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "—";
  }

  // --- totals and partitions --------------------------------------------------------------

  function renderStats(stats) {
    byId("events-applied").textContent = number.format(stats.events_applied);
    byId("events-applied").dataset.value = String(stats.events_applied);
    byId("dead-lettered").textContent = number.format(stats.dead_lettered);
    byId("dead-lettered").dataset.value = String(stats.dead_lettered);
    byId("fold-version").textContent = stats.fold_version === null ? "—" : stats.fold_version;
    byId("updated-at").textContent = new Date().toLocaleTimeString();
    const body = byId("partitions").tBodies[0];
    body.replaceChildren();
    for (const p of stats.partitions) {
      const row = body.insertRow();
      row.dataset.partition = String(p.partition);
      cell(row, String(p.partition), "partition");
      cell(row, String(p.checkpoint), "checkpoint");
      cell(row, String(p.lag), p.lag > 0 ? "lag behind" : "lag");
      cell(row, p.owner === null ? "—" : p.owner, "owner");
    }
    document.body.dataset.statsLoaded = "true";
  }

  async function pollStats() {
    try {
      renderStats(await getJson("/v1/stats"));
      byId("problem").hidden = true;
    } catch (error) {
      showProblem(byId("problem"), error);
    }
    setTimeout(pollStats, STATS_EVERY_MS);
  }

  // --- events per second ------------------------------------------------------------------

  let throughputChart = null;

  function renderThroughput(answer) {
    const labels = answer.intervals.map((i) => new Date(i.start).toISOString().slice(11, 19));
    const values = answer.intervals.map((i) => i.per_s);
    const last = answer.intervals[answer.intervals.length - 1];
    byId("rate-now").textContent = last ? rate.format(last.per_s) : "—";
    if (throughputChart === null) {
      throughputChart = new Chart(byId("throughput-chart"), {
        type: "line",
        data: {
          labels,
          datasets: [
            {
              label: "events applied per second",
              data: values,
              borderColor: "#2f6fb3",
              backgroundColor: "rgba(47, 111, 179, 0.15)",
              fill: true,
              pointRadius: 0,
              tension: 0.2,
            },
          ],
        },
        options: {
          animation: false,
          maintainAspectRatio: false,
          plugins: { legend: { display: false } },
          scales: {
            x: { ticks: { maxTicksLimit: 10 } },
            y: { beginAtZero: true, title: { display: true, text: "events/s" } },
          },
        },
      });
    } else {
      throughputChart.data.labels = labels;
      throughputChart.data.datasets[0].data = values;
      throughputChart.update();
    }
    byId("throughput-chart").dataset.points = String(values.length);
  }

  async function pollThroughput() {
    try {
      renderThroughput(await getJson("/v1/stats/throughput?minutes=10&step_s=10"));
    } catch (error) {
      showProblem(byId("problem"), error);
    }
    setTimeout(pollThroughput, SLOW_EVERY_MS);
  }

  // --- dead letters (admin) -----------------------------------------------------------------

  function renderDeadLetters(page) {
    const body = byId("dead-letters").tBodies[0];
    body.replaceChildren();
    for (const d of page.dead_letters) {
      const row = body.insertRow();
      cell(row, time(d.dead_lettered_at));
      cell(row, String(d.partition));
      cell(row, String(d.offset));
      cell(row, d.field || "—");
      cell(row, d.reason, "reason");
    }
    if (page.dead_letters.length === 0) {
      cell(body.insertRow(), "none").colSpan = 5;
    }
    byId("dead-letters").dataset.loaded = "true";
  }

  async function pollDeadLetters() {
    try {
      renderDeadLetters(await getJson("/v1/dead-letters?limit=10&include_raw=false"));
    } catch (error) {
      showProblem(byId("problem"), error);
    }
    setTimeout(pollDeadLetters, SLOW_EVERY_MS);
  }

  // --- child lookup -------------------------------------------------------------------------

  let topicsChart = null;

  function renderChild(friendship, topics) {
    byId("child-score").textContent = String(friendship.score);
    byId("child-level").textContent = friendship.level;
    byId("child-events").textContent = String(friendship.events_applied);
    byId("child-last-event").textContent = time(friendship.last_event_at);
    const body = byId("child-topics").tBodies[0];
    body.replaceChildren();
    for (const t of topics.topics) {
      const row = body.insertRow();
      row.dataset.topic = t.topic;
      cell(row, t.topic, "topic");
      cell(row, String(t.conversations), "conversations");
      cell(row, String(t.turns), "turns");
      cell(row, t.duration_s.toFixed(1), "duration");
      cell(row, `${t.sentiment.happy}/${t.sentiment.curious}`, "sentiment");
      cell(row, time(t.last_discussed_at), "last-discussed");
    }
    const labels = topics.topics.map((t) => t.topic);
    const turns = topics.topics.map((t) => t.turns);
    if (topicsChart !== null) topicsChart.destroy();
    topicsChart = new Chart(byId("topics-chart"), {
      type: "doughnut",
      data: { labels, datasets: [{ label: "turns", data: turns }] },
      options: {
        animation: false,
        maintainAspectRatio: false,
        plugins: {
          legend: { position: "right" },
          title: { display: true, text: "topic mix (turns)" },
        },
      },
    });
    byId("child").hidden = false;
    byId("child").dataset.userLoaded = "true";
  }

  // A user_id as the contract defines it (docs/contract.md section 1).
  const USER_ID = /^[A-Za-z0-9._:@-]{1,128}$/;
  const INVALID_USER_ID =
    "A child's id is 1 to 128 characters from A-Z, a-z, 0-9 and . _ : @ -";

  async function lookUp(event) {
    event.preventDefault();
    const message = byId("lookup-message");
    const userId = byId("user-id").value.trim();
    message.hidden = true;
    byId("child").hidden = true;
    delete byId("child").dataset.userLoaded;
    if (!USER_ID.test(userId)) {
      // Checked here: never sent, so no answer can echo it back.
      message.textContent = INVALID_USER_ID;
      message.hidden = false;
      return;
    }
    const base = `/v1/users/${encodeURIComponent(userId)}`;
    try {
      const [friendship, topics] = await Promise.all([
        getJson(`${base}/friendship`),
        getJson(`${base}/topics`),
      ]);
      renderChild(friendship, topics);
    } catch (error) {
      showProblem(message, error);
    }
  }

  byId("lookup-form").addEventListener("submit", lookUp);
  pollStats();
  pollThroughput();
  if (admin) pollDeadLetters();
})();
