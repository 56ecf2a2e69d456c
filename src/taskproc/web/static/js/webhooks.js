// The webhooks panel: list, create (the signing secret is shown once) and delete webhooks, and a webhook's
// deliveries with each one's status, attempts, last status code and latency, and a Redeliver button.
// Refreshed every few seconds (deliveries make no task event of their own) and after each action.

import { api } from './api.js';
import { $, formatTime, h, shortId, toast } from './dom.js';

const REFRESH_MS = 3000;
const EVENTS = ['task.completed', 'task.failed', 'task.canceled', 'task.retrying', 'task.running'];

let onError = () => {};
let timer = null;
let seq = 0;
let open = null; // the webhook whose deliveries are shown
let confirming = null;
let confirmTimer = null;

function filterText(f) {
  if (!f) return 'every task';
  const parts = [];
  if (f.type && f.type.length) parts.push(`type ${f.type.join(', ')}`);
  if (f.queue && f.queue.length) parts.push(`queue ${f.queue.join(', ')}`);
  return parts.length ? parts.join('; ') : 'every task';
}

async function remove(hook) {
  if (confirming !== hook.id) {
    confirming = hook.id;
    clearTimeout(confirmTimer);
    confirmTimer = setTimeout(() => { confirming = null; refreshWebhooks(); }, 4000);
    refreshWebhooks();
    return;
  }
  confirming = null;
  try {
    await api('DELETE', `/webhooks/${hook.id}`);
    toast(`Deleted the webhook to ${hook.url}`, 'ok');
    if (open === hook.id) showDeliveries(null);
  } catch (err) {
    onError(err);
  }
  refreshWebhooks();
}

function hookRow(hook) {
  const deleting = confirming === hook.id;
  return h('tr', { dataset: { webhookId: hook.id }, class: open === hook.id ? 'selected' : '' },
    h('td', {}, h('code', { class: 'url' }, hook.url)),
    h('td', {}, hook.events.join(', ')),
    h('td', {}, filterText(hook.filter)),
    h('td', { title: hook.created_at }, formatTime(hook.created_at)),
    h('td', { class: 'actions' }, h('div', { class: 'btns' },
      h('button', { type: 'button', class: 'small', dataset: { action: 'deliveries' },
        onclick: () => showDeliveries(open === hook.id ? null : hook.id) }, 'Deliveries'),
      h('button', { type: 'button', class: `small danger${deleting ? ' confirming' : ''}`, dataset: { action: 'delete' },
        onclick: () => remove(hook) }, deleting ? 'Confirm delete' : 'Delete'))));
}

async function redeliver(d) {
  try {
    await api('POST', `/webhooks/${d.webhook_id}/deliveries/${d.id}/redeliver`);
    toast(`Redelivery of ${shortId(d.id)} queued`, 'ok');
  } catch (err) {
    onError(err);
  }
  refreshDeliveries();
}

function deliveryRow(d) {
  const code = d.last_status_code === null ? '–' : String(d.last_status_code);
  return h('tr', { dataset: { deliveryId: d.id, status: d.status } },
    h('td', {}, d.event),
    h('td', {}, d.task_id ? h('a', { href: `#task=${d.task_id}` }, h('code', {}, shortId(d.task_id))) : '–'),
    h('td', {}, h('span', { class: `badge d-${d.status}` }, d.status)),
    h('td', { class: 'num', dataset: { field: 'attempts' } }, String(d.attempts)),
    h('td', { class: 'num', dataset: { field: 'code' } }, code),
    h('td', { class: 'num', dataset: { field: 'latency' } },
      d.last_latency_ms === null ? '–' : `${Math.round(d.last_latency_ms)} ms`),
    h('td', { title: d.last_attempt_at || '' }, d.last_attempt_at ? formatTime(d.last_attempt_at) : '–'),
    h('td', { class: 'error-cell', title: d.last_error || '' }, d.last_error || ''),
    h('td', { class: 'actions' }, h('button', { type: 'button', class: 'small', dataset: { action: 'redeliver' },
      onclick: () => redeliver(d) }, 'Redeliver')));
}

async function refreshDeliveries() {
  const box = $('#webhook-deliveries');
  if (!open) {
    box.hidden = true;
    return;
  }
  const id = open;
  let items;
  try {
    items = await api('GET', `/webhooks/${id}/deliveries?limit=50`);
  } catch (err) {
    if (err.status === 404) showDeliveries(null);
    return;
  }
  if (open !== id) return;
  box.hidden = false;
  $('#webhook-delivery-rows').replaceChildren(...items.map(deliveryRow));
  $('#webhook-deliveries-empty').hidden = items.length > 0;
}

function showDeliveries(id) {
  open = id;
  for (const tr of document.querySelectorAll('#webhook-rows tr')) tr.classList.toggle('selected', tr.dataset.webhookId === id);
  refreshDeliveries();
}

export async function refreshWebhooks() {
  const panel = $('#webhooks');
  if (!panel) return;
  const mine = ++seq;
  let items;
  try {
    items = await api('GET', '/webhooks');
  } catch (err) {
    if (err.status !== 401) console.debug('webhooks refresh failed:', err.message);
    return;
  }
  if (mine !== seq) return;
  panel.hidden = false;
  $('#webhook-rows').replaceChildren(...items.map(hookRow));
  $('#webhook-table').hidden = items.length === 0;
  $('#webhooks-empty').hidden = items.length > 0;
  if (open && !items.some((w) => w.id === open)) showDeliveries(null);
  else refreshDeliveries();
}

async function onCreate(e) {
  e.preventDefault();
  const errors = $('#webhook-errors');
  errors.hidden = true;
  const events = EVENTS.filter((ev) => $(`#webhook-event-${ev.replace('.', '-')}`).checked);
  const body = { url: $('#webhook-url').value.trim(), events };
  const split = (v) => v.split(',').map((s) => s.trim()).filter(Boolean);
  const filter = {};
  const types = split($('#webhook-filter-type').value);
  const queues = split($('#webhook-filter-queue').value);
  if (types.length) filter.type = types;
  if (queues.length) filter.queue = queues;
  if (Object.keys(filter).length) body.filter = filter;
  try {
    const hook = await api('POST', '/webhooks', body);
    $('#webhook-secret-value').textContent = hook.secret;
    $('#webhook-secret').hidden = false;
    $('#webhook-url').value = '';
    toast(`Created a webhook to ${hook.url}`, 'ok');
  } catch (err) {
    errors.replaceChildren(h('li', {}, err.message));
    errors.hidden = false;
  }
  refreshWebhooks();
}

export function startWebhooks(reportError) {
  onError = reportError;
  if (timer !== null) return;
  $('#webhook-new').addEventListener('click', () => {
    const form = $('#webhook-form');
    form.hidden = !form.hidden;
    $('#webhook-secret').hidden = true;
    if (!form.hidden) $('#webhook-url').focus();
  });
  $('#webhook-form').addEventListener('submit', onCreate);
  refreshWebhooks();
  timer = setInterval(refreshWebhooks, REFRESH_MS);
}
