// The queues panel: every named queue with its ready, deferred and running counts, how long its oldest ready
// task has waited, the workers taking from it, and pause/resume. Refreshed every few seconds (a pause by
// someone else makes no task event), after task events (throttled by app.js) and after each action.

import { api } from './api.js';
import { $, formatDuration, h, toast } from './dom.js';

const REFRESH_MS = 5000;
let onError = () => {};
let onQueues = () => {};
let timer = null;
let seq = 0;

async function setPaused(queue, paused) {
  try {
    const updated = await api('POST', `/queues/${encodeURIComponent(queue.name)}/${paused ? 'pause' : 'resume'}`);
    toast(`${updated.paused ? 'Paused' : 'Resumed'} queue ${updated.name}`, 'ok');
  } catch (err) {
    onError(err);
  }
  refreshQueues();
}

function age(seconds) {
  return seconds === null || seconds === undefined ? '–' : formatDuration(seconds * 1000);
}

function row(q) {
  const state = q.paused
    ? h('span', { class: 'state paused', title: q.paused_at ? `paused since ${q.paused_at}` : '' }, 'paused')
    : h('span', { class: 'state active' }, 'active');
  return h('tr', { dataset: { queue: q.name, paused: String(q.paused) } },
    h('td', {}, h('strong', {}, q.name)),
    h('td', { class: 'state-cell' }, state),
    h('td', { class: 'num', dataset: { field: 'ready' } }, q.ready.toLocaleString()),
    h('td', { class: 'num', dataset: { field: 'deferred' } }, q.deferred.toLocaleString()),
    h('td', { class: 'num', dataset: { field: 'running' } }, q.running.toLocaleString()),
    h('td', { class: 'num', dataset: { field: 'oldest' } }, age(q.oldest_ready_age_s)),
    h('td', { class: `num${q.workers === 0 ? ' warn-text' : ''}`, dataset: { field: 'workers' },
      title: q.workers === 0 ? 'no live worker takes from this queue' : '' }, String(q.workers)),
    h('td', { class: 'actions' }, h('div', { class: 'btns' },
      h('button', { type: 'button', class: `small${q.paused ? '' : ' warn'}`,
        dataset: { action: q.paused ? 'resume' : 'pause' },
        'aria-label': `${q.paused ? 'Resume' : 'Pause'} queue ${q.name}`, onclick: (e) => {
          e.stopPropagation();
          setPaused(q, !q.paused);
        } }, q.paused ? 'Resume' : 'Pause'))));
}

export async function refreshQueues() {
  const panel = $('#queues');
  if (!panel) return;
  const mine = ++seq;
  let items;
  try {
    items = await api('GET', '/queues');
  } catch (err) {
    if (err.status !== 401) console.debug('queues refresh failed:', err.message);
    return;
  }
  if (mine !== seq) return; // a newer refresh (after an action) wins
  panel.hidden = false;
  $('#queue-rows').replaceChildren(...items.map(row));
  const paused = items.filter((q) => q.paused).length;
  $('#queues-summary').textContent = paused ? `${paused} paused` : '';
  onQueues(items);
}

export function startQueues(reportError, queuesSeen) {
  onError = reportError;
  onQueues = queuesSeen;
  refreshQueues();
  if (timer === null) timer = setInterval(refreshQueues, REFRESH_MS);
}
