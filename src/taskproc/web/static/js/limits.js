// The limits panel: per concurrency key, its limit (most running at once, most started per period), how many
// of its tasks run now and the rate tokens left; set a limit (a new key or an edit) and delete one. Refreshed
// every few seconds (tokens refill with no event), after task events (throttled by app.js) and after actions.

import { api, formatDetail } from './api.js';
import { $, clear, formatTime, h, toast } from './dom.js';

const REFRESH_MS = 5000;
const MAX_KEY = 200;
let onError = () => {};
let timer = null;
let seq = 0;
let confirming = null;
let confirmTimer = null;

// A key is free text (1 to 200 characters, "/" included): every character that is not plain is escaped, dots
// too, so that a key like ".." stays a key and never becomes a path step.
export function limitPath(key) {
  return `/limits/${encodeURIComponent(key).replaceAll('.', '%2E')}`;
}

function rateText(rate) {
  if (!rate) return '–';
  const per = rate.per_s === 1 ? 's' : `${rate.per_s} s`;
  return `${rate.count} per ${per}`;
}

function running(limit) {
  const text = limit.max_running ? `${limit.running} of ${limit.max_running}` : `${limit.running}`;
  if (!limit.max_running) return text;
  const full = limit.running >= limit.max_running;
  const fill = h('span', { class: 'fill' });
  fill.style.width = `${Math.min(100, (100 * limit.running) / limit.max_running)}%`;
  return [text, h('span', { class: `meter${full ? ' full' : ''}`, title: full ? 'at its limit' : '' }, fill)];
}

function tokens(limit) {
  if (limit.tokens === null || limit.tokens === undefined) return '–';
  return limit.tokens >= 10 ? String(Math.floor(limit.tokens)) : limit.tokens.toFixed(1);
}

async function remove(limit, button) {
  if (confirming !== limit.key) {
    confirming = limit.key;
    button.textContent = 'Confirm delete';
    button.classList.add('confirming');
    clearTimeout(confirmTimer);
    confirmTimer = setTimeout(() => {
      confirming = null;
      refreshLimits();
    }, 4000);
    return;
  }
  confirming = null;
  clearTimeout(confirmTimer);
  try {
    await api('DELETE', limitPath(limit.key));
    toast(`Deleted the limit of ${limit.key}`, 'ok');
  } catch (err) {
    onError(err);
  }
  refreshLimits();
}

function openForm(show) {
  const form = $('#limit-form');
  form.hidden = !show;
  $('#limit-new').hidden = show;
  if (!show) {
    form.reset();
    showErrors([]);
  }
  return form;
}

function edit(limit) {
  const form = openForm(true);
  form.elements.key.value = limit.key;
  form.elements.max_running.value = limit.max_running ?? '';
  form.elements.rate_count.value = limit.rate ? limit.rate.count : '';
  form.elements.rate_per_s.value = limit.rate ? limit.rate.per_s : '';
  showErrors([]);
  form.elements.max_running.focus();
}

function row(limit) {
  return h('tr', { dataset: { key: limit.key, origin: limit.origin } },
    h('td', {}, h('code', { class: 'key' }, limit.key)),
    h('td', { class: 'num', dataset: { field: 'running' } }, running(limit)),
    h('td', { dataset: { field: 'rate' } }, rateText(limit.rate)),
    h('td', { class: 'num', dataset: { field: 'tokens' } }, tokens(limit)),
    h('td', { dataset: { field: 'origin' },
      title: limit.origin === 'type' ? 'the default its task type declares' : 'set through the API' },
    limit.origin === 'type' ? 'task type' : 'API'),
    h('td', { title: limit.updated_at }, formatTime(limit.updated_at)),
    h('td', { class: 'actions' }, h('div', { class: 'btns' },
      h('button', { type: 'button', class: 'small', dataset: { action: 'edit' }, 'aria-label': `Edit the limit of ${limit.key}`,
        onclick: () => edit(limit) }, 'Edit'),
      h('button', { type: 'button', class: `small danger${confirming === limit.key ? ' confirming' : ''}`,
        dataset: { action: 'delete' }, onclick: (e) => remove(limit, e.currentTarget) },
      confirming === limit.key ? 'Confirm delete' : 'Delete'))));
}

export async function refreshLimits() {
  const panel = $('#limits');
  if (!panel) return;
  const mine = ++seq;
  let items;
  try {
    items = await api('GET', '/limits');
  } catch (err) {
    if (err.status === 404 || err.status === 405) panel.hidden = true; // an API without limits
    else if (err.status !== 401) console.debug('limits refresh failed:', err.message);
    return;
  }
  if (mine !== seq) return;
  panel.hidden = false;
  $('#limit-rows').replaceChildren(...items.map(row));
  $('#limits-empty').hidden = items.length > 0;
  $('#limit-table').hidden = items.length === 0;
}

function showErrors(messages) {
  const list = $('#limit-errors');
  clear(list);
  list.append(...messages.map((m) => h('li', {}, m)));
  list.hidden = messages.length === 0;
}

function optional(value) {
  const text = value.trim();
  return text === '' ? null : Number(text);
}

// The form's body, or the reasons it has none; the API checks the numbers again (422).
export function readLimitForm(form) {
  const errors = [];
  const key = form.elements.key.value;
  if (!key.length || key.length > MAX_KEY) errors.push(`key: 1 to ${MAX_KEY} characters`);
  const maxRunning = optional(form.elements.max_running.value);
  const count = optional(form.elements.rate_count.value);
  const perS = optional(form.elements.rate_per_s.value);
  if (maxRunning !== null && !(Number.isInteger(maxRunning) && maxRunning >= 1)) {
    errors.push('max running: a whole number, 1 or more');
  }
  if ((count === null) !== (perS === null)) errors.push('rate: give both the count and the period');
  if (count !== null && !(Number.isInteger(count) && count >= 1)) errors.push('rate count: a whole number, 1 or more');
  if (perS !== null && !(Number.isFinite(perS) && perS > 0)) errors.push('rate period: seconds, more than 0');
  if (maxRunning === null && count === null && perS === null) errors.push('set max running, a rate, or both');
  const body = { max_running: maxRunning, rate: count === null ? null : { count, per_s: perS } };
  return { key, body, errors };
}

async function onSubmit(e) {
  e.preventDefault();
  const form = e.currentTarget;
  const { key, body, errors } = readLimitForm(form);
  showErrors(errors);
  if (errors.length) return;
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    const limit = await api('PUT', limitPath(key), body);
    toast(`Limit of ${limit.key} set`, 'ok');
    openForm(false);
  } catch (err) {
    if (err.status === 422) showErrors([formatDetail(err.detail) || err.message]);
    else onError(err);
  } finally {
    button.disabled = false;
  }
  refreshLimits();
}

export function startLimits(reportError) {
  onError = reportError;
  $('#limit-form').addEventListener('submit', onSubmit);
  $('#limit-new').addEventListener('click', () => openForm(true).elements.key.focus());
  $('#limit-cancel').addEventListener('click', () => openForm(false));
  refreshLimits();
  if (timer === null) timer = setInterval(refreshLimits, REFRESH_MS);
}
