// The magnusd viewer: the runs table and the run page. Plain JS, uPlot for charts.
// Data comes from the JSON API (design §12); live updates from /api/events (Server-Sent Events).
"use strict";
(function () {
  const magnus = (window.magnus = {});
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f",
                  "#db2777", "#854d0e", "#475569"];
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g,
    (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const api = (path) => fetch(path, {credentials: "same-origin"}).then((r) => {
    if (!r.ok) throw new Error(`${path}: ${r.status}`);
    return r.json();
  });
  const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
  const span = (s) => {
    if (s == null) return "";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
  };
  const fmt = (v) => (v == null ? "–" : typeof v === "number" ? Number(v.toPrecision(6)) : v);

  function live(url, onData) {
    const dot = document.getElementById("live");
    const es = new EventSource(url);
    es.onopen = () => dot && dot.classList.add("on");
    es.onerror = () => dot && dot.classList.remove("on");
    es.onmessage = (e) => onData(JSON.parse(e.data));
    return es;
  }

  // -- the runs table --------------------------------------------------------------------------

  magnus.runsPage = function () {
    let rows = [], sortKey = "updated", desc = true;
    const selected = new Set();
    const tbody = document.querySelector("#runs tbody");
    const filter = document.getElementById("filter"), tagSel = document.getElementById("tag");
    const statusSel = document.getElementById("status"), btn = document.getElementById("compare");

    function render() {
      const text = filter.value.trim().toLowerCase(), tag = tagSel.value, st = statusSel.value;
      const shown = rows.filter((r) => (!tag || r.tag === tag) && (!st || r.status === st) &&
        (!text || [r.run_id, r.tag, r.status, ...(r.hosts || [])].join(" ").toLowerCase()
          .includes(text)));
      const val = (r) => (sortKey === "duration" ? r.duration : sortKey === "hosts"
        ? (r.hosts || []).join(",") : r[sortKey]);
      shown.sort((a, b) => {
        const x = val(a), y = val(b);
        const c = x == null ? -1 : y == null ? 1 : x < y ? -1 : x > y ? 1 : 0;
        return desc ? -c : c;
      });
      tbody.innerHTML = shown.map((r) => `<tr data-run="${esc(r.run_id)}">
        <td><input type="checkbox" ${selected.has(r.run_id) ? "checked" : ""}></td>
        <td><a href="/runs/${encodeURIComponent(r.run_id)}">${esc(r.run_id)}</a></td>
        <td>${esc(r.tag)}</td><td class="status ${esc(r.status)}">${esc(r.status)}</td>
        <td>${esc((r.hosts || []).join(", "))}</td><td>${when(r.started)}</td>
        <td>${span(r.duration)}</td><td>${r.last_step ?? ""}</td><td>${when(r.updated)}</td>
      </tr>`).join("");
      document.getElementById("count").textContent = `${shown.length} of ${rows.length} runs`;
      btn.disabled = selected.size < 1;
    }

    async function load() {
      rows = await api("/api/runs");
      for (const r of rows) r.duration = r.started && r.updated ? r.updated - r.started : null;
      const tags = [...new Set(rows.map((r) => r.tag).filter(Boolean))].sort();
      const keep = tagSel.value;
      tagSel.innerHTML = `<option value="">every tag</option>` +
        tags.map((t) => `<option>${esc(t)}</option>`).join("");
      tagSel.value = keep;
      render();
    }

    document.querySelectorAll("th[data-key]").forEach((th) => th.addEventListener("click", () => {
      desc = sortKey === th.dataset.key ? !desc : th.dataset.key !== "run_id";
      sortKey = th.dataset.key;
      document.querySelectorAll("th").forEach((h) => h.classList.remove("sorted", "asc", "desc"));
      th.classList.add("sorted", desc ? "desc" : "asc");
      render();
    }));
    [filter, tagSel, statusSel].forEach((el) => ["input", "change"].forEach(
      (ev) => el.addEventListener(ev, render)));
    tbody.addEventListener("change", (e) => {
      const id = e.target.closest("tr").dataset.run;
      e.target.checked ? selected.add(id) : selected.delete(id);
      btn.disabled = selected.size < 1;
    });
    btn.addEventListener("click", () => {
      const [first, ...rest] = [...selected];
      location.href = `/runs/${encodeURIComponent(first)}` +
        (rest.length ? `?compare=${rest.map(encodeURIComponent).join(",")}` : "");
    });
    let pending = null;
    live("/api/events", () => { pending = pending || setTimeout(() => { pending = null; load(); }, 1000); });
    load();
  };

  // -- one run (and the runs it is compared with) ------------------------------------------------

  magnus.runPage = function () {
    const first = decodeURIComponent(location.pathname.replace(/^\/runs\//, ""));
    const others = (new URLSearchParams(location.search).get("compare") || "")
      .split(",").filter(Boolean);
    const runIds = [first, ...others.filter((r) => r !== first)];
    const color = (id) => COLORS[runIds.indexOf(id) % COLORS.length];
    document.getElementById("title").textContent = runIds.join(" vs ");
    document.title = `magnusd — ${runIds.join(" vs ")}`;
    const state = {x: "step", logy: false, smooth: 0};
    const charts = (window.magnusCharts = {});  // "step/key" → {runs: {id: {steps, times, values}}, plot}
    const infos = {};

    function renderInfo() {
      document.getElementById("runs-info").innerHTML = runIds.map((id) => {
        const r = infos[id];
        if (!r) return `<div class="run-card"><b style="color:${color(id)}">${esc(id)}</b> …</div>`;
        const steps = Object.values(r.steps);
        return `<div class="run-card"><h2><span style="color:${color(id)}">■</span> ${esc(id)}
          <span class="status ${esc(r.status)}">${esc(r.status)}</span>
          <span class="muted small">tag ${esc(r.tag || "–")}</span></h2>
          <table class="small"><tr><th>step</th><th>status</th><th>attempt</th><th>host</th>
          <th>pid</th><th>rank</th><th>start</th><th>end</th><th>end reason</th></tr>
          ${steps.map((st) => st.attempts.map((a, i) => `<tr><td>${i ? "" : esc(st.name)}</td>
            <td class="status ${esc(i ? a.status : st.status)}">${esc(i ? a.status : st.status)}</td>
            <td class="status ${esc(a.status)}">${esc(a.status)}</td><td>${esc(a.host)}</td>
            <td>${a.pid ?? ""}</td><td>${a.rank ?? ""}</td><td>${esc(a.start_time || "")}</td>
            <td>${esc(a.end_time || "")}</td><td>${esc(a.end_reason || "")}</td></tr>`).join("")
            || `<tr><td>${esc(st.name)}</td><td class="status ${esc(st.status)}">${esc(st.status)}</td></tr>`).join("")}
          </table>
          ${steps.map((st) => {
            const m = Object.entries(st.user_defined_metrics);
            return m.length ? `<p class="small"><b>${esc(st.name)}</b> at step 0: ` +
              m.map(([k, v]) => `${esc(k)} = <code>${esc(JSON.stringify(v))}</code>`).join(", ") +
              "</p>" : "";
          }).join("")}</div>`;
      }).join("");
    }

    function ema(values, a) {
      if (!a) return values;
      let last = null, out = new Array(values.length);
      for (let i = 0; i < values.length; i++) {
        const v = values[i];
        out[i] = v == null ? null : (last = last == null ? v : a * last + (1 - a) * v);
      }
      return out;
    }

    function chartData(c) {
      const ids = runIds.filter((id) => c.runs[id]);
      const tables = ids.map((id) => {
        const d = c.runs[id], xs = state.x === "step" ? d.steps : d.times;
        const order = xs.map((_, i) => i).sort((i, j) => xs[i] - xs[j]);
        const x = order.map((i) => xs[i]), y = order.map((i) => d.values[i]);
        return state.smooth ? [x, y, ema(y, state.smooth)] : [x, y];
      });
      return {ids, data: tables.length ? uPlot.join(tables) : [[]]};
    }

    function draw(name) {
      const c = charts[name];
      const {ids, data} = chartData(c);
      const series = [{label: state.x === "step" ? "step" : "time"}];
      const few = data[0].length < 50;  // a handful of points: show them, not just lines
      for (const id of ids) {
        series.push({label: state.smooth ? `${id} (raw)` : id, stroke: color(id),
                     width: state.smooth ? 1 : 1.5, alpha: state.smooth ? 0.25 : 1,
                     spanGaps: true, points: {show: few, size: 6, fill: color(id)}});
        if (state.smooth) series.push({label: id, stroke: color(id), width: 2, spanGaps: true,
                                       points: {show: false}});
      }
      const opts = {width: c.el.clientWidth - 12, height: 260, series,
        scales: {x: {time: state.x === "time"}, y: {distr: state.logy ? 3 : 1}},
        axes: [{}, {size: 60}], legend: {live: true}};
      if (c.plot) c.plot.destroy();
      c.plot = new uPlot(opts, data, c.el.querySelector(".plot"));
    }

    function ensureChart(name) {
      if (charts[name]) return charts[name];
      const el = document.createElement("div");
      el.className = "chart";
      el.dataset.series = name;
      el.innerHTML = `<h3>${esc(name)}</h3><div class="plot"></div>`;
      const box = document.getElementById("charts");
      const after = [...box.children].find((c) => c.dataset.series > name);
      box.insertBefore(el, after || null);  // charts in name order
      return (charts[name] = {el, runs: {}, plot: null, info: {}});
    }

    function renderCompare() {
      const names = Object.keys(charts).sort();
      const cell = (c, id) => {
        const d = c.runs[id];
        if (!d || !d.values.length) return "<td>–</td>";
        let lo = null, hi = null;
        for (const v of d.values) if (v != null) { lo = lo == null || v < lo ? v : lo; hi = hi == null || v > hi ? v : hi; }
        return `<td>${fmt(d.values[d.values.length - 1])} / ${fmt(lo)} / ${fmt(hi)}</td>`;
      };
      document.getElementById("compare-table").innerHTML =
        `<tr><th>metric</th>${runIds.map((id) => `<th style="color:${color(id)}">${esc(id)} last / min / max</th>`).join("")}</tr>` +
        names.map((n) => `<tr><td>${esc(n)}</td>${runIds.map((id) => cell(charts[n], id)).join("")}</tr>`).join("");
    }

    let scheduled = new Set(), frame = null;
    function redraw(name) {
      scheduled.add(name);
      frame = frame || requestAnimationFrame(() => {
        frame = null;
        for (const n of scheduled) draw(n);
        scheduled = new Set();
        renderCompare();
      });
    }

    async function loadRun(id) {
      const r = await api(`/api/runs/${encodeURIComponent(id)}`);
      infos[id] = r;
      renderInfo();
      return r;
    }

    async function loadSeries(id, s) {
      const name = `${s.step_name}/${s.key}`;
      const got = await api(`/api/runs/${encodeURIComponent(id)}/series?` + new URLSearchParams(
        {key: s.key, step_name: s.step_name, max_points: 2000}));
      const c = ensureChart(name), live = c.runs[id];
      const d = (c.runs[id] = {steps: got.steps, times: got.times, values: got.values});
      if (live) {  // points that arrived live while this was fetched
        const last = got.steps.length ? got.steps[got.steps.length - 1] : -1;
        live.steps.forEach((st, i) => { if (st > last) {
          d.steps.push(st); d.times.push(live.times[i]); d.values.push(live.values[i]); } });
      }
      redraw(name);
    }

    async function load() {
      const runs = await Promise.all(runIds.map((id) => loadRun(id).catch(() => null)));
      const jobs = [];
      runs.forEach((r, i) => r && r.series.forEach((s) => jobs.push(loadSeries(runIds[i], s))));
      await Promise.all(jobs);
      renderCompare();
    }

    document.getElementById("xaxis").addEventListener("change", (e) => {
      state.x = e.target.value; Object.keys(charts).forEach(redraw);
    });
    document.getElementById("logy").addEventListener("change", (e) => {
      state.logy = e.target.checked; Object.keys(charts).forEach(redraw);
    });
    document.getElementById("smooth").addEventListener("input", (e) => {
      state.smooth = Number(e.target.value);
      document.getElementById("smooth-value").textContent = e.target.value;
      Object.keys(charts).forEach(redraw);
    });

    const url = runIds.length === 1 ? `/api/events?run_id=${encodeURIComponent(first)}` : "/api/events";
    live(url, (msg) => {
      for (const s of msg.series) {
        if (!runIds.includes(s.run_id)) continue;
        const name = `${s.step_name}/${s.key}`, c = ensureChart(name);
        const d = c.runs[s.run_id] || (c.runs[s.run_id] = {steps: [], times: [], values: []});
        for (let i = 0; i < s.steps.length; i++) {  // no spread: a message can be large
          d.steps.push(s.steps[i]); d.times.push(s.times[i]); d.values.push(s.values[i]);
        }
        redraw(name);
      }
      const marked = new Set(msg.marks.map((m) => m.run_id).filter((id) => runIds.includes(id)));
      marked.forEach((id) => loadRun(id));
    });
    load();
  };
})();
