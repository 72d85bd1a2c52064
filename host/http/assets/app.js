// workhost dashboard: one page, plain JS, no build step. Reads and changes the
// queue through /api/v1 (see the server's /openapi.json); live updates come
// from the coalesced event stream /api/v1/events.
'use strict';

const API = 'api/v1';
const STATES = ['ENQUEUED', 'RUNNING', 'BLOCKED', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
const FINISHED = ['SUCCEEDED', 'FAILED', 'CANCELLED'];

const session = { csrf: '', access: 'write', auth: false };
const main = () => document.getElementById('main');

// ---------------------------------------------------------------- helpers

/** Builds an element: h('a', {href: '#/'}, 'text', child...). Text is never parsed as HTML. */
function h(tag, attrs, ...children) {
  const svg = tag.startsWith('svg:');
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', v);
    else if (k === 'text') el.textContent = v;
    else if (k in el && !svg && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const kids = (a) => a.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false);
/** Replaces / appends an element's children, skipping null, undefined and false. */
const put = (el, ...c) => el.replaceChildren(...kids(c));
const add = (el, ...c) => el.append(...kids(c));
const stateOf = (t) => String(t && t.state || '').toUpperCase();
const canWrite = () => session.access !== 'read';
const pad = (n) => String(n).padStart(2, '0');

function toDate(v) {
  if (v === null || v === undefined || v === '') return null;
  const d = new Date(v);
  return isNaN(d) ? null : d;
}

/** A time as local "HH:MM:SS" today, else "YYYY-MM-DD HH:MM"; the full UTC time in its tooltip. */
function time(v) {
  const d = toDate(v);
  if (!d) return h('span', { class: 'muted' }, '—');
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  const text = sameDay
    ? `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
    : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return h('time', { datetime: d.toISOString(), title: d.toISOString() }, text);
}

function duration(ms) {
  if (ms === null || ms === undefined || isNaN(ms)) return '—';
  const a = Math.abs(ms);
  if (a < 1000) return `${Math.round(ms)} ms`;
  if (a < 60e3) return `${(ms / 1000).toFixed(a < 10e3 ? 2 : 1)} s`;
  const two = (big, bu, small, su) => (small ? `${big} ${bu} ${small} ${su}` : `${big} ${bu}`);
  if (a < 3600e3) return two(Math.floor(a / 60e3), 'min', Math.floor((a % 60e3) / 1000), 's');
  if (a < 86400e3) return two(Math.floor(a / 3600e3), 'h', Math.floor((a % 3600e3) / 60e3), 'min');
  return `${(a / 86400e3).toFixed(1)} d`;
}

function relative(v) {
  const d = toDate(v);
  if (!d) return '';
  const ms = d - Date.now();
  return ms >= 0 ? `in ${duration(ms)}` : `${duration(-ms)} ago`;
}

function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

const num = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));
const badge = (state) => h('span', { class: `state s-${state.toLowerCase()}` }, state);
const taskLink = (id, text) => h('a', { href: `#/tasks/${id}` }, text ?? `#${id}`);
const json = (v) => h('pre', { class: 'json' }, v === null || v === undefined ? 'null' : JSON.stringify(v, null, 2));

// ---------------------------------------------------------------- banner

let infoTimer = null;
let bannerAt = 0;
function banner(message, kind = 'error') {
  const b = document.getElementById('banner');
  clearTimeout(infoTimer);
  bannerAt = Date.now();
  put(b, 
    h('span', { class: 'msg' }, message),
    h('button', { type: 'button', class: 'link', 'aria-label': 'Dismiss', onclick: () => { b.hidden = true; } }, '×'),
  );
  b.className = kind;
  b.hidden = false;
  if (kind === 'info') infoTimer = setTimeout(() => { b.hidden = true; }, 6000);
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, { method = 'GET', body, quiet = false } = {}) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') {
    if (session.csrf) headers['X-CSRF-Token'] = session.csrf;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
  }
  let res;
  try {
    res = await fetch(`${API}${path}`, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    const err = new ApiError(0, 'network', `${method} ${API}${path}: the server did not answer (${e.message})`);
    if (!quiet) banner(err.message);
    throw err;
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!res.ok) {
    const e = data && data.error;
    const err = new ApiError(res.status, e && e.code || 'http',
      e && e.message ? e.message : `${method} ${API}${path}: HTTP ${res.status} ${text.slice(0, 200)}`);
    if (res.status === 401 && session.auth !== false) { location.href = 'login'; }
    if (!quiet) banner(err.code && err.code !== 'http' ? `${err.message} (${err.code})` : err.message);
    throw err;
  }
  return data;
}

/** Runs a mutation; returns its result, or undefined after showing its error. */
async function act(path, opts = {}) {
  try { return await api(path, { method: 'POST', ...opts }); } catch { return undefined; }
}

// ---------------------------------------------------------------- live updates

const live = { source: null, open: false, pollTimer: null };
let page = { refresh: null, interval: 500, wants: () => true };
let refreshTimer = null;
let lastRefresh = 0;
let refreshing = false;
let refreshPending = false;

/** Re-fetches the visible page at most once per page.interval ms, never two fetches at once. */
function scheduleRefresh() {
  if (!page.refresh) return;
  if (refreshing) { refreshPending = true; return; }
  if (refreshTimer) return;
  const wait = Math.max(0, lastRefresh + page.interval - Date.now());
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const fn = page.refresh;
    if (!fn) return;
    lastRefresh = Date.now();
    refreshing = true;
    refreshPending = false;
    try { await fn(); } catch { /* shown in the banner */ } finally {
      refreshing = false;
      if (refreshPending) { refreshPending = false; scheduleRefresh(); }
    }
  }, wait);
}

