// Switchyard console: one page, no dependencies. Every figure comes from the admin API
// (/admin/*) the CLI uses; every action calls it. Charts are SVG drawn here.
'use strict';

const $ = (sel, root) => (root || document).querySelector(sel);
const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
const esc = (s) => String(s == null ? '' : s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const fmtNum = (v, d) => (v == null || !isFinite(v) ? '–' : Number(v).toLocaleString('en-US', { maximumFractionDigits: d == null ? 2 : d }));
const fmtPct = (v) => (v == null || !isFinite(v) ? '–' : (v * 100).toFixed(v > 0 && v < 0.1 ? 1 : 0) + '%');
const fmtUsd = (v) => (v == null || !isFinite(v) ? '–' : (v < 0 ? '−$' : '$') + (Math.abs(v) >= 100 ? Math.abs(v).toFixed(0) : Math.abs(v) >= 1 ? Math.abs(v).toFixed(2) : String(+Math.abs(v).toFixed(4))));
const fmtMs = (v) => (v == null || !isFinite(v) ? '–' : v >= 1000 ? (v / 1000).toFixed(1) + ' s' : v >= 10 || v === 0 ? v.toFixed(0) + ' ms' : String(+v.toFixed(2)) + ' ms');
const fmtTime = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
const fmtClock = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
const fmtDay = (ms) => new Date(ms).toLocaleDateString([], { month: 'short', day: 'numeric' });
// Axis labels for a time span: seconds under ten minutes, dates past two days.
const timeFmt = (span) => (span < 600e3 ? fmtClock : span > 2 * 86400e3 ? fmtDay : fmtTime);
const fmtDate = (ms) => (ms ? new Date(ms).toLocaleString([], { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' }) : '–');

// ---- API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || 'HTTP ' + status);
    this.status = status;
    this.body = body;
  }
}

async function api(path, opts) {
  opts = opts || {};
  const headers = { 'x-switchyard-console': '1' };
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(path, {
    method: opts.method || 'GET',
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    credentials: 'same-origin',
    cache: 'no-store',
  });
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { error: { message: text } }; }
  if (r.status === 401) { showLogin(); }
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

function toast(msg, bad) {
  const t = $('#toast');
  t.textContent = msg;
  t.className = 'toast' + (bad ? ' bad' : '');
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 8000 : 4000);
}

// ---- Charts -------------------------------------------------------------------------

const charts = new Map();
let chartSeq = 0;

// A placeholder for a line chart, drawn once it is in the page (at its real width).
// opts: { t: [ms], series: [{ name, values: [number|null] }], fmt, min, max, height, bands }
function chart(opts) {
  const id = 'c' + (++chartSeq);
  charts.set(id, opts);
  return '<div class="chartbox" data-chart="' + id + '"></div>';
}

// A round step for about four grid intervals up to `v` (whole numbers when `integer`).
function niceStep(v, integer) {
  const raw = v > 0 ? v / 4 : 0.25;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = 10 * p;
  for (const m of [1, 2, 2.5, 5]) if (m * p >= raw) { step = m * p; break; }
  return integer ? Math.max(1, Math.round(step)) : step;
}

function drawCharts(root) {
  for (const box of $$('[data-chart]', root)) {
    const opts = charts.get(box.dataset.chart);
    charts.delete(box.dataset.chart);
    if (opts) box.innerHTML = svgChart(opts, Math.max(260, box.clientWidth || 600));
  }
}

function svgChart(o, W) {
  const H = o.height || 150;
  const L = 48, R = 8, T = 8, B = 20;
  const t = o.t || [];
  const series = (o.series || []).filter((s) => s.values && s.values.some((v) => v != null));
  if (!t.length || !series.length) {
    return '<div class="empty small">' + esc(o.empty || 'No data yet: figures appear as traffic flows.') + '</div>';
  }
  let lo = o.min != null ? o.min : Infinity, hi = o.max != null ? o.max : -Infinity;
  for (const s of series) for (const v of s.values) if (v != null) { if (o.min == null) lo = Math.min(lo, v); if (o.max == null) hi = Math.max(hi, v); }
  if (o.min == null) lo = Math.min(0, lo);
  let step = o.step || (o.max != null ? (hi - lo) / 4 : niceStep(hi - lo, o.integer));
  if (o.max == null) hi = lo + step * Math.max(1, Math.ceil((hi - lo) / step - 1e-9));
  if (!(hi > lo)) { hi = lo + 1; step = 0.25; }
  const lines = Math.round((hi - lo) / step);
  const t0 = o.from != null ? Math.min(o.from, t[0]) : t[0];
  const tEnd = o.to != null ? Math.max(o.to, t[t.length - 1]) : t[t.length - 1];
  const t1 = tEnd > t0 ? tEnd : t0 + 1;
  const tfmt = o.tfmt || timeFmt(t1 - t0);
  const x = (ms) => L + ((ms - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const fmt = o.fmt || fmtNum;
  let g = '';
  for (let i = 0; i <= lines; i++) {
    const v = lo + step * i, yy = y(v).toFixed(1);
    g += '<line class="grid" x1="' + L + '" x2="' + (W - R) + '" y1="' + yy + '" y2="' + yy + '"/>';
    g += '<text x="' + (L - 6) + '" y="' + (+yy + 3) + '" text-anchor="end">' + esc(fmt(v)) + '</text>';
  }
  const ticks = Math.min(6, Math.max(2, Math.floor((W - L) / 90)));
  for (let i = 0; i < ticks; i++) {
    const ms = t0 + ((t1 - t0) * i) / (ticks - 1);
    const anchor = i === 0 ? 'start' : i === ticks - 1 ? 'end' : 'middle';
    g += '<text x="' + x(ms).toFixed(1) + '" y="' + (H - 5) + '" text-anchor="' + anchor + '">' + esc(tfmt(ms)) + '</text>';
  }
  for (const b of o.bands || []) {
    const bx = x(Math.max(b.from, t0)), bw = Math.max(2, x(Math.min(b.to, t1)) - bx);
    g += '<rect class="band" x="' + bx.toFixed(1) + '" y="' + T + '" width="' + bw.toFixed(1) + '" height="' + (H - T - B) + '"><title>' + esc(b.title || '') + '</title></rect>';
  }
  series.forEach((s, i) => {
    const cls = 's' + ((s.color || i) % 6 + 1);
    let d = '', pen = false, area = '', first = null, last = null;
    s.values.forEach((v, j) => {
      if (v == null || j >= t.length) { pen = false; return; }
      const px = x(t[j]).toFixed(1), py = y(v).toFixed(1);
      d += (pen ? 'L' : 'M') + px + ' ' + py;
      pen = true;
      if (first == null) first = px;
      last = px;
    });
    if (o.area && first != null) area = '<path class="area ' + cls + '" d="' + d + 'L' + last + ' ' + y(lo) + 'L' + first + ' ' + y(lo) + 'Z"/>';
    const single = s.values.filter((v) => v != null).length === 1;
    g += area + '<path class="line ' + cls + '" d="' + d + '"/>';
    if (single) {
      const j = s.values.findIndex((v) => v != null);
      g += '<circle class="' + cls + '" r="3" cx="' + x(t[j]).toFixed(1) + '" cy="' + y(s.values[j]).toFixed(1) + '"/>';
    }
  });
  const legend = series.length > 1 || o.legend
    ? '<div class="legend">' + series.map((s, i) => '<span><i class="s' + ((s.color || i) % 6 + 1) + '"></i>' + esc(s.name) + '</span>').join('') + '</div>'
    : '';
  return '<svg class="chart" viewBox="0 0 ' + W + ' ' + H + '" width="' + W + '" height="' + H + '" role="img" aria-label="' + esc(o.label || 'chart') + '">' + g + '</svg>' + legend;
}

// A horizontal share bar (SVG: no inline styles under the page's CSP).
function bar(share, live) {
  const w = Math.max(0, Math.min(1, share || 0)) * 100;
  return '<svg class="bar' + (live ? ' live' : '') + '" viewBox="0 0 100 8" preserveAspectRatio="none" width="100%" height="8"><rect class="track" width="100" height="8" rx="4"/><rect class="fill" width="' + w.toFixed(1) + '" height="8" rx="4"/></svg>';
}

function badge(state) {
  const cls = { closed: 'ok', healthy: 'ok', running: 'ok', complete: 'ok', half_open: 'warn', paused: 'warn', open: 'bad', unhealthy: 'bad', rolled_back: 'bad', aborted: 'bad' }[state] || '';
  return '<span class="badge ' + cls + '">' + esc(String(state).replace('_', ' ')) + '</span>';
}

// ---- Pages --------------------------------------------------------------------------

const pages = {};

pages.routes = {
  title: 'Routes',
  poll: 5000,
  async render() {
    const data = await api('/admin/routes');
    if (!data.routes.length) return '<div class="card empty">No routes in the config in force.</div>';
    return '<h1>Routes</h1>' + data.routes.map(routeCard).join('');
  },
};

function routeCard(r) {
  const liveTotal = Object.values(r.live.requests).reduce((a, b) => a + b, 0);
  const targets = r.targets.map((t) => {
    const n = r.live.requests[t.backend] || 0;
    const liveShare = liveTotal ? n / liveTotal : 0;
    return '<tr><td><b>' + esc(t.backend) + '</b>' + (t.model ? '<div class="muted mono small">' + esc(t.model) + '</div>' : '') + '</td>'
      + '<td class="num">' + t.weight + '</td>'
      + '<td><div class="row"><span class="num" title="configured share">' + fmtPct(t.share) + '</span>' + bar(t.share) + '</div></td>'
      + '<td><div class="row"><span class="num" title="share of the last minute">' + (liveTotal ? fmtPct(liveShare) : '–') + '</span>' + bar(liveShare, true) + '</div></td>'
      + '<td class="num hide-sm">' + fmtNum(n, 0) + '</td></tr>';
  }).join('');
  const others = Object.keys(r.live.requests).filter((b) => !r.targets.some((t) => t.backend === b));
  const candidate = r.rollout ? String(r.rollout.candidate).split('/')[0] : null;
  const otherRows = others.map((b) => '<tr><td>' + esc(b) + ' <span class="muted small">(' + (b === candidate ? 'rollout candidate' : 'fallback') + ')</span></td><td></td><td></td><td><div class="row"><span class="num">' + fmtPct(r.live.requests[b] / liveTotal) + '</span>' + bar(r.live.requests[b] / liveTotal, true) + '</div></td><td class="num hide-sm">' + fmtNum(r.live.requests[b], 0) + '</td></tr>').join('');
  const series = Object.entries(r.series.requests).map(([name, values]) => ({ name, values }));
  let extra = '';
  if (r.fallback.length) extra += '<div class="small"><span class="muted">Fallback:</span> ' + r.fallback.map((t) => esc(t.backend) + (t.model ? '/' + esc(t.model) : '')).join(' → ') + '</div>';
  if (r.shadow) extra += '<div class="small"><span class="muted">Shadow:</span> ' + esc(r.shadow.backend) + (r.shadow.model ? '/' + esc(r.shadow.model) : '') + ' at ' + fmtPct(r.shadow.sample) + (r.shadow.judge ? ', judged by ' + esc(r.shadow.judge) : '') + '</div>';
  return '<section class="card route" data-route="' + esc(r.name) + '">'
    + '<div class="row spread"><h2 class="mono">' + esc(r.name) + '</h2><span class="muted small">' + fmtNum(liveTotal, 0) + ' requests in the last ' + (r.live.window_secs || 0) + ' s</span></div>'
    + '<div class="scroll"><table><thead><tr><th>Target</th><th class="num">Weight</th><th>Configured</th><th>Live share</th><th class="num hide-sm">Requests</th></tr></thead><tbody>' + targets + otherRows + '</tbody></table></div>'
    + extra
    + (r.rollout ? rolloutBlock(r.rollout) : '')
    + '<h3>Requests per 10 s, by backend</h3>' + chart({ t: r.series.t, series, min: 0, integer: true, label: 'requests by backend', fmt: (v) => fmtNum(v, 0) })
    + '</section>';
}

function rolloutBlock(ro) {
  const steps = ro.steps.map((w, i) => '<span class="badge' + (i + 1 === ro.step ? ' ok' : '') + '">' + w + '%</span>').join(' ');
  const guards = ro.guards.length
    ? '<table><thead><tr><th>Guard</th><th class="num">Value</th><th class="num">Limit</th><th></th></tr></thead><tbody>' + ro.guards.map((g) => '<tr><td>' + esc(g.name) + (g.detail ? ' <span class="muted small">' + esc(g.detail) + '</span>' : '') + '</td><td class="num">' + fmtNum(g.value, 3) + '</td><td class="num">' + fmtNum(g.limit, 3) + '</td><td>' + (g.ok === false ? badge('open').replace('open', 'failing') : g.ok ? '<span class="badge ok">ok</span>' : '<span class="badge">waiting</span>') + '</td></tr>').join('') + '</tbody></table>'
    : '<div class="muted small">No guard results yet.</div>';
  // The actions that apply in this state (the API refuses the others with 409).
  const allowed = { running: ['pause', 'promote', 'abort'], paused: ['resume', 'promote', 'abort'] }[ro.state] || [];
  const acts = allowed.map((a) => '<button class="' + (a === 'abort' ? 'danger' : 'ghost') + '" data-rollout="' + a + '" data-route="' + esc(ro.route) + '">' + a[0].toUpperCase() + a.slice(1) + '</button>').join('');
  return '<h3>Rollout</h3><div class="row spread"><div class="row">' + badge(ro.state) + ' <span>candidate <b>' + esc(ro.candidate) + '</b> at ' + fmtNum(ro.weight) + '% · step ' + ro.step + ' of ' + ro.steps.length + '</span></div><div class="row">' + acts + '</div></div>'
    + '<div class="row small steps">' + steps + '</div>'
    + '<div class="grid3 small"><div>Candidate: ' + fmtNum(ro.window.candidate.requests, 0) + ' req, ' + fmtNum(ro.window.candidate.errors, 0) + ' err</div><div>Incumbent: ' + fmtNum(ro.window.incumbent.requests, 0) + ' req, ' + fmtNum(ro.window.incumbent.errors, 0) + ' err</div>' + (ro.reason ? '<div class="muted">' + esc(ro.reason) + '</div>' : '') + '</div>'
    + '<div class="scroll">' + guards + '</div>';
}

pages.backends = {
  title: 'Backends',
  poll: 5000,
  async render() {
    const [now, hist] = await Promise.all([api('/admin/breakers'), api('/admin/series/backends')]);
    if (!now.breakers.length) return '<div class="card empty">No backends.</div>';
    const rows = now.breakers.map((b) => '<tr data-url="' + esc(b.url) + '"><td><b>' + esc(b.backend) + '</b><div class="muted small mono">' + esc(b.url) + '</div></td>'
      + '<td class="breaker">' + badge(b.state) + (b.probe_in_secs != null ? '<div class="muted small">probe in ' + b.probe_in_secs.toFixed(0) + ' s</div>' : '') + '</td>'
      + '<td>' + badge(b.healthy ? (b.ejected ? 'ejected' : 'healthy') : 'unhealthy') + '</td>'
      + '<td class="num">' + b.in_flight + '</td><td class="num">' + fmtMs(b.latency_ewma_ms) + '</td>'
      + '<td class="num">' + fmtPct(b.error_rate) + '<div class="muted small">' + b.window_failures + '/' + b.window_requests + '</div></td>'
      + '<td class="num hide-sm">' + b.opened_total + '</td></tr>').join('');
    const cards = hist.urls.map((u) => {
      const bands = [];
      u.state.forEach((s, i) => { if (s === 'open' && hist.t[i]) bands.push({ from: hist.t[i] - hist.step_secs * 1000, to: hist.t[i], title: 'breaker open' }); });
      return '<section class="card"><div class="row spread"><h2>' + esc(u.backend) + '</h2><span class="muted small mono">' + esc(u.url) + '</span></div><div class="grid4">'
        + '<div><h3>Error rate (breaker window)</h3>' + chart({ t: hist.t, series: [{ name: 'error rate', values: u.error_rate, color: 4 }], min: 0, max: 1, fmt: fmtPct, bands, label: 'error rate' }) + '</div>'
        + '<div><h3>Latency (EWMA)</h3>' + chart({ t: hist.t, series: [{ name: 'latency', values: u.latency_ms }], min: 0, fmt: fmtMs, area: true, label: 'latency' }) + '</div>'
        + '<div><h3>In flight</h3>' + chart({ t: hist.t, series: [{ name: 'in flight', values: u.in_flight, color: 2 }], min: 0, integer: true, fmt: (v) => fmtNum(v, 0), label: 'in flight' }) + '</div>'
        + '<div><h3>Health</h3>' + chart({ t: hist.t, series: [{ name: 'healthy', values: u.healthy.map((h) => (h == null ? null : h ? 1 : 0)), color: 2 }], min: 0, max: 1, height: 80, fmt: (v) => (v >= 1 ? 'up' : v <= 0 ? 'down' : ''), label: 'health' }) + '</div>'
        + '</div></section>';
    }).join('');
    return '<h1>Backends</h1><section class="card"><div class="scroll"><table><thead><tr><th>Backend URL</th><th>Breaker</th><th>Health</th><th class="num">In flight</th><th class="num">Latency</th><th class="num">Errors</th><th class="num hide-sm">Opened</th></tr></thead><tbody>' + rows + '</tbody></table></div></section>'
      + '<p class="muted small">The last hour, one point per ' + hist.step_secs + ' s; red bands: breaker open.</p>' + cards;
  },
};

const ranges = { '1h': '5m', '24h': '1h', '7d': '6h', '30d': '1d' };
const state = { spendBy: 'team', spendSince: '24h', shadowSince: '24h' };

function rangePicker(key, page) {
  return '<select data-range="' + key + '" data-page="' + page + '" aria-label="Time range">' + Object.keys(ranges).map((r) => '<option' + (state[key] === r ? ' selected' : '') + ' value="' + r + '">last ' + r + '</option>').join('') + '</select>';
}

function bucketSeries(points, keyOf, valueOf) {
  const ts = Array.from(new Set(points.map((p) => p.t))).sort((a, b) => a - b);
  const idx = new Map(ts.map((t, i) => [t, i]));
  const by = new Map();
  for (const p of points) {
    const k = keyOf(p);
    if (!by.has(k)) by.set(k, ts.map(() => null));
    const v = valueOf(p);
    by.get(k)[idx.get(p.t)] = v;
  }
  return { t: ts, series: Array.from(by.entries()).map(([name, values]) => ({ name, values })) };
}

pages.shadow = {
  title: 'Shadow',
  poll: 30000,
  async render() {
    const since = state.shadowSince;
    const d = await api('/admin/shadow?since=' + since + '&step=' + ranges[since]);
    const key = (p) => p.route + ' → ' + p.shadow_backend;
    const agree = bucketSeries(d.points, key, (p) => p.agreement);
    const judge = bucketSeries(d.points.filter((p) => p.judged > 0), key, (p) => p.judge_score);
    const pairs = d.points.reduce((a, p) => a + p.pairs, 0);
    const worst = d.worst.map((w) => '<section class="card pairs"><div class="row spread"><div><b class="mono">' + esc(w.route) + '</b> <span class="muted small">' + fmtDate(w.t) + '</span></div><div class="row small">'
      + (w.judge_score != null ? '<span class="badge ' + (w.judge_score < 5 ? 'bad' : 'warn') + '">judge ' + fmtNum(w.judge_score, 1) + '/10</span>' : '')
      + (w.similarity != null ? '<span class="badge">similarity ' + fmtPct(w.similarity) + '</span>' : '')
      + (w.agree === false ? '<span class="badge warn">disagree</span>' : '') + '</div></div>'
      + (w.judge_reason ? '<div class="small muted">' + esc(w.judge_reason) + '</div>' : '')
      + '<div class="pair"><div><label>Served: ' + esc(w.primary) + '</label><pre>' + esc(w.primary_answer || '') + '</pre></div><div><label>Shadow: ' + esc(w.shadow) + '</label><pre>' + esc(w.shadow_error ? 'error: ' + w.shadow_error : w.shadow_answer || '') + '</pre></div></div></section>').join('');
    return '<div class="row spread"><h1>Shadow</h1>' + rangePicker('shadowSince', 'shadow') + '</div>'
      + '<div class="grid"><section class="card"><h2>Agreement</h2><div class="stat">' + fmtNum(pairs, 0) + ' <small>pairs compared</small></div>' + chart({ t: agree.t, series: agree.series, min: 0, max: 1, fmt: fmtPct, from: d.since_ms, to: Date.now(), label: 'agreement', legend: true, empty: 'No shadow pairs in this range.' }) + '</section>'
      + '<section class="card"><h2>Judge score</h2><div class="stat">' + fmtNum(d.points.reduce((a, p) => a + p.judged, 0), 0) + ' <small>pairs judged</small></div>' + chart({ t: judge.t, series: judge.series, from: d.since_ms, to: Date.now(), min: 0, max: 10, step: 2, fmt: (v) => fmtNum(v, 0), label: 'judge score', legend: true, empty: 'No judged pairs in this range (routes[].shadow.judge).' }) + '</section></div>'
      + '<h2>Worst disagreeing pairs</h2>' + (worst || '<div class="card empty">No disagreeing pairs in this range.</div>');
  },
};

pages.spend = {
  title: 'Spend',
  poll: 30000,
  async render() {
    const by = state.spendBy, since = state.spendSince;
    const q = 'by=' + by + '&since=' + since;
    const [series, report] = await Promise.all([api('/admin/spend/series?' + q + '&step=' + ranges[since]), api('/admin/spend?' + q)]);
    const cost = bucketSeries(series.points, (p) => p.group || '(none)', (p) => p.cost_usd);
    const savedPts = new Map();
    for (const p of series.points) savedPts.set(p.t, (savedPts.get(p.t) || 0) + (p.baseline_usd - p.cost_usd));
    const st = Array.from(savedPts.keys()).sort((a, b) => a - b);
    const span = { from: series.since_ms, to: Date.now() };
    const tot = report.total;
    const rows = report.lines.map((l) => '<tr><td>' + esc(l.group == null ? (by === 'route' ? '' : '(none)') : l.group) + '</td><td class="mono">' + esc(l.route) + '</td><td class="num">' + fmtNum(l.requests, 0) + '</td><td class="num hide-sm">' + fmtNum(l.tokens_in, 0) + ' / ' + fmtNum(l.tokens_out, 0) + '</td><td class="num">' + fmtUsd(l.cost_usd) + '</td><td class="num">' + fmtUsd(l.baseline_usd) + '</td><td class="num">' + fmtUsd(l.savings_usd) + '</td></tr>').join('');
    const sel = '<select id="spend-by" aria-label="Group by">' + ['team', 'model', 'route', 'key'].map((b) => '<option' + (b === by ? ' selected' : '') + '>' + b + '</option>').join('') + '</select>';
    return '<div class="row spread"><h1>Spend</h1><div class="row">' + sel + rangePicker('spendSince', 'spend') + '<a id="spend-csv" class="button ghost" href="/admin/spend?format=csv&' + q + '" download="switchyard-spend.csv">Download CSV</a></div></div>'
      + '<div class="grid3"><div class="card"><div class="muted small">Cost</div><div class="stat">' + fmtUsd(tot.cost_usd) + '</div></div><div class="card"><div class="muted small">Baseline</div><div class="stat">' + fmtUsd(tot.baseline_usd) + '</div></div><div class="card"><div class="muted small">Saved</div><div class="stat">' + fmtUsd(tot.savings_usd) + ' <small>' + (tot.baseline_usd > 0 ? fmtPct(tot.savings_usd / tot.baseline_usd) : '') + '</small></div></div><div class="card"><div class="muted small">Requests</div><div class="stat">' + fmtNum(tot.requests, 0) + ' <small>' + fmtNum(tot.errors, 0) + ' errors</small></div></div></div>'
      + '<div class="grid"><section class="card"><h2>Cost by ' + esc(by) + '</h2>' + chart({ t: cost.t, series: cost.series.map((x) => ({ name: x.name, values: x.values.map((v) => v || 0) })), ...span, min: 0, fmt: fmtUsd, legend: true, label: 'cost', empty: 'No requests in this range.' }) + '</section>'
      + '<section class="card"><h2>Savings against the baseline</h2>' + chart({ t: st, series: [{ name: 'saved', values: st.map((t) => savedPts.get(t)), color: 2 }], ...span, fmt: fmtUsd, area: true, label: 'savings', empty: 'No requests in this range.' }) + '</section></div>'
      + '<section class="card"><div class="scroll"><table><thead><tr><th>' + esc(by) + '</th><th>Route</th><th class="num">Requests</th><th class="num hide-sm">Tokens in / out</th><th class="num">Cost</th><th class="num">Baseline</th><th class="num">Saved</th></tr></thead><tbody>' + (rows || '<tr><td colspan="7" class="empty">No requests in this range.</td></tr>') + '</tbody></table></div></section>';
  },
};

pages.keys = {
  title: 'Keys',
  poll: 0,
  async render() {
    const d = await api('/admin/keys');
    const rows = d.data.map((k) => '<tr data-key="' + esc(k.id) + '"><td class="mono">' + esc(k.id) + '<div class="muted small">' + esc(k.prefix) + '…</div></td><td>' + esc(k.team) + (k.tags.length ? '<div class="muted small">' + k.tags.map(esc).join(', ') + '</div>' : '') + '</td>'
      + '<td class="small hide-sm">' + [['rpm', k.rpm], ['tpm', k.tpm], ['$/day', k.budget_daily], ['$/month', k.budget_monthly]].filter((x) => x[1] != null).map((x) => x[0] + ' ' + fmtNum(x[1])).join(' · ') + '</td>'
      + '<td class="small">' + fmtDate(k.created_ms) + '</td><td>' + (k.revoked_ms ? '<span class="badge bad">revoked</span>' : '<button class="ghost revoke" data-id="' + esc(k.id) + '">Revoke</button>') + '</td></tr>').join('');
    return '<h1>Keys</h1><section class="card"><h2>Create a key</h2><form id="key-form" class="form">'
      + '<div class="field"><label for="k-team">Team</label><input id="k-team" name="team" required></div>'
      + '<div class="field"><label for="k-tags">Tags (comma-separated)</label><input id="k-tags" name="tags"></div>'
      + '<div class="field"><label for="k-rpm">Requests/min</label><input id="k-rpm" name="rpm" type="number" min="1"></div>'
      + '<div class="field"><label for="k-tpm">Tokens/min</label><input id="k-tpm" name="tpm" type="number" min="1"></div>'
      + '<div class="field"><label for="k-bd">Budget $/day</label><input id="k-bd" name="budget_daily" type="number" min="0" step="any"></div>'
      + '<div class="field"><label for="k-bm">Budget $/month</label><input id="k-bm" name="budget_monthly" type="number" min="0" step="any"></div>'
      + '<div class="field"><button type="submit">Create key</button></div></form><div id="new-key"></div></section>'
      + '<section class="card"><div class="scroll"><table><thead><tr><th>Key</th><th>Team</th><th class="hide-sm">Limits</th><th>Created</th><th></th></tr></thead><tbody>' + (rows || '<tr><td colspan="5" class="empty">No keys yet.</td></tr>') + '</tbody></table></div></section>';
  },
};

pages.config = {
  title: 'Config',
  poll: 10000,
  async render() {
    const d = await api('/admin/config');
    const vs = d.versions.slice().reverse();
    const rows = vs.map((v) => '<tr><td class="num">' + v.version + '</td><td>' + (v.version === d.current ? '<span class="badge ok">in force</span>' : '') + '</td><td>' + esc(v.origin) + '</td><td class="small">' + fmtDate(v.loaded_at_unix * 1000) + '</td><td class="small mono hide-sm">' + v.routes.map(esc).join(', ') + '</td></tr>').join('');
    const opts = (sel) => vs.map((v) => '<option value="' + v.version + '"' + (v.version === sel ? ' selected' : '') + '>version ' + v.version + (v.version === d.current ? ' (in force)' : '') + '</option>').join('');
    const others = vs.filter((v) => v.version !== d.current);
    // The user's pick while both versions are kept; else the latest other version against the one in force.
    const kept = (n) => vs.some((v) => v.version === n);
    const picked = kept(state.diffFrom) && kept(state.diffTo) && state.diffFrom !== state.diffTo;
    const from = picked ? state.diffFrom : others.length ? others[0].version : d.current;
    const to = picked ? state.diffTo : d.current;
    // The store's record of every replica's changes (each replica runs its own file).
    const hist = (d.history || []).map((h) => '<tr><td class="small">' + fmtDate(h.at_ms) + '</td><td class="mono small">' + esc(h.replica) + (h.replica === d.replica ? ' <span class="badge ok">this one</span>' : '') + '</td><td class="num">' + h.version + '</td><td>' + esc(h.origin) + '</td><td class="mono small hide-sm">' + esc(h.hash.slice(0, 12)) + '</td></tr>').join('');
    const history = hist ? '<section class="card"><h2>Changes on every replica</h2><div class="scroll"><table><thead><tr><th>When</th><th>Replica</th><th class="num">Version</th><th>Origin</th><th class="hide-sm">File hash</th></tr></thead><tbody>' + hist + '</tbody></table></div></section>' : '';
    return '<div class="row spread"><h1>Config</h1><div class="row"><button id="reload" class="ghost">Reload from file</button><button id="rollback" class="danger"' + (d.versions.findIndex((v) => v.version === d.current) > 0 ? '' : ' disabled') + '>Roll back</button></div></div>'
      + '<div class="grid3"><div class="card"><div class="muted small">In force</div><div class="stat" id="current-version">version ' + d.current + '</div></div><div class="card"><div class="muted small">Kept versions</div><div class="stat">' + d.versions.length + '</div></div></div>'
      + '<div id="config-result"></div>'
      + '<section class="card"><div class="scroll"><table><thead><tr><th class="num">Version</th><th></th><th>Origin</th><th>Loaded</th><th class="hide-sm">Routes</th></tr></thead><tbody>' + rows + '</tbody></table></div></section>'
      + history
      + '<section class="card"><div class="row spread"><h2>Diff</h2><div class="row"><select id="diff-from" aria-label="From version">' + opts(from) + '</select> → <select id="diff-to" aria-label="To version">' + opts(to) + '</select></div></div><div id="diff" data-from="' + from + '" data-to="' + to + '"><div class="muted small">Loading…</div></div></section>';
  },
  async after() { await showDiff(); },
};

pages.evals = {
  title: 'Eval runs',
  poll: 0,
  async render() {
    return '<h1>Eval runs</h1><section class="card"><p>This gateway keeps no eval runs in its store: <code>switchyard eval</code> runs from the command line (or CI) and writes its report where you ask.</p>'
      + '<pre class="secret">switchyard eval --config switchyard.toml --dataset golden.jsonl \\\n  --baseline openai:gpt-4o --target local:llama-3.1-8b --out eval-report/</pre>'
      + '<p class="muted">The report folder holds <code>report.html</code> and <code>examples.jsonl</code>; gates fail the command when quality drops. Captured pairs (<code>switchyard capture export</code>) make a dataset from real traffic.</p></section>';
  },
};

// ---- Diff (line LCS; config files are small) ------------------------------------------

function lineDiff(a, b) {
  const A = a.split('\n'), B = b.split('\n');
  const n = A.length, m = B.length;
  if (n * m > 4e6) return [{ op: 'gap', text: 'Files too large to diff here.' }];
  const dp = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) dp[i][j] = A[i] === B[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && A[i] === B[j]) { out.push({ op: ' ', text: A[i] }); i++; j++; }
    else if (j < m && (i >= n || dp[i][j + 1] >= dp[i + 1][j])) { out.push({ op: '+', text: B[j++] }); }
    else { out.push({ op: '-', text: A[i++] }); }
  }
  // Keep three lines of context around changes.
  const keep = out.map(() => false);
  out.forEach((l, k) => { if (l.op !== ' ') for (let c = Math.max(0, k - 3); c <= Math.min(out.length - 1, k + 3); c++) keep[c] = true; });
  const res = [];
  let skipped = 0;
  out.forEach((l, k) => {
    if (keep[k]) { if (skipped) res.push({ op: 'gap', text: '… ' + skipped + ' unchanged lines' }); skipped = 0; res.push(l); } else skipped++;
  });
  if (skipped) res.push({ op: 'gap', text: '… ' + skipped + ' unchanged lines' });
  return res;
}

async function showDiff() {
  const box = $('#diff');
  if (!box) return;
  const from = +$('#diff-from').value, to = +$('#diff-to').value;
  const [a, b] = await Promise.all([api('/admin/config/versions/' + from), api('/admin/config/versions/' + to)]);
  if (a.text == null || b.text == null) { box.innerHTML = '<div class="muted small">The embedded default config has no file text.</div>'; return; }
  if (from === to) { box.innerHTML = '<div class="muted small">Pick two different versions.</div>'; return; }
  const d = lineDiff(a.text, b.text);
  const changed = d.some((l) => l.op === '+' || l.op === '-');
  box.innerHTML = changed
    ? '<pre class="diff">' + d.map((l) => '<span class="' + (l.op === '+' ? 'add' : l.op === '-' ? 'del' : l.op === 'gap' ? 'gap' : '') + '">' + esc(l.op === 'gap' ? l.text : l.op + ' ' + l.text) + '</span>').join('') + '</pre>'
    : '<div class="muted small">Versions ' + from + ' and ' + to + ' have the same text.</div>';
}

// ---- Router, polling, actions -----------------------------------------------------------

let current = null;
let timer = null;
let loading = false;

function pageName() {
  const h = location.hash.replace(/^#\/?/, '');
  return pages[h] ? h : 'routes';
}

async function load(quiet) {
  const name = pageName();
  const page = pages[name];
  if (loading) return;
  loading = true;
  const el = $('#page');
  try {
    const html = await page.render();
    if (pageName() !== name) return;
    // A refresh keeps the user's input: pages with forms are not polled.
    const y = window.scrollY;
    el.innerHTML = html;
    drawCharts(el);
    if (page.after) await page.after();
    if (quiet) window.scrollTo(0, y);
    $('#live').classList.remove('stale');
    el.dataset.loaded = name;
  } catch (e) {
    $('#live').classList.add('stale');
    if (e.status === 401) return;
    if (!quiet) el.innerHTML = '<div class="card error">' + esc(e.message) + '</div>';
    else toast(e.message, true);
  } finally {
    loading = false;
  }
}

function schedule() {
  clearInterval(timer);
  const page = pages[pageName()];
  if (page.poll) timer = setInterval(() => { if (!document.hidden && current) load(true); }, page.poll);
}

function navigate() {
  const name = pageName();
  current = name;
  document.title = pages[name].title + ' · Switchyard';
  for (const a of $$('#nav a')) a.classList.toggle('on', a.dataset.page === name);
  load(false);
  schedule();
}

function showLogin() {
  current = null;
  clearInterval(timer);
  $('#login').hidden = false;
  $('#page').hidden = true;
  $('#logout').hidden = true;
  $('#nav').hidden = true;
  $('#live').hidden = true;
  $('#token').focus();
}

function showApp() {
  $('#login').hidden = true;
  $('#page').hidden = false;
  $('#logout').hidden = false;
  $('#nav').hidden = false;
  $('#live').hidden = false;
  navigate();
}

async function act(fn, okMsg) {
  try { const r = await fn(); if (okMsg) toast(typeof okMsg === 'function' ? okMsg(r) : okMsg); await load(true); return r; }
  catch (e) {
    const problems = e.body && e.body.error && e.body.error.problems;
    toast(e.message + (problems && problems.length ? ': ' + problems.map((p) => p.path + ': ' + p.message).join('; ') : ''), true);
  }
}

document.addEventListener('click', async (ev) => {
  const b = ev.target.closest('button');
  if (!b) return;
  if (b.dataset.rollout) {
    act(() => api('/admin/rollouts/' + b.dataset.rollout, { method: 'POST', body: { route: b.dataset.route } }), 'Rollout ' + b.dataset.rollout + ': done');
  } else if (b.classList.contains('revoke')) {
    // Two clicks: the first asks, the second revokes.
    if (!b.classList.contains('confirm')) { b.classList.add('confirm', 'danger'); b.classList.remove('ghost'); b.textContent = 'Confirm revoke'; return; }
    act(() => api('/admin/keys/' + encodeURIComponent(b.dataset.id), { method: 'DELETE' }), 'Key ' + b.dataset.id + ' revoked');
  } else if (b.id === 'reload') {
    act(() => api('/admin/reload', { method: 'POST' }), (r) => (r.reloaded ? 'Reloaded: version ' + r.version + ' in force' : 'The file is unchanged (version ' + r.version + ')'));
  } else if (b.id === 'rollback') {
    if (!b.classList.contains('confirm')) { b.classList.add('confirm'); b.textContent = 'Confirm roll back'; return; }
    act(() => api('/admin/rollback', { method: 'POST' }), (r) => 'Rolled back from version ' + r.from + ' to version ' + r.version);
  } else if (b.id === 'theme') {
    const root = document.documentElement;
    const dark = root.dataset.theme ? root.dataset.theme === 'dark' : matchMedia('(prefers-color-scheme: dark)').matches;
    root.dataset.theme = dark ? 'light' : 'dark';
    try { localStorage.setItem('switchyard-theme', root.dataset.theme); } catch (e) { /* private mode */ }
  } else if (b.id === 'logout') {
    await fetch('/ui/logout', { method: 'POST', credentials: 'same-origin' });
    showLogin();
  }
});

document.addEventListener('change', (ev) => {
  const t = ev.target;
  if (t.dataset.range) { state[t.dataset.range] = t.value; load(false); }
  else if (t.id === 'spend-by') { state.spendBy = t.value; load(false); }
  else if (t.id === 'diff-from' || t.id === 'diff-to') {
    state.diffFrom = +$('#diff-from').value;
    state.diffTo = +$('#diff-to').value;
    showDiff().catch((e) => toast(e.message, true));
  }
});

document.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  if (f.id === 'login-form') {
    const err = $('#login-error');
    err.hidden = true;
    const r = await fetch('/ui/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: $('#token').value }), credentials: 'same-origin' });
    if (r.ok) { $('#token').value = ''; showApp(); return; }
    let msg = 'Sign-in failed';
    try { msg = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    err.textContent = msg;
    err.hidden = false;
  } else if (f.id === 'key-form') {
    const v = (n) => f.elements[n].value.trim();
    const num = (n) => (v(n) === '' ? undefined : Number(v(n)));
    const body = { team: v('team'), tags: v('tags') ? v('tags').split(',').map((s) => s.trim()).filter(Boolean) : [], rpm: num('rpm'), tpm: num('tpm'), budget_daily: num('budget_daily'), budget_monthly: num('budget_monthly') };
    const r = await act(() => api('/admin/keys', { method: 'POST', body }));
    if (r && r.key) {
      // The secret exists only in this answer: shown once, never fetched again.
      $('#new-key').innerHTML = '<h3>New key for ' + esc(r.team) + '</h3><p class="small">Copy it now: it is not shown again.</p><div class="secret mono" id="new-secret">' + esc(r.key) + '</div>';
    }
  }
});

window.addEventListener('hashchange', () => { if (current !== null) navigate(); });

(async function boot() {
  try { const t = localStorage.getItem('switchyard-theme'); if (t) document.documentElement.dataset.theme = t; } catch (e) { /* private mode */ }
  const r = await fetch('/ui/session', { credentials: 'same-origin', cache: 'no-store' });
  const s = r.ok ? await r.json() : { signed_in: false };
  if (s.signed_in) showApp(); else showLogin();
})();
