// The overview's live charts, from GET /api/v1/stats/history (samples an API process records every few
// seconds): completed and failed per second, ready and running, and the wait and run time percentiles over the
// last hour. Hand-written SVG, coloured by style.css classes (the CSP allows no inline styles); polled, since the
// samples only change once per sample interval.

import { api } from './api.js';
import { $, formatDuration, h, formatTime } from './dom.js';

const SVG = 'http://www.w3.org/2000/svg';
const WINDOW_S = 3600;
const W = 360;
const H = 120;
const PAD = { left: 44, right: 8, top: 8, bottom: 18 };

const CHARTS = [
  {
    id: 'throughput',
    title: 'Throughput',
    hint: 'tasks per second',
    format: (v) => `${v.toFixed(v < 10 ? 2 : 0)}/s`,
    series: [
      { key: 'completed_per_s', label: 'completed', color: 'completed', total: 'completed' },
      { key: 'failed_per_s', label: 'failed', color: 'failed', total: 'failed' },
    ],
  },
  {
    id: 'backlog',
    title: 'Ready and running',
    hint: 'tasks at each sample',
    format: (v) => (Number.isInteger(v) ? v.toLocaleString() : v.toFixed(1)),
    series: [
      { key: 'ready', label: 'ready', color: 'pending' },
      { key: 'running', label: 'running', color: 'running' },
    ],
  },
  {
    id: 'latency',
    title: 'Wait and run time',
    hint: 'p50 / p95 / p99 of the tasks finished in each interval',
    format: (v) => formatDuration(v * 1000),
    series: [
      { key: 'wait_p50_s', label: 'wait p50', color: 'retrying' },
      { key: 'wait_p95_s', label: 'wait p95', color: 'retrying', dash: '4 3' },
      { key: 'wait_p99_s', label: 'wait p99', color: 'retrying', dash: '1 3' },
      { key: 'run_p50_s', label: 'run p50', color: 'running' },
      { key: 'run_p95_s', label: 'run p95', color: 'running', dash: '4 3' },
      { key: 'run_p99_s', label: 'run p99', color: 'running', dash: '1 3' },
    ],
  },
];

let onError = () => {};
let timer = null;

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
}

function drawChart(chart, points, now) {
  const x0 = now - WINDOW_S * 1000;
  const x = (t) => PAD.left + ((t - x0) / (WINDOW_S * 1000)) * (W - PAD.left - PAD.right);
  const values = chart.series.flatMap((s) => points.map((p) => p[s.key]).filter((v) => v !== null));
  const max = niceMax(Math.max(0, ...values));
  const y = (v) => H - PAD.bottom - (v / max) * (H - PAD.top - PAD.bottom);
  const grid = [0, 0.5, 1].map((f) => svg('g', { class: 'grid' },
    svg('line', { x1: PAD.left, x2: W - PAD.right, y1: y(max * f), y2: y(max * f) }),
    svg('text', { x: PAD.left - 4, y: y(max * f) + 3, 'text-anchor': 'end' }, chart.format(max * f))));
  const lines = chart.series.map((s) => {
    // A gap (no sample, or no finished task for a percentile) breaks the line instead of bridging it.
    const runs = [];
    let run = [];
    let last = null;
    for (const p of points) {
      const t = Date.parse(p.at);
      const v = p[s.key];
      const gap = last !== null && t - last > 3 * p.interval_s * 1000 + 1000;
      if (v === null || gap) {
        if (run.length) runs.push(run);
        run = [];
      }
      if (v !== null) run.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      last = t;
    }
    if (run.length) runs.push(run);
    return svg('g', { class: `series c-${s.color}`, 'data-series': s.key },
      ...runs.map((r) => (r.length === 1
        ? svg('circle', { cx: r[0].split(',')[0], cy: r[0].split(',')[1], r: 1.5 })
        : svg('polyline', { points: r.join(' '), 'stroke-width': 1.5,
          'stroke-dasharray': s.dash || null }))));
  });
  const axis = svg('g', { class: 'axis' },
    svg('text', { x: PAD.left, y: H - 4 }, formatTime(new Date(x0).toISOString())),
    svg('text', { x: W - PAD.right, y: H - 4, 'text-anchor': 'end' }, 'now'));
  return svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': chart.title },
    ...grid, axis, ...lines);
}

function legend(chart, points) {
  return h('ul', { class: 'legend' }, chart.series.map((s) => {
    let shown;
    let total = null;
    if (s.total) {
      total = points.reduce((n, p) => n + p[s.total], 0);
      shown = `${total.toLocaleString()} in the hour`;
    } else {
      // The latest value there is: an interval in which nothing finished has no percentiles.
      const p = points.findLast((q) => q[s.key] !== null && q[s.key] !== undefined);
      const v = p ? p[s.key] : null;
      shown = v === null || v === undefined ? '–' : chart.format(v);
    }
    const swatch = h('span', { class: `swatch c-${s.color}` });
    return h('li', { dataset: { series: s.key, ...(total !== null ? { total: String(total) } : {}) } },
      swatch, `${s.label} `, h('strong', {}, shown));
  }));
}

function render(history) {
  const panel = $('#charts');
  if (!panel) return;
  panel.hidden = false;
  const now = Date.now();
  const { points } = history;
  panel.dataset.points = String(points.length);
  for (const chart of CHARTS) {
    const box = $(`#chart-${chart.id}`);
    box.replaceChildren(
      h('h2', {}, `${chart.title} `, h('span', { class: 'hint' }, chart.hint)),
      drawChart(chart, points, now),
      legend(chart, points),
    );
  }
}

export async function refreshCharts() {
  let history;
  try {
    history = await api('GET', `/stats/history?window_s=${WINDOW_S}`);
  } catch (err) {
    if (err.status !== 401) console.debug('charts refresh failed:', err.message);
    return null;
  }
  render(history);
  return history;
}

export async function startCharts(reportError) {
  onError = reportError;
  const history = await refreshCharts();
  // New points appear once per sample interval: poll at that pace (between 1 and 10 s).
  const every = Math.min(10, Math.max(1, history ? history.sample_s : 10)) * 1000;
  if (timer === null) timer = setInterval(() => refreshCharts().catch(onError), every);
}