function setLive(open) {
  live.open = open;
  const el = document.getElementById('live');
  el.textContent = open ? '● live' : '○ reconnecting';
  el.classList.toggle('on', open);
  // Without the stream, fall back to a slow poll until it reconnects.
  clearInterval(live.pollTimer);
  if (!open) live.pollTimer = setInterval(scheduleRefresh, 5000);
}

function connectEvents() {
  if (!window.EventSource) { setLive(false); return; }
  const es = new EventSource(`${API}/events`);
  live.source = es;
  es.addEventListener('open', () => setLive(true));
  es.addEventListener('error', () => setLive(false));
  es.addEventListener('changed', (ev) => {
    let data = {};
    try { data = JSON.parse(ev.data || '{}'); } catch { /* ignore */ }
    if (data.counts) updateNavCounts(data.counts);
    if (page.wants(data)) scheduleRefresh();
  });
}

function updateNavCounts(byState) {
  const link = document.querySelector('[data-nav="tasks"]');
  if (!link || !byState) return;
  const get = (s) => byState[s] ?? byState[s.toLowerCase()] ?? 0;
  link.title = STATES.map((s) => `${s}: ${get(s)}`).join(', ');
}

function setQueuePill(paused) {
  document.getElementById('queue-pill').hidden = !paused;
}

// ---------------------------------------------------------------- router

let generation = 0;

function route() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query = ''] = raw.split('?');
  return { path: path.replace(/\/+$/, '') || '/', params: new URLSearchParams(query) };
}

async function render() {
  const gen = ++generation;
  const { path, params } = route();
  clearTimeout(refreshTimer);
  refreshTimer = null;
  refreshPending = false;
  page = { refresh: null, interval: 500, wants: () => true };
  // A message belongs to the page it came from, unless it was just shown (e.g. "Task 7 deleted." before going to the list).
  if (Date.now() - bannerAt > 1500) document.getElementById('banner').hidden = true;
  let m;
  let section;
  let view;
  if (path === '/') { section = 'overview'; view = () => overview(gen); }
  else if (path === '/tasks') { section = 'tasks'; view = () => tasks(gen, params); }
  else if ((m = path.match(/^\/tasks\/(\d+)$/))) { section = 'tasks'; view = () => taskDetail(gen, Number(m[1])); }
  else if (path === '/handlers') { section = 'handlers'; view = () => handlers(gen); }
  else if (path === '/periodic') { section = 'periodic'; view = () => periodic(gen); }
  else if (path === '/hosts') { section = 'hosts'; view = () => hosts(gen); }
  else if (path === '/device') { section = 'device'; view = () => device(gen); }
  else {
    section = '';
    view = () => put(main(), h('h1', {}, 'Not found'), h('p', {}, 'No page at ', h('code', {}, location.hash), '. ', h('a', { href: '#/' }, 'Overview')));
  }
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try { await view(); } catch (e) {
    if (gen === generation && !(e instanceof ApiError)) banner(`The page failed to draw: ${e.message}`);
  }
}

/** Renders a page's heading and a container; returns the container. */
function frame(title, ...extra) {
  document.title = `${title} · workhost`;
  const body = h('div', { class: 'body' });
  put(main(), h('div', { class: 'head' }, h('h1', {}, title), ...extra), body);
  return body;
}

const stale = (gen) => gen !== generation;

// ---------------------------------------------------------------- overview

