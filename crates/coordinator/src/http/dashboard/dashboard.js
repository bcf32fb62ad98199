// The Chorus dashboard: polls the admin endpoints once a second and redraws the page.
// No framework. Everything is built with createElement and textContent, so names that come
// from the cluster are never parsed as HTML (and the page's Content-Security-Policy forbids
// inline script and style anyway).
"use strict";

(function () {
  const POLL_MS = 1000;
  const SVG = "http://www.w3.org/2000/svg";
  // Workers seen earlier in this page's life: one that leaves the membership stays listed as
  // "gone", so an operator sees that it left rather than a shorter table.
  const seen = new Map();
  let lastOk = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function pill(state, text) {
    return el("span", text || state, "pill " + state);
  }

  function row(cells, cls) {
    const tr = el("tr", null, cls);
    for (const c of cells) {
      if (c instanceof Node) {
        tr.appendChild(c);
      } else {
        const [value, tdClass] = Array.isArray(c) ? c : [c, ""];
        const td = el("td", null, tdClass);
        if (value instanceof Node) td.appendChild(value);
        else td.textContent = value === undefined || value === null ? "" : String(value);
        tr.appendChild(td);
      }
    }
    return tr;
  }

  function replaceRows(tableId, rows, empty, columns) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren();
    if (rows.length === 0) {
      const td = el("td", empty, "muted");
      td.colSpan = columns;
      const tr = el("tr");
      tr.appendChild(td);
      body.appendChild(tr);
    }
    for (const r of rows) body.appendChild(r);
  }

  function ms(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 1000) return (v / 1000).toFixed(2) + " s";
    if (v >= 10) return v.toFixed(0) + " ms";
    return v.toFixed(1) + " ms";
  }

  function rate(v) {
    if (!v) return "0";
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  function percent(v) {
    return v ? (v * 100).toFixed(v < 0.1 ? 1 : 0) + "%" : "0%";
  }

  // A worker's state, most serious first, with what it means for routing.
  function workerState(w) {
    if (w.draining && !w.healthy) return ["down", "draining, and out of rotation: unreachable or ejected"];
    if (w.draining) return ["draining", "finishing its calls before leaving; gets no new ones"];
    if (!w.healthy) {
      const pings = w.probation_pings_left ? "; needs " + w.probation_pings_left + " good pings in a row to return" : "";
      return ["down", "out of rotation: unreachable or ejected" + pings];
    }
    if (!w.routable) return ["down", "out of rotation"];
    if (w.silent_ms > 1000) return ["up", "silent for " + (w.silent_ms / 1000).toFixed(1) + " s"];
    return ["up", ""];
  }

  function renderWorkers(data) {
    const now = new Set();
    const rows = [];
    const workers = [...data.workers].sort((a, b) => a.worker_id.localeCompare(b.worker_id));
    for (const w of workers) {
      now.add(w.worker_id);
      seen.set(w.worker_id, w);
      const [state, note] = workerState(w);
      rows.push(row([
        [w.worker_id, "id"],
        [pill(state)],
        [(w.models || []).join(", ") || "(not described yet)", "models"],
        [w.outstanding, "num"],
        [w.healthy ? ms(w.latency_ewma_us / 1000) : "–", "num"],
        [w.completed, "num"],
        [w.addr],
        [note, "muted"],
      ], "worker " + state));
    }
    for (const [id, w] of seen) {
      if (now.has(id)) continue;
      rows.push(row([
        [id, "id"], [pill("gone")], [(w.models || []).join(", "), "models"],
        ["–", "num"], ["–", "num"], ["–", "num"], [w.addr],
        ["left this coordinator's membership", "muted"],
      ], "worker gone"));
    }
    const up = data.workers.filter((w) => workerState(w)[0] === "up").length;
    $("worker-count").textContent = "(" + up + " of " + data.workers.length + " up)";
    replaceRows("workers", rows, "no workers in this coordinator's membership", 8);
  }

  function trafficByName(traffic) {
    const byName = new Map();
    for (const m of traffic.models || []) byName.set(m.name, m);
    return byName;
  }

  function renderEnsembles(data, traffic) {
    const byName = trafficByName(traffic);
    const rows = data.ensembles.map((e) => {
      const members = el("span");
      let live = 0;
      for (const m of e.members) {
        if (m.replicas > 0) live += 1;
        const name = m.model + (m.version ? "@" + m.version : "");
        const weight = m.weight === undefined || m.weight === null ? "" : " ×" + m.weight;
        members.appendChild(el("span", name + weight + " (" + m.replicas + ")", m.replicas > 0 ? "member" : "member none"));
      }
      if (e.meta_model) {
        members.appendChild(el("span", "meta " + e.meta_model.model + " (" + e.meta_model.replicas + ")",
          e.meta_model.replicas > 0 ? "member" : "member none"));
      }
      const t = byName.get(e.name);
      const last = t ? t.last : null;
      let state = e.ready ? (live < e.members.length ? "degraded" : "ready") : "unready";
      const statePill = pill(state, state === "degraded" ? "ready, " + (e.members.length - live) + " member(s) missing" : state);
      const stateCell = el("td");
      stateCell.appendChild(statePill);
      if (e.unready_reason) stateCell.appendChild(el("span", e.unready_reason, "reason"));
      return row([
        [e.name, "id"],
        stateCell,
        [e.combiner],
        [members, "members"],
        [live + "/" + e.members.length + " live, " + e.min_members + " needed"],
        [last ? rate(last.requests_per_s) : "0", "num"],
        [last ? ms(last.p50_ms) + " / " + ms(last.p99_ms) : "–", "num"],
        [last ? percent(last.degraded_ratio) : "0%", "num"],
        [last && last.agreement != null ? percent(last.agreement) : "–", "num agreement"],
        [last ? rate(last.errors_per_s) + "/s" : "0/s", "num"],
      ], "ensemble " + state);
    });
    replaceRows("ensembles", rows, "no ensembles configured", 10);
  }

  function renderModels(data, traffic) {
    const byName = trafficByName(traffic);
    const rows = data.models.map((m) => {
      const t = byName.get(m.name);
      const last = t ? t.last : null;
      const calls = last && last.seconds > 0 ? last.calls / last.seconds : 0;
      const failed = last && last.seconds > 0 ? last.calls_failed / last.seconds : 0;
      return row([
        [m.name, "id"],
        [m.versions.join(", ")],
        [m.replicas === 0 ? pill("down", "0") : m.replicas, "num"],
        [rate(calls), "num"],
        [rate(failed) + "/s", "num"],
        [last ? rate(last.requests_per_s) : "0", "num"],
      ], m.replicas === 0 ? "down" : "");
    });
    replaceRows("models", rows, "no worker describes a model yet", 6);
  }

  function renderTraffic(t) {
    const m = t.last_minute;
    $("rate").textContent = rate(m.requests_per_s);
    $("errors").textContent = rate(m.errors_per_s) + (m.requests ? " (" + percent(m.errors / m.requests) + ")" : "");
    $("latency").textContent = ms(m.p50_ms) + " / " + ms(m.p90_ms) + " / " + ms(m.p99_ms);
    $("latency5").textContent = ms(t.last_5_minutes.p99_ms);
    $("inflight").textContent = t.inflight;
    let total = 0;
    for (const model of t.models || []) total += model.requests_total;
    $("total").textContent = total;
    const series = t.series || [];
    $("rate-max").textContent = chart("rate-chart", series.map((p) => p.requests_per_s), rate);
    $("p99-max").textContent = chart("p99-chart", series.map((p) => p.p99_ms), ms);
  }

  // Draws `values` (one per second, oldest first; null is a gap) over the last 300 s, scaled to
  // its maximum; returns the scale's caption.
  function chart(id, values, format) {
    const svg = $(id);
    svg.replaceChildren();
    const width = 600, height = 80, span = 300;
    for (const y of [height - 1, height / 2]) {
      const line = document.createElementNS(SVG, "line");
      line.setAttribute("x1", "0"); line.setAttribute("x2", String(width));
      line.setAttribute("y1", String(y)); line.setAttribute("y2", String(y));
      svg.appendChild(line);
    }
    const max = Math.max(0, ...values.filter((v) => v !== null && v !== undefined));
    const scale = max > 0 ? max : 1;
    const offset = span - values.length;
    let points = [];
    const flush = () => {
      if (points.length > 1) {
        const line = document.createElementNS(SVG, "polyline");
        line.setAttribute("points", points.join(" "));
        svg.appendChild(line);
      } else if (points.length === 1) {
        // A lone second between gaps: a short tick, so it is not lost.
        const [x, y] = points[0].split(",");
        const tick = document.createElementNS(SVG, "polyline");
        tick.setAttribute("points", (x - 1) + "," + y + " " + (Number(x) + 1) + "," + y);
        svg.appendChild(tick);
      }
      points = [];
    };
    values.forEach((v, i) => {
      if (v === null || v === undefined) { flush(); return; }
      const x = ((offset + i) / (span - 1)) * width;
      const y = height - 2 - (v / scale) * (height - 6);
      points.push(x.toFixed(1) + "," + y.toFixed(1));
    });
    flush();
    return "(max " + format(max) + ")";
  }

  function setProblem(text) {
    const banner = $("problem");
    banner.hidden = !text;
    banner.textContent = text || "";
    for (const s of document.querySelectorAll("section")) s.classList.toggle("stale", !!text);
  }

  async function getJson(path) {
    const reply = await fetch(path, { cache: "no-store" });
    if (!reply.ok) throw new Error(path + " answered HTTP " + reply.status);
    return reply.json();
  }

  async function poll() {
    try {
      const [workers, cluster, traffic] = await Promise.all([
        getJson("/chorus/workers"), getJson("/chorus/ensembles"), getJson("/chorus/traffic"),
      ]);
      renderWorkers(workers);
      renderEnsembles(cluster, traffic);
      renderModels(cluster, traffic);
      renderTraffic(traffic);
      const ready = $("ready");
      ready.className = "pill " + (cluster.ready ? "ready" : "unready");
      ready.textContent = cluster.ready ? "ready" : "not ready";
      lastOk = new Date();
      $("updated").textContent = "updated " + lastOk.toLocaleTimeString();
      setProblem(null);
    } catch (e) {
      const since = lastOk ? "; the data below is from " + lastOk.toLocaleTimeString() : "";
      setProblem("Cannot reach the coordinator (" + e.message + ")" + since);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
