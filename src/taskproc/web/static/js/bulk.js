// Bulk actions from the task list's current filters (POST /api/v1/tasks/bulk): the dry run's count first, then
// a confirmation, then the operation's progress from GET /api/v1/bulk/{id} until it ends.

import { api } from './api.js';
import { $, h, toast } from './dom.js';

const POLL_MS = 500;
const LABELS = { retry: 'Retry', cancel: 'Cancel', delete: 'Delete', set_priority: 'Set priority of' };
const WHICH = {
  retry: 'failed or canceled',
  cancel: 'waiting or running',
  delete: 'finished',
  set_priority: 'pending',
};

let getFilters = () => ({});
let onDone = () => {};
let onError = () => {};
let seq = 0;
let count = null;

function currentFilter() {
  const filter = {};
  for (const [k, v] of Object.entries(getFilters())) if (v) filter[k] = v;
  return filter;
}

function body(dryRun) {
  const action = $('#bulk-action').value;
  const b = { action, filter: currentFilter(), dry_run: dryRun };
  if (action === 'set_priority') b.priority = $('#bulk-priority').value;
  return b;
}

function describe(filter) {
  const parts = Object.entries(filter).map(([k, v]) => `${k} = ${v}`);
  return parts.length ? parts.join(', ') : 'every task (no filter)';
}

async function recount() {
  const mine = ++seq;
  const action = $('#bulk-action').value;
  $('#bulk-priority-field').hidden = action !== 'set_priority';
  const confirm = $('#bulk-confirm');
  confirm.disabled = true;
  $('#bulk-count').textContent = 'Counting…';
  let result;
  try {
    result = await api('POST', '/tasks/bulk', body(true));
  } catch (err) {
    if (mine === seq) $('#bulk-count').textContent = err.message;
    return;
  }
  if (mine !== seq) return; // the action changed meanwhile
  count = result.total;
  const el = $('#bulk-count');
  el.dataset.total = String(count);
  el.textContent = `${count.toLocaleString()} tasks match now (of them, the ${WHICH[action]} ones are changed).`;
  confirm.textContent = `${LABELS[action]} ${count.toLocaleString()} tasks`;
  confirm.disabled = count === 0;
}

function renderProgress(op) {
  const box = $('#bulk-progress');
  box.hidden = false;
  box.dataset.status = op.status;
  box.dataset.done = String(op.done);
  // A <progress> element: its value is an attribute, where a bar's width would need an inline style.
  const progress = h('progress', { max: String(Math.max(1, op.total)), value: String(op.done + op.failed) });
  box.replaceChildren(
    h('p', {}, h('strong', {}, op.status), ` · ${op.done.toLocaleString()} done, `
      + `${op.failed.toLocaleString()} skipped of ${op.total.toLocaleString()}`),
    progress,
    h('p', { class: 'hint' }, `operation ${op.id}, requested by ${op.requested_by}`),
  );
}

async function follow(id) {
  for (;;) {
    let op;
    try {
      op = await api('GET', `/bulk/${id}`);
    } catch (err) {
      onError(err);
      return;
    }
    renderProgress(op);
    if (op.status !== 'running') {
      toast(`Bulk ${op.action}: ${op.done.toLocaleString()} done, ${op.failed.toLocaleString()} skipped`,
        op.status === 'completed' ? 'ok' : 'error');
      onDone();
      return;
    }
    await new Promise((resolve) => { setTimeout(resolve, POLL_MS); });
  }
}

async function apply() {
  const confirm = $('#bulk-confirm');
  confirm.disabled = true;
  let op;
  try {
    op = await api('POST', '/tasks/bulk', body(false));
  } catch (err) {
    onError(err);
    confirm.disabled = false;
    return;
  }
  $('#bulk-action').disabled = true;
  renderProgress(op);
  follow(op.id);
}

function open() {
  const filter = currentFilter();
  $('#bulk-filter').textContent = describe(filter);
  const action = $('#bulk-action');
  action.disabled = false;
  // The usual case first: "retry all failed of this type".
  action.value = filter.status === 'pending' || filter.status === 'running' ? 'cancel'
    : filter.status === 'completed' ? 'delete' : 'retry';
  $('#bulk-progress').hidden = true;
  $('#bulk-dialog').showModal();
  recount();
}

let wired = false;

export function startBulk({ filters, done, reportError }) {
  getFilters = filters;
  onDone = done;
  onError = reportError;
  if (wired) return; // start() runs again after an API key is entered
  wired = true;
  $('#bulk-open').addEventListener('click', open);
  $('#bulk-action').addEventListener('change', recount);
  $('#bulk-priority').addEventListener('change', recount);
  $('#bulk-confirm').addEventListener('click', apply);
}