async function overview(gen) {
  const body = frame('Overview');
  const queueBox = h('section', { class: 'card queue' });
  const countsBox = h('section', { class: 'card' });
  const chartBox = h('section', { class: 'card' });
  const handlerBox = h('section', { class: 'card' });
  add(body, h('div', { class: 'grid2' }, queueBox, countsBox), chartBox, handlerBox);

  async function load() {
    const [counts, activity] = await Promise.all([api('/counts'), api('/activity')]);
    if (stale(gen)) return;
    setQueuePill(!!counts.paused);
    const byState = counts.by_state || {};
    const get = (map, s) => (map && (map[s] ?? map[s.toLowerCase()])) || 0;

    put(queueBox, 
      h('h2', {}, 'Queue'),
      h('p', { class: 'queue-state', 'data-paused': String(!!counts.paused) },
        counts.paused ? 'Paused: nothing new starts.' : 'Running: due work starts as slots free up.'),
      canWrite() ? h('button', {
        type: 'button', class: counts.paused ? 'primary' : '',
        onclick: async () => {
          const r = await act(counts.paused ? '/queue/resume' : '/queue/pause');
          if (r) { setQueuePill(!!r.paused); load(); }
        },
      }, counts.paused ? 'Resume' : 'Pause') : null,
    );

    put(countsBox, h('h2', {}, 'Tasks by state'), h('div', { class: 'counts' },
      STATES.map((s) => h('a', { class: `count c-${s.toLowerCase()}`, href: `#/tasks?state=${s.toLowerCase()}`, 'data-state': s },
        h('span', { class: 'n' }, num(get(byState, s))), h('span', { class: 'label' }, s)))));

    put(chartBox, h('h2', {}, 'Last hour'), charts(activity && activity.minutes || []));

    const byHandler = counts.by_handler || {};
    const names = Object.keys(byHandler).sort();
    put(handlerBox, h('h2', {}, 'Tasks by handler'), names.length === 0 ? h('p', { class: 'muted' }, 'No tasks yet.') :
      h('table', {},
        h('thead', {}, h('tr', {}, h('th', {}, 'Handler'), STATES.map((s) => h('th', { class: 'num' }, s)))),
        h('tbody', {}, names.map((n) => h('tr', { 'data-handler': n },
          h('td', {}, h('a', { href: `#/tasks?handler=${encodeURIComponent(n)}` }, n)),
          STATES.map((s) => {
            const c = get(byHandler[n], s);
            return h('td', { class: 'num' }, c ? h('a', { href: `#/tasks?handler=${encodeURIComponent(n)}&state=${s.toLowerCase()}` }, num(c)) : h('span', { class: 'muted' }, '0'));
          }))))));
  }
  page.refresh = load;
  page.interval = 2000;
  await load();
}

/** Two inline SVG charts: runs per minute (stacked) and queue latency p50/p95. */
function charts(minutes) {
  if (!minutes.length) return h('p', { class: 'muted' }, 'No activity recorded yet.');
  const W = 560, H = 150, L = 44, R = 8, T = 10, B = 22;
  const n = minutes.length;
  const bw = (W - L - R) / n;
  const x = (i) => L + i * bw;
  const label = (m) => { const d = toDate(m.minute); return d ? `${pad(d.getHours())}:${pad(d.getMinutes())}` : ''; };
  function axes(svg, max, fmt) {
    const y0 = H - B;
    add(svg, 
      h('svg:line', { x1: L, y1: y0, x2: W - R, y2: y0, class: 'axis' }),
      h('svg:line', { x1: L, y1: T, x2: W - R, y2: T, class: 'grid' }),
      h('svg:line', { x1: L, y1: (T + y0) / 2, x2: W - R, y2: (T + y0) / 2, class: 'grid' }),
      h('svg:text', { x: L - 4, y: T + 4, 'text-anchor': 'end' }, fmt(max)),
      h('svg:text', { x: L - 4, y: (T + y0) / 2 + 4, 'text-anchor': 'end' }, fmt(max / 2)),
      h('svg:text', { x: L - 4, y: y0 + 4, 'text-anchor': 'end' }, '0'),
    );
    for (const [i, anchor] of [[0, 'start'], [Math.floor(n / 2), 'middle'], [n - 1, 'end']]) {
      add(svg, h('svg:text', { x: anchor === 'start' ? x(i) : anchor === 'end' ? x(i) + bw : x(i) + bw / 2, y: H - 6, 'text-anchor': anchor }, label(minutes[i])));
    }
  }
  const kinds = [['succeeded', 'Succeeded'], ['failed', 'Failed'], ['retried', 'Retried']];
  const total = (m) => kinds.reduce((a, [k]) => a + (m[k] || 0), 0);
  const maxRuns = Math.max(1, ...minutes.map(total));
  const scaleRuns = (H - B - T) / maxRuns;
  const runs = h('svg:svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': 'Runs per minute over the last hour' });
  axes(runs, maxRuns, (v) => (v >= 10 ? Math.round(v) : +v.toFixed(1)).toLocaleString('en-US'));
  minutes.forEach((m, i) => {
    let y = H - B;
    for (const [k, name] of kinds) {
      const v = m[k] || 0;
      if (!v) continue;
      const hgt = v * scaleRuns;
      y -= hgt;
      add(runs, h('svg:rect', { x: x(i) + 0.5, y, width: Math.max(1, bw - 1), height: hgt, class: `bar ${k}` },
        h('svg:title', {}, `${label(m)} ${name.toLowerCase()}: ${v}`)));
    }
  });

  const lat = minutes.flatMap((m) => [m.latency_p50_ms, m.latency_p95_ms]).filter((v) => typeof v === 'number');
  const maxLat = Math.max(1, ...lat);
  const scaleLat = (H - B - T) / maxLat;
  const latency = h('svg:svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': 'Queue latency p50 and p95 over the last hour' });
  axes(latency, maxLat, (v) => duration(v));
  for (const [k, cls] of [['latency_p95_ms', 'p95'], ['latency_p50_ms', 'p50']]) {
    let d = '';
    let pen = false;
    minutes.forEach((m, i) => {
      const v = m[k];
      if (typeof v !== 'number') { pen = false; return; }
      const px = x(i) + bw / 2, py = H - B - v * scaleLat;
      d += `${pen ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)} `;
      pen = true;
      add(latency, h('svg:circle', { cx: px, cy: py, r: 1.6, class: `dot ${cls}` }, h('svg:title', {}, `${label(m)} ${cls}: ${duration(v)}`)));
    });
    if (d) add(latency, h('svg:path', { d, class: `line ${cls}` }));
  }
  const sum = (k) => minutes.reduce((a, m) => a + (m[k] || 0), 0);
  return h('div', { class: 'charts' },
    h('figure', {}, h('figcaption', {}, 'Runs per minute ',
      kinds.map(([k, name]) => h('span', { class: `key ${k}` }, `${name} ${num(sum(k))}`))), runs),
    h('figure', {}, h('figcaption', {}, 'Queue latency (due → started) ',
      h('span', { class: 'key p50' }, 'p50'), h('span', { class: 'key p95' }, 'p95')),
    lat.length ? latency : h('p', { class: 'muted' }, 'No runs started in the last hour.')));
}

