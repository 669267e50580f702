// The dashboard's panels: each draws one part of the page from a parsed scrape of /metrics (prom.js)
// and, for the over-time charts, the page's history of scrapes (app.js keeps it), with charts.js.
// Nothing here fetches or keeps state: app.js calls TandemPanels.render after every good scrape.
"use strict";

(function (root) {
  const P = root.TandemProm;
  const C = root.TandemCharts;
  const TIERS = ["local", "store"];
  const OUTCOMES = ["ok", "invalid", "rejected", "failed", "cancelled"];
  const COLOR = {
    overall: "#4cc9f0", local: "#80ed99", store: "#c77dff", cumulative: "#f1f3f5",
    running: "#4cc9f0", waiting: "#ffb703", pages: "#5c7cfa", inFlight: "#f1f3f5",
    ok: "#80ed99", invalid: "#adb5bd", rejected: "#ffb703", failed: "#ef476f", cancelled: "#748ffc",
    reason: "#ffb703", transfer: "#5c7cfa", store_used: "#c77dff",
  };

  const $ = (id) => document.getElementById(id);

  const pct = (v, digits = 1) => (Number.isFinite(v) ? `${(v * 100).toFixed(digits)}%` : "—");
  const int = (v) => (Number.isFinite(v) ? Math.round(v).toLocaleString("en-US") : "—");
  const ratio = (a, b) => (b > 0 ? a / b : NaN);
  function bytes(v) {
    if (!Number.isFinite(v)) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${i ? v.toFixed(v < 10 ? 2 : 1) : v} ${units[i]}`;
  }

  function setText(id, content, attrs = {}) {
    const node = $(id);
    node.textContent = content;
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined) node.removeAttribute(k);
      else node.setAttribute(k, v);
    }
  }

  function renderKpis(m) {
    const prompt = P.sum(m, "tandem_prompt_tokens_total");
    const overall = P.one(m, "tandem_kv_hit_rate");
    const hasData = prompt > 0 && overall !== null;
    document.body.dataset.data = hasData ? "yes" : "no";
    const cached = P.sum(m, "tandem_cached_tokens_total");
    document.title = `${hasData ? `${pct(overall.value)} KV hits` : "no data"} · Tandem dashboard`;
    if (hasData) {
      setText("hit-rate-overall", pct(overall.value), { "data-value": overall.raw, "data-state": "live" });
      setText("hit-rate-detail", `${int(cached)} of ${int(prompt)} prompt tokens from cache`);
    } else {
      setText("hit-rate-overall", "—", { "data-value": null, "data-state": "no-data" });
      setText("hit-rate-detail", overall ? "no data yet: no prompt has finished prefill" : "tandem_kv_hit_rate missing");
    }
    for (const tier of TIERS) {
      const s = P.one(m, "tandem_kv_hit_rate_by_tier", { tier });
      setText(`hit-rate-${tier}`, hasData && s ? pct(s.value) : "—", { "data-value": hasData && s ? s.raw : null });
    }
    const predicted = P.sum(m, "tandem_predicted_cached_tokens_total");
    setText("predicted", hasData ? pct(ratio(predicted, prompt)) : "—");
    setText("predicted-detail", hasData ? `${int(predicted)} predicted vs ${int(cached)} cached tokens`
      : "expected cached / prompt tokens");
    const outcome = (o) => P.value(m, "tandem_requests_total", { outcome: o }, 0);
    setText("requests", int(outcome("ok")));
    setText("requests-detail", `ok · ${int(P.value(m, "tandem_requests_in_flight", {}, 0))} in flight · `
      + `${int(outcome("rejected"))} rejected · ${int(outcome("failed"))} failed`);
    const p90 = P.quantile(m, "tandem_time_to_first_token_seconds", 0.9);
    const slo = P.value(m, "tandem_slo_seconds", { kind: "ttft" });
    setText("ttft-p90", Number.isFinite(p90) ? C.seconds(p90) : "—", { "data-over": slo !== null && p90 > slo ? "yes" : "no" });
    setText("ttft-detail", slo === null ? "no TTFT SLO exported" : `SLO ${C.seconds(slo)}`);
    const roles = P.sumBy(m, "tandem_workers", "role");
    const nodes = P.select(m, "tandem_store_capacity_bytes").length;
    const roleText = Object.entries(roles).filter(([, n]) => n > 0).map(([r, n]) => `${n} ${r}`).join(" · ");
    setText("workers", `${roleText || "no"} workers · ${nodes} store node${nodes === 1 ? "" : "s"}`);
  }

  function renderHitOverTime(h) {
    const items = [
      { key: "overall", name: "overall", color: COLOR.overall },
      { key: "local", name: "local tier", color: COLOR.local },
      { key: "store", name: "store tier", color: COLOR.store },
    ];
    C.legend($("legend-hit"), [...items, { name: "since start", color: COLOR.cumulative, dashed: true }]);
    if (!h.some((p) => p.cumulative !== null)) return C.empty($("chart-hit"), "no data yet: waiting for the first prefill");
    const t1 = h[h.length - 1].t;
    const t0 = Math.min(h[0].t, t1 - 60000);
    const series = items.map((s) => ({ ...s, dots: true, width: s.key === "overall" ? 2.5 : 1.5,
      points: h.map((p) => [p.t, p.rate[s.key]]) }));
    series.push({ name: "since start", color: COLOR.cumulative, dashed: true, points: h.map((p) => [p.t, p.cumulative]) });
    C.lineChart($("chart-hit"), { series, t0, t1, yMax: 1, yTicks: [0, 0.25, 0.5, 0.75, 1], yFormat: (v) => pct(v, 0), height: 220 });
  }

  function renderInstances(m) {
    C.legend($("legend-instances"), [{ name: "local", color: COLOR.local }, { name: "store", color: COLOR.store }]);
    const prompts = P.sumBy(m, "tandem_instance_prompt_tokens_total", "instance");
    const rows = Object.keys(prompts).sort().map((instance) => {
      const prompt = prompts[instance];
      const gauge = P.one(m, "tandem_instance_kv_hit_rate", { instance });
      const tiers = TIERS.map((tier) => [tier, P.sum(m, "tandem_instance_cached_tokens_total", { instance, tier })]);
      return {
        label: instance, sub: `${int(prompt)} prompt tokens`, max: 1,
        segments: tiers.map(([tier, n]) => ({ value: ratio(n, prompt), color: COLOR[tier], title: `${tier}: ${int(n)} tokens` })),
        valueText: gauge ? pct(gauge.value) : "—",
        valueAttrs: { "data-instance": instance, "data-value": gauge ? gauge.raw : null },
      };
    });
    C.barRows($("chart-instances"), rows, { emptyText: "no data yet: no prefill finished" });
  }

  function renderLatency(m) {
    C.legend($("legend-latency"), [{ name: "p50", color: "#4cc9f0" }, { name: "p90", color: "#3a86ff" },
      { name: "p99", color: "#3d5a80" }, { name: "SLO", color: "#ef476f" }]);
    const slo = (kind) => P.value(m, "tandem_slo_seconds", { kind }, NaN);
    const q = (base) => ({ p50: P.quantile(m, base, 0.5), p90: P.quantile(m, base, 0.9), p99: P.quantile(m, base, 0.99) });
    C.latencyChart($("chart-latency"), [
      { label: "TTFT", q: q("tandem_time_to_first_token_seconds"), slo: slo("ttft") },
      { label: "TPOT", q: q("tandem_time_per_output_token_seconds"), slo: slo("tbt") },
      { label: "ITL", q: q("tandem_inter_token_latency_seconds"), slo: slo("tbt") },
      { label: "E2E", q: q("tandem_e2e_request_latency_seconds"), slo: NaN },
    ]);
  }

  function renderStore(m) {
    const rows = P.select(m, "tandem_store_capacity_bytes").map((s) => s.labels.node).sort().map((node) => {
      const used = P.value(m, "tandem_store_bytes_used", { node }, 0);
      const cap = P.value(m, "tandem_store_capacity_bytes", { node }, 0);
      const hits = P.value(m, "tandem_store_hits_total", { node }, 0);
      const misses = P.value(m, "tandem_store_misses_total", { node }, 0);
      return {
        label: node, sub: `${bytes(used)} of ${bytes(cap)}`, max: cap, segments: [{ value: used, color: COLOR.store_used }],
        note: `${int(P.value(m, "tandem_store_chunks", { node }, 0))} chunks · `
          + `${int(P.value(m, "tandem_store_evictions_total", { node }, 0))} evicted · `
          + `key hits ${int(hits)} of ${int(hits + misses)} (${pct(ratio(hits, hits + misses), 0)})`,
        valueText: pct(ratio(used, cap)), valueAttrs: { "data-node": node },
      };
    });
    C.barRows($("chart-store"), rows, { emptyText: "no store nodes reported" });
  }

  function renderWorkers(m) {
    C.legend($("legend-workers"), [{ name: "running", color: COLOR.running }, { name: "queued", color: COLOR.waiting },
      { name: "KV pages in use", color: COLOR.pages }]);
    const workers = P.select(m, "tandem_worker_running").map((s) => s.labels);
    const depth = (w) => P.value(m, "tandem_worker_running", w, 0) + P.value(m, "tandem_worker_waiting", w, 0);
    const maxDepth = Math.max(4, ...workers.map(depth));
    const rows = workers.sort((a, b) => a.instance.localeCompare(b.instance)).map((w) => {
      const running = P.value(m, "tandem_worker_running", w, 0);
      const waiting = P.value(m, "tandem_worker_waiting", w, 0);
      const total = P.value(m, "tandem_worker_kv_pages_total", w, 0);
      const used = total - P.value(m, "tandem_worker_kv_pages_free", w, 0);
      const step = P.value(m, "tandem_worker_step_seconds", w);
      return {
        label: w.instance, sub: `${w.role} · ${int(used)}/${int(total)} pages${step ? ` · step ${C.seconds(step)}` : ""}`,
        bars: [
          { max: maxDepth, segments: [{ value: running, color: COLOR.running }, { value: waiting, color: COLOR.waiting }] },
          { max: total, segments: [{ value: used, color: COLOR.pages }] },
        ],
        valueText: `${int(running)} + ${int(waiting)}`, valueAttrs: { "data-worker": w.instance },
      };
    });
    C.barRows($("chart-workers"), rows, { emptyText: "no workers reported" });
  }

  function renderLoad(h) {
    const items = [
      { key: "inFlight", name: "in flight (router)", color: COLOR.inFlight },
      { key: "running", name: "running (workers)", color: COLOR.running },
      { key: "waiting", name: "queued (workers)", color: COLOR.waiting },
    ];
    C.legend($("legend-load"), items);
    if (!h.length) return C.empty($("chart-load"), "no data yet");
    const t1 = h[h.length - 1].t;
    const top = Math.max(4, ...h.flatMap((p) => [p.inFlight, p.running, p.waiting]));
    const yMax = Math.ceil(top / 4) * 4;
    const series = items.map((s) => ({ ...s, points: h.map((p) => [p.t, p[s.key]]) }));
    C.lineChart($("chart-load"), { series, t0: Math.min(h[0].t, t1 - 60000), t1, yMax,
      yTicks: [0, yMax / 4, yMax / 2, (3 * yMax) / 4, yMax], yFormat: int, height: 170 });
  }

  function renderCounts(m) {
    const outcomes = P.sumBy(m, "tandem_requests_total", "outcome");
    const names = [...OUTCOMES.filter((o) => o in outcomes), ...Object.keys(outcomes).filter((o) => !OUTCOMES.includes(o))];
    const maxOutcome = Math.max(1, ...Object.values(outcomes));
    C.barRows($("chart-outcomes"), names.map((o) => ({
      label: o, max: maxOutcome, segments: [{ value: outcomes[o], color: COLOR[o] || COLOR.ok }],
      valueText: int(outcomes[o]), valueAttrs: { "data-outcome": o },
    })), { inline: true, labelWidth: 90, emptyText: "no requests yet" });
    const reasons = P.sumBy(m, "tandem_rejections_total", "reason");
    const maxReason = Math.max(1, ...Object.values(reasons));
    C.barRows($("chart-rejections"), Object.keys(reasons).sort().map((r) => ({
      label: r, max: maxReason, segments: [{ value: reasons[r], color: COLOR.reason }],
      valueText: int(reasons[r]), valueAttrs: { "data-reason": r },
    })), { inline: true, labelWidth: 180, emptyText: "no rejections" });
    const moved = P.sumBy(m, "tandem_transfer_bytes_total", "kind");
    const spent = P.sumBy(m, "tandem_transfer_seconds_total", "kind");
    const maxMoved = Math.max(1, ...Object.values(moved));
    C.barRows($("chart-transfer"), Object.keys(moved).sort().map((kind) => ({
      label: kind, max: maxMoved, segments: [{ value: moved[kind], color: COLOR.transfer }],
      sub: spent[kind] > 0 ? `${bytes(moved[kind] / spent[kind])}/s mean over ${C.seconds(spent[kind])}` : "idle",
      valueText: bytes(moved[kind]), valueAttrs: { "data-kind": kind },
    })), { emptyText: "no transfers reported" });
  }

  // Redraw every panel from the latest scrape (m) and the history of scrapes.
  function render(m, history) {
    renderKpis(m);
    renderHitOverTime(history);
    renderInstances(m);
    renderLatency(m);
    renderStore(m);
    renderWorkers(m);
    renderLoad(history);
    renderCounts(m);
  }

  root.TandemPanels = { render };
})(this);
