// The schedules panel: every cron schedule with its next run (and a countdown to it), its last run, the outcome
// of its newest task and its fire counts, a pause/resume toggle, "run now", and "history" (the task list filtered
// by the schedule). Refreshed every few seconds and after each action.

import { api } from './api.js';
import { $, badge, formatTime, h, toast } from './dom.js';
import { countdownText } from './waiting.js';

const REFRESH_MS = 5000;
let onError = () => {};
let onHistory = () => {};
let timer = null;

async function toggle(schedule) {
  try {
    const updated = await api('PATCH', `/schedules/${encodeURIComponent(schedule.name)}`, {
      enabled: !schedule.enabled,
    });
    toast(`${updated.enabled ? 'Resumed' : 'Paused'} ${updated.name}`, 'ok');
  } catch (err) {
    onError(err);
  }
  refresh();
}

async function trigger(schedule) {
  try {
    const task = await api('POST', `/schedules/${encodeURIComponent(schedule.name)}/trigger`);
    toast(`Triggered ${schedule.name}: task ${task.id.slice(0, 8)}`, 'ok');
  } catch (err) {
    onError(err);
  }
  refresh();
}

function counts(s) {
  return `${s.fired_total} fired, ${s.skipped_total} skipped, ${s.missed_total} missed`;
}

function notRun(s) {
  return s.last_skip_reason ? `last not run ${formatTime(s.last_skipped_at)}: ${s.last_skip_reason}` : '';
}

function nextRun(s) {
  if (!s.enabled) return h('span', { class: 'hint' }, 'paused');
  if (!s.next_run_at) return '–';
  return [formatTime(s.next_run_at), h('time', { class: 'hint countdown', datetime: s.next_run_at,
    dataset: { until: s.next_run_at } }, countdownText(s.next_run_at))];
}

function row(s) {
  return h('tr', { dataset: { schedule: s.name, enabled: String(s.enabled) } },
    h('td', {}, h('strong', {}, s.name), h('div', { class: 'hint' }, s.task.type)),
    h('td', {}, h('code', {}, s.cron), h('div', { class: 'hint' }, `${s.timezone} · overlap ${s.overlap}`)),
    h('td', { class: 'next-run', title: s.next_run_at || '' }, nextRun(s)),
    h('td', { title: s.last_run_at || '' }, formatTime(s.last_run_at) || '–'),
    h('td', { class: 'outcome' }, s.last_task_status ? badge(s.last_task_status) : '–',
      h('div', { class: 'hint', dataset: { field: 'counts' } }, counts(s)),
      notRun(s) ? h('div', { class: 'hint skip-reason', title: notRun(s) }, notRun(s)) : null),
    h('td', { class: 'actions' }, h('div', { class: 'btns' },
      h('button', { type: 'button', class: 'small ghost', dataset: { action: 'history' },
        title: 'Show the tasks this schedule created', onclick: () => onHistory(s.name) }, 'History'),
      h('button', { type: 'button', class: 'small', dataset: { action: s.enabled ? 'pause' : 'resume' },
        onclick: () => toggle(s) }, s.enabled ? 'Pause' : 'Resume'),
      h('button', { type: 'button', class: 'small', dataset: { action: 'trigger' },
        onclick: () => trigger(s) }, 'Run now'))));
}

export async function refresh() {
  const panel = $('#schedules');
  if (!panel) return;
  let items;
  try {
    items = await api('GET', '/schedules');
  } catch (err) {
    if (err.status !== 401) console.debug('schedules refresh failed:', err.message);
    return;
  }
  panel.hidden = items.length === 0;
  $('#schedule-rows').replaceChildren(...items.map(row));
}

export function startSchedules(reportError, showHistory) {
  onError = reportError;
  onHistory = showHistory;
  refresh();
  if (timer === null) timer = setInterval(refresh, REFRESH_MS);
}