// ---------------------------------------------------------------- tasks

const FILTERS = ['handler', 'state', 'tag', 'unique_name', 'q'];
let handlerNames = null;
// Cursors of the pages before the current one, for "← Newer".
let cursorStack = [];
let cursorKey = '';

function filterOf(params) {
  const f = {};
  for (const k of FILTERS) { const v = params.get(k); if (v) f[k] = v; }
  return f;
}

function tasksHash(filter, cursor) {
  const q = new URLSearchParams(filter);
  if (cursor) q.set('cursor', cursor);
  const s = q.toString();
  return `#/tasks${s ? `?${s}` : ''}`;
}

async function tasks(gen, params) {
  const filter = filterOf(params);
  const cursor = params.get('cursor') || '';
  const key = JSON.stringify(filter);
  if (key !== cursorKey) { cursorStack = []; cursorKey = key; }
  if (!cursor) cursorStack = [];

  if (!handlerNames) {
    try { handlerNames = (await api('/handlers', { quiet: true })).map((x) => x.name); } catch { handlerNames = []; }
    if (stale(gen)) return;
  }

  const go = (f, c) => { location.hash = tasksHash(f, c); };
  const form = h('form', { class: 'filters', role: 'search', onsubmit: (e) => { e.preventDefault(); go(readForm(), ''); } });
  const field = (label, control) => h('label', {}, h('span', {}, label), control);
  const handlerSel = h('select', { name: 'handler', onchange: () => go(readForm(), '') },
    h('option', { value: '' }, 'any'),
    [...new Set([...handlerNames, filter.handler].filter(Boolean))].map((n) => h('option', { value: n, selected: n === filter.handler }, n)));
  const stateSel = h('select', { name: 'state', onchange: () => go(readForm(), '') },
    h('option', { value: '' }, 'any'),
    STATES.map((s) => h('option', { value: s.toLowerCase(), selected: s === (filter.state || '').toUpperCase() }, s)));
  const text = (name, placeholder) => h('input', { name, type: name === 'q' ? 'search' : 'text', value: filter[name] || '', placeholder, size: name === 'q' ? 22 : 12 });
  add(form, 
    field('Handler', handlerSel), field('State', stateSel), field('Tag', text('tag', 'tag')),
    field('Unique name', text('unique_name', 'unique name')), field('Search', text('q', 'id, name, input, error…')),
    h('button', { type: 'submit' }, 'Filter'),
    Object.keys(filter).length ? h('a', { href: '#/tasks', class: 'clear' }, 'Clear') : null,
  );
  function readForm() {
    const f = {};
    for (const k of FILTERS) { const v = form.elements[k].value.trim(); if (v) f[k] = v; }
    return f;
  }

  const bulk = canWrite() ? h('div', { class: 'bulk' }, [
    ['retry', 'Retry all matching'], ['cancel', 'Cancel all matching'], ['delete', 'Delete all matching'],
  ].map(([action, label]) => h('button', {
    type: 'button', class: action === 'delete' ? 'danger' : '',
    onclick: async () => {
      const what = Object.keys(filter).length ? Object.entries(filter).map(([k, v]) => `${k}=${v}`).join(', ') : 'no filter: every task';
      if (!confirm(`${label.replace(' all matching', '')} every task that matches (${what}) and whose state allows it?`)) return;
      const r = await act('/tasks/bulk', { body: { action, filter } });
      if (r) { banner(`${label.split(' ')[0]}: ${r.count} task${r.count === 1 ? '' : 's'}.`, 'info'); load(); }
    },
  }, label))) : null;

  const table = h('table', { class: 'tasks' });
  const pager = h('div', { class: 'pager' });
  const body = frame('Tasks');
  add(body, form, bulk, table, pager);

  async function load() {
    const q = new URLSearchParams(filter);
    q.set('limit', '50');
    if (cursor) q.set('cursor', cursor);
    const data = await api(`/tasks?${q}`);
    if (stale(gen)) return;
    const list = data.tasks || [];
    put(table, 
      h('thead', {}, h('tr', {}, ['ID', 'Handler', 'Task', 'State', 'Attempts', 'Tags', 'Created', 'Next run / finished'].map((c) => h('th', {}, c)))),
      h('tbody', {}, list.length === 0
        ? h('tr', {}, h('td', { colspan: 8, class: 'muted empty' }, cursor ? 'No older tasks.' : 'No tasks match.'))
        : list.map(taskRow)),
    );
    put(pager, 
      h('button', { type: 'button', disabled: !cursor, onclick: () => { const prev = cursorStack.pop(); go(filter, prev || ''); } }, '← Newer'),
      h('span', { class: 'muted' }, `${list.length} shown${cursor ? ' (older page)' : ''}`),
      h('button', { type: 'button', disabled: !data.next_cursor, onclick: () => { cursorStack.push(cursor); go(filter, data.next_cursor); } }, 'Older →'),
    );
  }
  page.refresh = load;
  await load();
}

