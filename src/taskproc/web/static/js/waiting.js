// "Why isn't this task running?": a waiting task's `waiting` ({reason, until, position, detail, and for the
// per-key limits key, running, limit}) as one line: a reason badge, the API's sentence, a live countdown to
// `until` and, for a ready task, its place in its queue.

import { h } from './dom.js';

export const REASONS = {
  delayed: 'delayed',
  backoff: 'retry backoff',
  queue_paused: 'queue paused',
  no_worker: 'no worker',
  ready: 'ready',
  concurrency_limited: 'concurrency limited',
  rate_limited: 'rate limited',
};

// What a reason means when the API gives no sentence (an older server, a reason added later).
const FALLBACK = {
  delayed: 'waiting out its delay',
  backoff: 'waiting out the retry backoff',
  queue_paused: 'its queue is paused; it starts once the queue is resumed',
  no_worker: 'no live worker serves it; it runs once one does',
  ready: 'due; waiting for a free worker slot',
  concurrency_limited: 'its concurrency key is at its limit of running tasks',
  rate_limited: 'its concurrency key has used up its rate; it starts when a token frees up',
};

export function reasonLabel(reason) {
  return REASONS[reason] || String(reason).replaceAll('_', ' ');
}

export function reasonBadge(reason) {
  return h('span', { class: `reason r-${reason}`, dataset: { reason } }, reasonLabel(reason));
}

export function countdownText(until, now = Date.now()) {
  const ms = new Date(until) - now;
  if (!(ms > 0)) return 'due now';
  const s = Math.ceil(ms / 1000);
  if (s < 60) return `in ${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `in ${m} m ${String(s % 60).padStart(2, '0')} s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `in ${hours} h ${String(m % 60).padStart(2, '0')} m`;
  return `in ${Math.floor(hours / 24)} d ${hours % 24} h`;
}

function limitText(w) {
  if (w.reason === 'concurrency_limited' && w.running !== null && w.running !== undefined
    && w.limit !== null && w.limit !== undefined) return `${w.running} running of limit ${w.limit}`;
  return null;
}

export function waitingLine(w) {
  const parts = [reasonBadge(w.reason),
    h('span', { class: 'waiting-detail', id: 'detail-waiting-detail' }, w.detail || FALLBACK[w.reason] || '')];
  if (w.key) parts.push(h('span', { class: 'waiting-key' }, 'key ', h('code', {}, w.key)));
  const limit = limitText(w);
  if (limit) parts.push(h('span', { class: 'waiting-limit', id: 'detail-waiting-limit' }, limit));
  if (w.until) {
    parts.push(h('time', { class: 'countdown', id: 'detail-countdown', datetime: w.until, title: w.until,
      dataset: { until: w.until } }, countdownText(w.until)));
  }
  if (w.reason === 'ready' && w.position !== null && w.position !== undefined) {
    const ahead = w.position === 0 ? 'next in its queue' : `${w.position} ahead of it in its queue`;
    parts.push(h('span', { class: 'position', id: 'detail-position', dataset: { position: String(w.position) } },
      ahead));
  }
  return h('div', { class: 'waiting', id: 'detail-waiting', dataset: { reason: w.reason }, role: 'status' }, parts);
}

// One timer for every countdown on the page; `onDue` runs once when a countdown reaches zero (the task may
// start now, so its detail is read again).
export function startCountdowns(onDue) {
  setInterval(() => {
    for (const el of document.querySelectorAll('[data-until]')) {
      const text = countdownText(el.dataset.until);
      if (el.textContent !== text) el.textContent = text;
      if (text === 'due now' && !el.dataset.due) {
        el.dataset.due = 'true';
        onDue();
      }
    }
  }, 1000);
}
