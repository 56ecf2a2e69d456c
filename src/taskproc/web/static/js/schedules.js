// The schedules panel: every cron schedule with its next and last run, the outcome of its newest task, a
// pause/resume toggle and "run now". Refreshed every few seconds and after each action.

import { api } from './api.js';
import { $, badge, formatTime, h, toast } from './dom.js';

const REFRESH_MS = 5000;
let onError = () => {};
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

function notRun(s) {
  const counts = `${s.fired_total} fired, ${s.skipped_total} skipped, ${s.missed_total} missed`;
  return s.last_skip_reason ? `${counts}; last not run ${formatTime(s.last_skipped_at)}: ${s.last_skip_reason}` : counts;
}

function row(s) {
  return h('tr', { dataset: { schedule: s.name, enabled: String(s.enabled) } },
    h('td', {}, h('strong', {}, s.name), h('div', { class: 'hint' }, s.task.type)),
    h('td', {}, h('code', {}, s.cron), h('div', { class: 'hint' }, s.timezone)),
    h('td', { title: s.next_run_at || '' }, s.enabled ? formatTime(s.next_run_at) : h('span', { class: 'hint' }, 'paused')),
    h('td', { title: s.last_run_at || '' }, formatTime(s.last_run_at) || '–'),
    h('td', { title: notRun(s) }, s.last_task_status ? badge(s.last_task_status) : '–'),
    h('td', { class: 'actions' }, h('div', { class: 'btns' },
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

export function startSchedules(reportError) {
  onError = reportError;
  refresh();
  if (timer === null) timer = setInterval(refresh, REFRESH_MS);
}