function taskRow(t) {
  const s = stateOf(t);
  const when = FINISHED.includes(s) ? t.finished_at : t.next_run_at;
  return h('tr', { 'data-task-id': t.id, 'data-state': s },
    h('td', { class: 'num' }, taskLink(t.id)),
    h('td', {}, t.handler),
    h('td', { class: 'clip', title: t.task }, t.task, t.unique_name ? h('span', { class: 'muted' }, ` · ${t.unique_name}`) : null),
    h('td', { class: 'state-cell' }, badge(s)),
    h('td', { class: 'num' }, `${t.run_attempt_count ?? 0}/${t.max_attempts ?? '—'}`),
    h('td', {}, (t.tags || []).map((g) => h('a', { class: 'tag', href: `#/tasks?tag=${encodeURIComponent(g)}` }, g))),
    h('td', {}, time(t.created_at)),
    h('td', {}, time(when), when && s === 'ENQUEUED' && toDate(when) > Date.now() + 1000 ? h('span', { class: 'muted' }, ` ${relative(when)}`) : null),
  );
}

// ---------------------------------------------------------------- task detail

const openLogs = new Set();

async function taskDetail(gen, id) {
  const body = frame(`Task ${id}`);
  document.querySelector('.head').prepend(h('a', { class: 'back', href: '#/tasks' }, '← Tasks'));
  page.wants = (d) => !d || d.more || !Array.isArray(d.ids) || d.ids.map(Number).includes(id);
  async function load() {
    let t;
    try { t = await api(`/tasks/${id}`, { quiet: true }); } catch (e) {
      if (stale(gen)) return;
      if (e.status === 404) put(body, h('p', { class: 'muted' }, `There is no task ${id} (it may have been deleted or pruned).`));
      else banner(e.message);
      return;
    }
    if (stale(gen)) return;
    put(body, ...detailView(t, load));
  }
  page.refresh = load;
  await load();
}

