// benchmarks/viewer.py injects this before the viewer page's own scripts
// (Page.addScriptToEvaluateOnNewDocument): it wraps EventSource (a record right after the page's
// own onmessage handler ran) and uPlot (a record in each chart's draw hook); all in window.__mb.
(() => {
  if (window.__mb) return;
  const M = (window.__mb = {msgs: [], draws: [], firstDraw: null, errors: [], es: [],
                            record: true});
  addEventListener("error", (e) => M.errors.push("error: " + e.message));
  addEventListener("unhandledrejection",
                   (e) => M.errors.push("unhandled rejection: " + String(e.reason)));
  M.snap = () => {  // "run|step/key" -> [points, last step] of the page's chart data
    const out = {}, cs = window.magnusCharts;
    if (cs) for (const name in cs) {
      const runs = cs[name].runs;
      for (const id in runs) {
        const s = runs[id].steps;
        out[id + "|" + name] = [s.length, s.length ? s[s.length - 1] : null];
      }
    }
    return out;
  };
  const RealES = window.EventSource;
  function ES(url, cfg) {
    const es = new RealES(url, cfg);
    let handler = null;
    Object.defineProperty(es, "onmessage", {configurable: true, get: () => handler,
                                            set: (f) => { handler = f; }});
    es.addEventListener("message", (e) => {
      const t1 = Date.now();
      try { if (handler) handler.call(es, e); }
      finally { if (M.record) M.msgs.push([t1, Date.now(), e.data.length, M.snap()]); }
    });
    M.es.push(es);
    return es;
  }
  ES.prototype = RealES.prototype;
  ES.CONNECTING = 0; ES.OPEN = 1; ES.CLOSED = 2;
  window.EventSource = ES;
  let wrapped = null;
  Object.defineProperty(window, "uPlot", {configurable: true, enumerable: true,
    get: () => wrapped,
    set: (real) => { wrapped = new Proxy(real, {construct(target, args) {
      const [opts, data] = args;
      const x = data && data[0], n = x ? x.length : 0, last = n ? x[n - 1] : null;
      const hooks = Object.assign({}, opts.hooks);
      hooks.draw = [...(hooks.draw || []), () => {
        const now = Date.now();
        if (M.firstDraw === null) M.firstDraw = now;
        if (M.record) M.draws.push([now, n, last]);
      }];
      return Reflect.construct(target, [Object.assign({}, opts, {hooks}), ...args.slice(1)]);
    }}); }});
})();
