// Prometheus text exposition format (version 0.0.4) -> plain objects, plus the few queries the
// dashboard needs. No DOM here, so Node can load it too (module.exports at the bottom).
//
// parse(text) returns {samples, types}: samples in page order as {name, labels, value, raw}, where
// raw is the value exactly as printed (the dashboard shows data-value=raw, so a test can compare it
// with /metrics byte for byte) and value its number; types maps a family name to its # TYPE.
"use strict";

(function (root) {
  const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?\s*$/;
  const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/y;

  function parseNumber(raw) {
    if (raw === "+Inf" || raw === "Inf") return Infinity;
    if (raw === "-Inf") return -Infinity;
    if (raw === "NaN") return NaN;
    const value = Number(raw);
    if (Number.isNaN(value)) throw new Error(`not a number: ${raw}`);
    return value;
  }

  function unescapeLabel(value) {
    return value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
  }

  function parseLabels(body, lineNo) {
    const labels = {};
    const inner = body.slice(1, -1);
    LABEL.lastIndex = 0;
    while (LABEL.lastIndex < inner.length) {
      const start = LABEL.lastIndex;
      const m = LABEL.exec(inner);
      if (!m) {
        if (/^\s*$/.test(inner.slice(start))) break;
        throw new Error(`line ${lineNo}: bad labels ${body}`);
      }
      labels[m[1]] = unescapeLabel(m[2]);
    }
    return labels;
  }

  function parse(text) {
    const samples = [];
    const types = {};
    text.split("\n").forEach((line, i) => {
      line = line.trim();
      if (!line) return;
      if (line.startsWith("#")) {
        const m = /^#\s*TYPE\s+(\S+)\s+(\S+)/.exec(line);
        if (m) types[m[1]] = m[2];
        return;
      }
      const m = SAMPLE.exec(line);
      if (!m) throw new Error(`line ${i + 1}: cannot parse ${JSON.stringify(line)}`);
      const labels = m[2] ? parseLabels(m[2], i + 1) : {};
      samples.push({ name: m[1], labels, value: parseNumber(m[3]), raw: m[3] });
    });
    return { samples, types };
  }

  function matches(labels, want) {
    for (const k in want || {}) if (labels[k] !== want[k]) return false;
    return true;
  }

  // Every sample of `name` whose labels include `want`.
  function select(parsed, name, want) {
    return parsed.samples.filter((s) => s.name === name && matches(s.labels, want));
  }

  // The first such sample, or null.
  function one(parsed, name, want) {
    return parsed.samples.find((s) => s.name === name && matches(s.labels, want)) || null;
  }

  // Its value, or `fallback` when the series does not exist.
  function value(parsed, name, want, fallback = null) {
    const s = one(parsed, name, want);
    return s ? s.value : fallback;
  }

  // Sum of the matching samples (0 for none).
  function sum(parsed, name, want) {
    return select(parsed, name, want).reduce((acc, s) => acc + s.value, 0);
  }

  // {labelValue: summed value} over the matching samples, grouped by one label.
  function sumBy(parsed, name, label, want) {
    const out = {};
    for (const s of select(parsed, name, want)) {
      const key = s.labels[label];
      out[key] = (out[key] || 0) + s.value;
    }
    return out;
  }

  // The cumulative buckets of histogram `base` as [{le, count}] sorted by le (+Inf last).
  function buckets(parsed, base, want) {
    return select(parsed, `${base}_bucket`, want)
      .map((s) => ({ le: parseNumber(s.labels.le), count: s.value }))
      .sort((a, b) => a.le - b.le);
  }

  // Prometheus's histogram_quantile over cumulative buckets: find the bucket the rank falls in
  // and interpolate linearly inside it (the first bucket starts at 0). A rank in the +Inf bucket
  // answers the highest finite bound. NaN without observations.
  function histogramQuantile(q, bks) {
    if (bks.length < 2 || bks[bks.length - 1].le !== Infinity) return NaN;
    const total = bks[bks.length - 1].count;
    if (!(total > 0)) return NaN;
    if (q < 0) return -Infinity;
    if (q > 1) return Infinity;
    const rank = q * total;
    let b = bks.findIndex((bk) => bk.count >= rank);
    if (b === bks.length - 1) return bks[bks.length - 2].le;
    if (b === 0 && bks[0].le <= 0) return bks[0].le;
    const start = b === 0 ? 0 : bks[b - 1].le;
    const below = b === 0 ? 0 : bks[b - 1].count;
    const inBucket = bks[b].count - below;
    if (inBucket <= 0) return bks[b].le;
    return start + (bks[b].le - start) * ((rank - below) / inBucket);
  }

  function quantile(parsed, base, q, want) {
    return histogramQuantile(q, buckets(parsed, base, want));
  }

  // Bucket-wise difference of two bucket lists (a later scrape minus an earlier one), for
  // quantiles over a window; a counter reset (any bucket went down) answers `later` as is.
  function bucketDelta(later, earlier) {
    if (!earlier || earlier.length !== later.length) return later;
    const out = later.map((bk, i) => ({ le: bk.le, count: bk.count - earlier[i].count }));
    return out.some((bk) => bk.count < 0) ? later : out;
  }

  const api = { parse, select, one, value, sum, sumBy, buckets, histogramQuantile, quantile, bucketDelta };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.TandemProm = api;
})(this);