function detailView(t, reload) {
  const s = stateOf(t);
  const due = toDate(t.next_run_at);
  const actions = [];
  const act1 = (label, path, opts = {}) => h('button', {
    type: 'button', class: opts.cls || '',
    onclick: async () => {
      if (opts.confirm && !confirm(opts.confirm)) return;
      const r = await act(`/tasks/${t.id}/${path}`, { method: opts.method || 'POST' });
      if (r === undefined) return;
      if (opts.after) opts.after(); else reload();
    },
  }, label);
  if (canWrite()) {
    if (s === 'FAILED' || s === 'CANCELLED') actions.push(act1('Retry', 'retry', { cls: 'primary' }));
    if (s === 'ENQUEUED' && due && due > Date.now() + 500) actions.push(act1('Run now', 'run-now'));
    if (['ENQUEUED', 'RUNNING', 'BLOCKED'].includes(s)) actions.push(act1('Cancel', 'cancel', { confirm: `Cancel task ${t.id}?${s === 'RUNNING' ? ' Its run stops.' : ''}` }));
    if (FINISHED.includes(s)) {
      actions.push(h('button', {
        type: 'button', class: 'danger',
        onclick: async () => {
          if (!confirm(`Delete task ${t.id} and its history?`)) return;
          try { await api(`/tasks/${t.id}`, { method: 'DELETE' }); } catch { return; }
          banner(`Task ${t.id} deleted.`, 'info');
          location.hash = '#/tasks';
        },
      }, 'Delete'));
    }
  }

  const schedule = t.cron ? `cron ${t.cron}${t.tz ? ` (${t.tz})` : ''}${t.catch_up ? `, catch-up ${t.catch_up}` : ''}`
    : t.every_ms ? `every ${duration(t.every_ms)}${t.flex_ms && t.flex_ms !== t.every_ms ? `, flex ${duration(t.flex_ms)}` : ''}` : null;
  const rows = [
    ['State', h('span', { class: 'state-cell', 'data-state': s }, badge(s))],
    ['Handler', h('a', { href: `#/tasks?handler=${encodeURIComponent(t.handler)}` }, t.handler)],
    ['Task name', t.task],
    ['Kind', t.kind],
    t.unique_name ? ['Unique name', h('a', { href: `#/tasks?unique_name=${encodeURIComponent(t.unique_name)}` }, t.unique_name)] : null,
    (t.tags || []).length ? ['Tags', t.tags.map((g) => h('a', { class: 'tag', href: `#/tasks?tag=${encodeURIComponent(g)}` }, g))] : null,
    ['Attempts', `${t.run_attempt_count ?? 0} of ${t.max_attempts ?? '—'}`],
    schedule ? ['Schedule', schedule] : null,
    ['Priority', `${t.priority ?? '—'}${t.expedited ? ', expedited' : ''}`],
    ['Created', [time(t.created_at), ' ', h('span', { class: 'muted' }, relative(t.created_at))]],
    t.next_run_at ? ['Next run', [time(t.next_run_at), ' ', h('span', { class: 'muted' }, relative(t.next_run_at))]] : null,
    t.finished_at ? ['Finished', [time(t.finished_at), ' ', h('span', { class: 'muted' }, relative(t.finished_at))]] : null,
    t.stop_reason ? ['Stop reason', t.stop_reason] : null,
    t.error ? ['Error', h('span', { class: 'error-text' }, t.error)] : null,
    t.pin ? ['Pinned version', String(t.pin)] : null,
    t.constraints && Object.values(t.constraints).some((v) => v && v !== 'not-required') ? ['Constraints', h('code', {}, JSON.stringify(t.constraints))] : null,
  ].filter(Boolean);

  const attempts = t.attempts || [];
  const chain = t.chain || {};
  const after = chain.after || (t.after || []).map((id) => ({ id }));
  const dependents = chain.dependents || [];
  const chainItem = (x) => {
    const o = typeof x === 'object' && x ? x : { id: x };
    return h('li', { 'data-task-id': o.id }, taskLink(o.id, `Task ${o.id}`),
      o.handler ? ` ${o.handler}${o.task ? ` / ${o.task}` : ''} ` : ' ', o.state ? badge(String(o.state).toUpperCase()) : null);
  };

  return [
    h('div', { class: 'actions' }, actions.length ? actions : null),
    h('div', { class: 'grid2' },
      h('section', { class: 'card' }, h('h2', {}, 'Summary'),
        h('dl', { class: 'kv' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))),
      h('section', { class: 'card' },
        h('h2', {}, 'Progress'), progress(t.progress, s),
        (after.length || dependents.length) ? [
          h('h2', {}, 'Chain'),
          after.length ? [h('h3', {}, 'Runs after'), h('ul', { class: 'chain after' }, after.map(chainItem))] : null,
          dependents.length ? [h('h3', {}, 'Dependents'), h('ul', { class: 'chain dependents' }, dependents.map(chainItem))] : null,
        ] : null)),
    h('div', { class: 'grid2' },
      h('section', { class: 'card' }, h('h2', {}, 'Input'), json(t.input)),
      h('section', { class: 'card' }, h('h2', {}, 'Output'), json(t.output))),
    h('section', { class: 'card' }, h('h2', {}, `Attempts (${attempts.length})`),
      attempts.length === 0 ? h('p', { class: 'muted' }, 'No attempt yet.') :
        h('table', { class: 'attempts' },
          h('thead', {}, h('tr', {}, ['#', 'Outcome', 'Stop reason', 'Started', 'Duration', 'Fuel', 'Peak memory', 'Error'].map((c) => h('th', {}, c)))),
          attempts.map((a, i) => attemptRows(t, a, i)))),
  ];
}

function progress(p, s) {
  if (!p || typeof p !== 'object' || Object.keys(p).length === 0) {
    return h('p', { class: 'muted' }, s === 'RUNNING' ? 'No progress reported yet.' : 'No progress reported.');
  }
  let frac = null;
  let label = '';
  if (typeof p.done === 'number' && typeof p.total === 'number' && p.total > 0) {
    frac = p.done / p.total; label = `${num(p.done)} of ${num(p.total)}`;
  } else if (typeof p.percent === 'number') {
    frac = p.percent / 100; label = `${+p.percent.toFixed(1)}%`;
  }
  const extra = Object.fromEntries(Object.entries(p).filter(([k]) => frac === null || !['done', 'total', 'percent'].includes(k)));
  let bar = null;
  if (frac !== null) {
    frac = Math.min(1, Math.max(0, frac));
    const fill = h('div', { class: 'fill' });
    fill.style.width = `${(frac * 100).toFixed(1)}%`;
    bar = h('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(frac * 100) },
      fill, h('span', {}, label));
  }
  return [bar, Object.keys(extra).length ? json(extra) : null];
}

