// The dashboard: poll the router's /metrics, parse it (prom.js), keep a short history in memory for
// the over-time charts, and redraw everything from the latest scrape (charts.js). Every number on
// the page comes from /metrics, so the two agree by construction. State for tests and debugging
// lives at window.tandemDashboard.
"use strict";

(function () {
  const P = window.TandemProm;
  const C = window.TandemCharts;
  const panels = window.TandemPanels;
  const params = new URLSearchParams(location.search);
  const POLL_MS = Number(params.get("interval_ms")) || 1000;
  const WINDOW_MS = 10 * 60 * 1000; // history kept (seeded from the router's own at load)
  const TIMEOUT_MS = 5000;
  const TIERS = ["local", "store"];

  const state = { polls: 0, errors: 0, history: [], prev: null, parsed: null, lastOkAt: null, error: null };
  window.tandemDashboard = state;
  const $ = (id) => document.getElementById(id);

  // One point of history per scrape: hit rates over the interval since the previous scrape (from
  // counter deltas; null when no prefill finished in it) and the load gauges. The router keeps the
  // same totals for the last minutes (dashboard/history), which seed the history at page load.
  function totals(m) {
    const cached = {};
    for (const tier of TIERS) cached[tier] = P.sum(m, "tandem_cached_tokens_total", { tier });
    const prompt = P.sum(m, "tandem_prompt_tokens_total");
    return {
      prompt, cached,
      cumulative: prompt > 0 ? P.value(m, "tandem_kv_hit_rate") : null,
      inFlight: P.value(m, "tandem_requests_in_flight", {}, 0),
      running: P.sum(m, "tandem_worker_running"),
      waiting: P.sum(m, "tandem_worker_waiting"),
    };
  }

  function record(now, t) {
    const rate = { overall: null, local: null, store: null };
    const prev = state.prev;
    if (prev) {
      let dp = now.prompt - prev.prompt;
      let d = Object.fromEntries(TIERS.map((tier) => [tier, now.cached[tier] - prev.cached[tier]]));
      if (dp < 0 || TIERS.some((tier) => d[tier] < 0)) { dp = now.prompt; d = { ...now.cached }; } // router restarted
      if (dp > 0) {
        for (const tier of TIERS) rate[tier] = d[tier] / dp;
        rate.overall = TIERS.reduce((acc, tier) => acc + d[tier], 0) / dp;
      }
    }
    state.prev = now;
    const { cumulative, inFlight, running, waiting } = now;
    state.history.push({ t, rate, cumulative, inFlight, running, waiting });
    while (state.history.length && state.history[0].t < t - WINDOW_MS) state.history.shift();
  }

  // The router's recent history, oldest first; the page works without it (an older router).
  async function seedHistory() {
    try {
      const resp = await fetch("dashboard/history", { cache: "no-store" });
      if (!resp.ok) return;
      const body = await resp.json();
      for (const s of body.samples) {
        const { prompt, cached, in_flight: inFlight, running, waiting } = s;
        record({ prompt, cached, cumulative: prompt > 0 ? s.hit_rate : null, inFlight, running, waiting }, s.t * 1000);
      }
      state.seeded = body.samples.length;
    } catch (err) {
      state.seeded = 0;
    }
  }

  function render() {
    if (state.parsed) panels.render(state.parsed, state.history);
  }

  function setStatus() {
    const status = $("status");
    const banner = $("banner");
    const time = (t) => C.clock(t);
    if (state.error) {
      const since = state.error.since;
      document.body.dataset.state = state.lastOkAt ? "stale" : "error";
      status.className = "status stale";
      status.textContent = state.lastOkAt ? `stale since ${time(since)}` : "cannot reach /metrics";
      banner.hidden = false;
      banner.textContent = `/metrics: ${state.error.message}`
        + (state.lastOkAt ? ` · showing the values of ${time(state.lastOkAt)}` : ` since ${time(since)}`);
      banner.title = banner.textContent;
      return;
    }
    const hasData = document.body.dataset.data === "yes";
    document.body.dataset.state = hasData ? "live" : "no-data";
    status.className = `status ${hasData ? "live" : "idle"}`;
    status.textContent = `${hasData ? "live" : "no data yet"} · updated ${time(state.lastOkAt)}`;
    banner.hidden = hasData;
    banner.textContent = "No data yet: the numbers appear once a request has finished its prefill.";
  }

  // Fetch and parse one scrape; a failure (network, HTTP status, unparsable text) is kept in
  // state.error and the page keeps showing the last good scrape, marked stale.
  async function scrape() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const resp = await fetch("metrics", { cache: "no-store", signal: controller.signal });
      if (!resp.ok) throw new Error(`HTTP ${resp.status} ${resp.statusText}`);
      return P.parse(await resp.text());
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    try {
      const parsed = await scrape();
      const t = Date.now();
      state.parsed = parsed;
      record(totals(parsed), t);
      state.lastOkAt = t;
      state.error = null;
    } catch (err) {
      state.errors += 1;
      const message = err.name === "AbortError" ? `no answer in ${TIMEOUT_MS / 1000} s` : err.message;
      state.error = { since: state.error ? state.error.since : Date.now(), message };
    }
    try {
      if (!state.error) render();
    } finally {
      state.polls += 1;
      setStatus();
      setTimeout(poll, POLL_MS);
    }
  }

  window.addEventListener("resize", render);
  seedHistory().then(poll);
})();
