// Small hand-written SVG charts for the dashboard: a time-series line chart, horizontal bar rows
// (stacked segments, one or more bars per row), and latency percentiles on a log axis against an SLO.
// Each function redraws its container from scratch (the dashboard redraws once per poll).
"use strict";

(function (root) {
  const NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) node.setAttribute(k, v);
    for (const c of children) node.append(c);
    return node;
  }

  function text(x, y, content, attrs) {
    return svg("text", { x, y, ...attrs }, String(content));
  }

  function frame(box, height) {
    const width = Math.max(200, Math.floor(box.clientWidth || 400));
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
    box.replaceChildren(root);
    return { root, width, height };
  }

  function empty(box, message) {
    const note = document.createElement("div");
    note.className = "empty";
    note.textContent = message;
    box.replaceChildren(note);
  }

  function clock(t) {
    return new Date(t).toLocaleTimeString([], { hour12: false });
  }

  // series: [{name, color, points: [[t_ms, v | null]], dashed, dots, width}]; nulls are skipped
  // (the line joins the points either side). x spans [t0, t1], y spans [0, yMax].
  function lineChart(box, { series, t0, t1, yMax = 1, yTicks, yFormat = (v) => v, height = 220 }) {
    const { root, width } = frame(box, height);
    const m = { l: 46, r: 14, t: 10, b: 24 };
    const span = Math.max(1, t1 - t0);
    const x = (t) => m.l + ((t - t0) / span) * (width - m.l - m.r);
    const y = (v) => height - m.b - (Math.min(v, yMax) / yMax) * (height - m.t - m.b);
    for (const v of yTicks || [0, yMax / 2, yMax]) {
      root.append(svg("line", { x1: m.l, x2: width - m.r, y1: y(v), y2: y(v), class: "grid" }));
      root.append(text(m.l - 6, y(v) + 4, yFormat(v), { "text-anchor": "end", class: "tick" }));
    }
    const maxTicks = Math.max(2, Math.floor((width - m.l - m.r) / 90));
    const step = [5, 10, 15, 30, 60, 120, 300, 600].map((s) => s * 1000).find((s) => span / s <= maxTicks) || 600000;
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      root.append(svg("line", { x1: x(t), x2: x(t), y1: m.t, y2: height - m.b, class: "grid grid-x" }));
      root.append(text(x(t), height - 6, clock(t), { "text-anchor": "middle", class: "tick" }));
    }
    for (const s of series) {
      const pts = s.points.filter(([t, v]) => v !== null && Number.isFinite(v) && t >= t0);
      if (pts.length > 1) {
        const d = pts.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join("");
        root.append(svg("path", { d, stroke: s.color, class: s.dashed ? "series dashed" : "series",
          "stroke-width": s.width || 2 }));
      }
      if (s.dots || pts.length === 1) {
        for (const [t, v] of pts) root.append(svg("circle", { cx: x(t), cy: y(v), r: 2.6, fill: s.color }));
      }
    }
  }

  // rows: [{label, sub, note, bars: [{segments: [{value, color, title}], max}], valueText, valueAttrs}]
  // (`segments` and `max` on the row stand for a single bar). A row: label, muted subtitle and
  // value on one line, then its bars (segments stacked, each bar scaled to its max), then the
  // note. With `inline`, label, bar and value share one line (for long lists of short rows).
  function barRows(box, rows, { max = 1, inline = false, labelWidth = 150, emptyText = "no data yet" } = {}) {
    if (!rows.length) return empty(box, emptyText);
    const barsOf = (row) => row.bars || [{ segments: row.segments, max: row.max ?? max }];
    const heights = rows.map((row) => (inline ? 24 : 22 + barsOf(row).length * 13 + (row.note ? 16 : 0)));
    const { root, width } = frame(box, heights.reduce((a, b) => a + b, 0) + 2);
    const x0 = inline ? labelWidth : 0;
    const barWidth = inline ? width - labelWidth - 70 : width;
    let top = 0;
    rows.forEach((row, i) => {
      const title = text(0, top + 14, row.label, { class: "label" });
      if (row.sub) title.append(svg("tspan", { class: "sublabel", dx: 8 }, row.sub));
      root.append(title);
      root.append(text(width - 2, top + 14, row.valueText, { "text-anchor": "end", class: "value", ...row.valueAttrs }));
      barsOf(row).forEach((bar, j) => {
        const y = inline ? top + 5 : top + 20 + j * 13;
        const h = j === 0 ? 10 : 6;
        root.append(svg("rect", { x: x0, y, width: barWidth, height: h, rx: 2, class: "track" }));
        let offset = 0;
        for (const seg of bar.segments) {
          const frac = bar.max > 0 && Number.isFinite(seg.value) ? Math.max(0, Math.min(1, seg.value / bar.max)) : 0;
          const w = Math.min(frac * barWidth, barWidth - offset);
          if (w > 0) {
            const rect = svg("rect", { x: x0 + offset, y, width: w, height: h, fill: seg.color });
            if (seg.title) rect.append(svg("title", {}, seg.title));
            root.append(rect);
          }
          offset += w;
        }
      });
      if (row.note) root.append(text(0, top + heights[i] - 4, row.note, { class: "sublabel" }));
      top += heights[i];
    });
  }

  function seconds(v) {
    if (!Number.isFinite(v)) return "–";
    if (v < 1) return `${(v * 1000).toPrecision(3)} ms`;
    return `${v.toPrecision(3)} s`;
  }

  // rows: [{label, q: {p50, p90, p99}, slo}] on one log-scaled axis (decades), one row each: the
  // label and numbers on a line, the percentiles as nested bars below with the SLO as a red tick;
  // a percentile past its SLO is drawn in the alarm colour.
  function latencyChart(box, rows, { rowHeight = 42 } = {}) {
    const known = rows.filter((r) => Number.isFinite(r.q.p50));
    if (!known.length) return empty(box, "no finished requests yet");
    const values = rows.flatMap((r) => [r.q.p50, r.q.p90, r.q.p99, r.slo]).filter((v) => Number.isFinite(v) && v > 0);
    const lo = Math.pow(10, Math.floor(Math.log10(Math.min(...values))));
    const hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...values) * 1.01)));
    const { root, width, height } = frame(box, rows.length * rowHeight + 20);
    const x = (v) => ((Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * (width - 1);
    for (let d = lo; d <= hi * 1.001; d *= 10) {
      root.append(svg("line", { x1: x(d), x2: x(d), y1: 18, y2: height - 16, class: "grid grid-x" }));
      const anchor = d === lo ? "start" : d >= hi ? "end" : "middle";
      root.append(text(x(d), height - 3, seconds(d), { "text-anchor": anchor, class: "tick" }));
    }
    rows.forEach((row, i) => {
      const top = i * rowHeight;
      const title = text(0, top + 14, row.label, { class: "label" });
      const slo = Number.isFinite(row.slo) ? `SLO ${seconds(row.slo)}` : "no SLO";
      title.append(svg("tspan", { class: "sublabel", dx: 8 }, slo));
      root.append(title);
      const summary = Number.isFinite(row.q.p50)
        ? `p50 ${seconds(row.q.p50)} · p90 ${seconds(row.q.p90)} · p99 ${seconds(row.q.p99)}`
        : "no data yet";
      root.append(text(width - 2, top + 14, summary, { "text-anchor": "end", class: "value small" }));
      const mid = top + 28;
      root.append(svg("rect", { x: 0, y: mid - 7, width, height: 14, rx: 2, class: "track" }));
      for (const [key, h, cls] of [["p99", 14, "q99"], ["p90", 10, "q90"], ["p50", 6, "q50"]]) {
        const v = row.q[key];
        if (!Number.isFinite(v)) continue;
        const over = Number.isFinite(row.slo) && v > row.slo;
        root.append(svg("rect", { x: 0, y: mid - h / 2, width: Math.max(2, x(v)), height: h, rx: 2,
          class: `${cls}${over ? " over" : ""}` }));
      }
      if (Number.isFinite(row.slo)) {
        root.append(svg("line", { x1: x(row.slo), x2: x(row.slo), y1: mid - 10, y2: mid + 10, class: "slo" }));
      }
    });
  }

  function legend(box, items) {
    box.replaceChildren(...items.map(({ name, color, dashed }) => {
      const item = document.createElement("span");
      item.className = "legend-item";
      const swatch = document.createElement("i");
      swatch.style.borderColor = color;
      if (dashed) swatch.className = "dashed";
      item.append(swatch, name);
      return item;
    }));
  }

  root.TandemCharts = { lineChart, barRows, latencyChart, legend, empty, seconds, clock };
})(this);