function attemptRows(t, a, i) {
  const key = `${t.id}:${i}`;
  const started = toDate(a.started_at);
  const ended = toDate(a.ended_at);
  const outcome = a.outcome || (ended ? '—' : 'running');
  const log = a.log || [];
  const details = h('details', { open: openLogs.has(key), ontoggle: (e) => { if (e.target.open) openLogs.add(key); else openLogs.delete(key); } },
    h('summary', {}, `Log (${log.length} line${log.length === 1 ? '' : 's'})`),
    log.length === 0 ? h('p', { class: 'muted' }, 'No log lines.') :
      h('ol', { class: 'log' }, log.map((l) => h('li', { class: `lvl-${l.level || 'info'}` },
        h('span', { class: 'at' }, l.at_ms !== undefined ? `+${l.at_ms} ms` : ''),
        h('span', { class: 'lvl' }, l.level || ''), h('span', { class: 'src' }, l.source || ''), h('span', { class: 'm' }, l.message)))),
    a.component ? h('p', { class: 'muted small' }, `component sha256 ${a.component}${a.contract ? ` · contract ${a.contract}` : ''}`) : null);
  return h('tbody', { class: 'attempt' },
    h('tr', { class: 'attempt-row', 'data-attempt': a.attempt, 'data-outcome': outcome },
      h('td', { class: 'num' }, a.attempt ?? i + 1),
      h('td', {}, h('span', { class: `outcome o-${outcome}` }, outcome)),
      h('td', {}, a.stop_reason || h('span', { class: 'muted' }, '—')),
      h('td', {}, time(started)),
      h('td', { class: 'num' }, started && ended ? duration(ended - started) : started ? `${duration(Date.now() - started)}…` : '—'),
      h('td', { class: 'num' }, num(a.fuel_consumed)),
      h('td', { class: 'num' }, bytes(a.peak_memory_bytes)),
      h('td', { class: 'error-text' }, a.error || '')),
    h('tr', { class: 'log-row' }, h('td', {}), h('td', { colspan: 7 }, details)));
}

// ---------------------------------------------------------------- handlers

async function handlers(gen) {
  const body = frame('Handlers');
  async function load() {
    const list = await api('/handlers');
    if (stale(gen)) return;
    handlerNames = list.map((x) => x.name);
    put(body, list.length === 0 ? h('p', { class: 'muted' }, 'The manifest has no handlers.') : h('table', { class: 'handlers' },
      h('thead', {}, h('tr', {}, ['Handler', 'Status', 'Running', 'Rate', ...STATES, ''].map((c, i) => h('th', { class: i >= 2 && i < 4 + STATES.length ? 'num' : '' }, c)))),
      h('tbody', {}, list.map((x) => {
        const get = (s) => (x.counts && (x.counts[s] ?? x.counts[s.toLowerCase()])) || 0;
        return h('tr', { 'data-handler': x.name, 'data-paused': String(!!x.paused) },
          h('td', {}, h('a', { href: `#/tasks?handler=${encodeURIComponent(x.name)}` }, x.name)),
          h('td', {}, h('span', { class: `pill ${x.paused ? 'paused' : 'active'}` }, x.paused ? 'paused' : 'active')),
          h('td', { class: 'num' }, `${num(x.running)} / ${x.concurrency ?? '∞'}`),
          h('td', { class: 'num' }, x.rate || h('span', { class: 'muted' }, '—')),
          STATES.map((s) => h('td', { class: 'num' }, get(s) ? h('a', { href: `#/tasks?handler=${encodeURIComponent(x.name)}&state=${s.toLowerCase()}` }, num(get(s))) : h('span', { class: 'muted' }, '0'))),
          h('td', {}, canWrite() ? h('button', {
            type: 'button', class: x.paused ? 'primary' : '',
            onclick: async () => { if (await act(`/handlers/${encodeURIComponent(x.name)}/${x.paused ? 'resume' : 'pause'}`)) load(); },
          }, x.paused ? 'Resume' : 'Pause') : null));
      }))));
  }
  page.refresh = load;
  page.interval = 1000;
  await load();
}

// ---------------------------------------------------------------- periodic, hosts, device

async function periodic(gen) {
  const body = frame('Periodic');
  // Newest first, 100 a page; the cursors of the newer pages are stacked.
  const newer = [];
  let cursor = '';
  const turn = (to) => { cursor = to; load(); };
  async function load() {
    const q = new URLSearchParams({ limit: '100' });
    if (cursor) q.set('cursor', cursor);
    const data = await api('/periodic?' + q);
    if (stale(gen)) return;
    const list = data.periodic;
    const pager = h('div', { class: 'pager' },
      h('button', { type: 'button', disabled: !cursor, onclick: () => turn(newer.pop() || '') }, '← Newer'),
      h('span', { class: 'muted' }, `${list.length} shown${cursor ? ' (older page)' : ''}`),
      h('button', { type: 'button', disabled: !data.next_cursor, onclick: () => { newer.push(cursor); turn(data.next_cursor); } }, 'Older →'));
    put(body, list.length === 0 ? h('p', { class: 'muted' }, cursor ? 'No older periodic work.' : 'No periodic or cron work.') : h('table', {},
      h('thead', {}, h('tr', {}, ['ID', 'Handler', 'Task', 'Schedule', 'State', 'Next runs', 'Last result'].map((c) => h('th', {}, c)))),
      h('tbody', {}, list.map(({ task: t, next_runs: next = [], last }) => {
        const s = stateOf(t);
        return h('tr', { 'data-task-id': t.id, 'data-state': s },
          h('td', { class: 'num' }, taskLink(t.id)),
          h('td', {}, t.handler),
          h('td', {}, t.task, t.unique_name ? h('span', { class: 'muted' }, ` · ${t.unique_name}`) : null),
          h('td', {}, t.cron ? h('code', {}, t.cron + (t.tz ? ` ${t.tz}` : '')) : t.every_ms ? `every ${duration(t.every_ms)}` : '—'),
          h('td', {}, badge(s)),
          h('td', {}, next.length ? h('ul', { class: 'plain' }, next.slice(0, 3).map((n) => h('li', {}, time(n), ' ', h('span', { class: 'muted' }, relative(n))))) : h('span', { class: 'muted' }, '—')),
          h('td', {}, last ? [h('span', { class: `outcome o-${last.outcome}` }, last.outcome || '—'), ' ', time(last.ended_at),
            last.error ? h('div', { class: 'error-text small' }, last.error) : null] : h('span', { class: 'muted' }, 'not run yet')));
      }))), pager);
  }
  page.refresh = load;
  page.interval = 2000;
  await load();
}

async function hosts(gen) {
  const body = frame('Hosts');
  async function load() {
    const list = await api('/hosts');
    if (stale(gen)) return;
    put(body, list.length === 0 ? h('p', { class: 'muted' }, 'No host has served this store.') : h('table', {},
      h('thead', {}, h('tr', {}, ['Host', 'Incarnation', 'Started', 'Lease renewed', 'Lease expires', 'Serving', 'Running'].map((c) => h('th', {}, c)))),
      h('tbody', {}, list.map((x) => {
        const alive = x.alive ?? x.live;
        return h('tr', { 'data-host': x.id },
          h('td', {}, h('code', {}, x.id)), h('td', { class: 'num' }, x.incarnation), h('td', {}, time(x.started_at)),
          h('td', {}, time(x.renewed_at)), h('td', {}, time(x.expires_at)),
          h('td', {}, h('span', { class: `pill ${alive ? 'active' : 'paused'}` }, alive ? 'yes' : 'no')),
          h('td', { class: 'num' }, num(x.running)));
      }))));
  }
  page.refresh = load;
  page.interval = 5000;
  page.wants = () => false;
  await load();
}

function kvTable(obj) {
  if (obj === null || typeof obj !== 'object') return h('code', {}, JSON.stringify(obj));
  const entries = Object.entries(obj);
  if (entries.length === 0) return h('span', { class: 'muted' }, 'none');
  return h('dl', { class: 'kv' }, entries.map(([k, v]) => [h('dt', {}, k.replace(/_/g, ' ')),
    h('dd', {}, v !== null && typeof v === 'object' && !Array.isArray(v) ? kvTable(v) : v === null ? h('span', { class: 'muted' }, 'unknown') : String(v))]));
}

async function device(gen) {
  const body = frame('Device');
  const d = await api('/device');
  if (stale(gen)) return;
  const { overrides, ...state } = d || {};
  put(body, h('div', { class: 'grid2' },
    h('section', { class: 'card' }, h('h2', {}, 'As the host reads it'), kvTable(state)),
    h('section', { class: 'card' }, h('h2', {}, 'Overrides'), kvTable(overrides ?? {}))));
  page.wants = () => false;
}

// ---------------------------------------------------------------- start

async function start() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (meta && meta.content && !meta.content.includes('{{')) session.csrf = meta.content;
  try {
    const s = await api('/session', { quiet: true });
    Object.assign(session, s || {});
  } catch (e) {
    if (e.status !== 401) banner(`Could not read the session (${e.message}); actions may be refused.`);
  }
  document.getElementById('access-pill').hidden = canWrite();
  document.body.classList.toggle('read-only', !canWrite());
  api('/counts', { quiet: true }).then((c) => { setQueuePill(!!c.paused); updateNavCounts(c.by_state); }, () => {});
  window.addEventListener('hashchange', render);
  connectEvents();
  await render();
}

start();
