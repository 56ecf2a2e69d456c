// The taskproc dashboard: stats, the task table, task details, actions, and live updates over SSE.

import { startBulk } from './bulk.js';
import { startCharts } from './charts.js';
import { API, api, authHeaders, clearKey, getKey, onUnauthorized, query, setKey } from './api.js';
import { $, badge, clear, formatDuration, formatTime, h, pretty, shortId, taskDuration, toast } from './dom.js';
import { refreshLimits, startLimits } from './limits.js';
import { refreshQueues, startQueues } from './queues.js';
import { startSchedules } from './schedules.js';
import { startWebhooks } from './webhooks.js';
import { FieldError, PayloadForm } from './schema-form.js';
import { EventStream } from './sse.js';
import { reasonBadge, startCountdowns, waitingLine } from './waiting.js';

const STATUSES = ['pending', 'running', 'retrying', 'completed', 'failed', 'canceled'];
const PRIORITIES = ['high', 'normal', 'low'];
const ACTIVE = new Set(['pending', 'running', 'retrying']);
const TERMINAL = new Set(['completed', 'failed', 'canceled']);
const RETRYABLE = new Set(['failed', 'canceled']);
const QUEUE_NAME = /^[a-z0-9_-]{1,64}$/;
const SCHEDULE_NAME = QUEUE_NAME;

const state = {
  filters: { status: '', type: '', priority: '', queue: '', schedule: '' },
  limit: 20,
  cursors: [null],
  page: 0,
  nextCursor: null,
  tasks: [],
  selected: null,
  types: [],
  listSeq: 0,
  detailSeq: 0,
  confirmDelete: null,
  paused: null,
  connectedOnce: false,
  started: false,
};

// ---- scheduling: coalesce bursts of events into at most one refresh per interval -------------------------

function throttled(fn, ms) {
  let timer = null;
  let running = false;
  let again = false;
  const fire = async () => {
    timer = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await fn();
    } catch (err) {
      if (err.status !== 401) console.debug('refresh failed:', err.message);
    } finally {
      running = false;
      if (again) {
        again = false;
        schedule();
      }
    }
  };
  const schedule = () => {
    if (timer === null) timer = setTimeout(fire, ms);
  };
  return schedule;
}

// Under a flood of events a dashboard asks for stats at most once a second and for its page twice a second.
const scheduleStats = throttled(refreshStats, 1000);
const scheduleTasks = throttled(refreshTasks, 500);
const scheduleDetail = throttled(loadDetail, 300);
const scheduleQueues = throttled(refreshQueues, 1000);
const scheduleLimits = throttled(refreshLimits, 1000);

function reportError(err) {
  if (err && err.status === 401) return; // the key prompt is showing
  toast(err.message || String(err), 'error', 6000);
}

// ---- URL hash: filters and the open task survive a reload and can be shared ------------------------------

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  state.filters.status = STATUSES.includes(p.get('status')) ? p.get('status') : '';
  state.filters.type = p.get('type') || '';
  state.filters.priority = PRIORITIES.includes(p.get('priority')) ? p.get('priority') : '';
  state.filters.queue = QUEUE_NAME.test(p.get('queue') || '') ? p.get('queue') : '';
  state.filters.schedule = SCHEDULE_NAME.test(p.get('schedule') || '') ? p.get('schedule') : '';
  const limit = Number(p.get('limit'));
  if ([10, 20, 50, 100].includes(limit)) state.limit = limit;
  state.selected = p.get('task') || null;
}

function writeHash() {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(state.filters)) if (v) p.set(k, v);
  if (state.limit !== 20) p.set('limit', String(state.limit));
  if (state.selected) p.set('task', state.selected);
  const hash = p.toString();
  history.replaceState(null, '', hash ? `#${hash}` : location.pathname);
}

// ---- stats -------------------------------------------------------------------------------------------------

async function refreshStats() {
  const stats = await api('GET', '/stats');
  renderStats(stats);
}

function renderStats(stats) {
  const cards = $('#status-cards');
  const make = (status, label, n) => h('button', {
    type: 'button',
    class: `card s-${status}${state.filters.status === status ? ' active' : ''}`,
    dataset: { status },
    title: status === 'total' ? 'Show all tasks' : `Show ${status} tasks`,
    onclick: () => setFilter('status', status === 'total' || state.filters.status === status ? '' : status),
  }, h('span', { class: 'label' }, label), h('span', { class: 'count' }, n.toLocaleString()));
  cards.replaceChildren(
    ...STATUSES.map((s) => make(s, s, stats.tasks[s] || 0)),
    make('total', 'total', stats.tasks.total || 0),
  );

  const max = Math.max(1, ...PRIORITIES.map((p) => stats.queue[p] || 0));
  $('#queue-bars').replaceChildren(...PRIORITIES.map((p) => {
    const n = stats.queue[p] || 0;
    const fill = h('div', { class: `fill p-${p}` });
    fill.style.width = `${(100 * n) / max}%`;
    return h('div', { class: 'bar', dataset: { priority: p } },
      h('span', { class: 'label' }, p), h('div', { class: 'track' }, fill),
      h('span', { class: 'count' }, n.toLocaleString()));
  }));
  const workers = $('#workers-count');
  workers.textContent = String(stats.workers);
  workers.classList.toggle('warn', stats.workers === 0);
  // Tasks no live worker can take (its type or its queue served by none): they wait until one starts.
  const orphans = (stats.waiting_no_worker || 0) + (stats.waiting_no_queue_worker || 0);
  const hint = $('#workers-hint');
  hint.textContent = orphans ? `${orphans.toLocaleString()} waiting with no worker for their type or queue`
    : 'heartbeat within the lease';
  hint.classList.toggle('warn-text', orphans > 0);
  $('#retried-count').textContent = stats.retried_total.toLocaleString();
}

// ---- task table --------------------------------------------------------------------------------------------

function matchesFilters(ev) {
  const f = state.filters;
  // An event does not name the task's queue or schedule: with those filters, a new task may match, so look.
  return (!f.status || f.status === ev.task_status) && (!f.type || f.type === ev.type)
    && (!f.priority || f.priority === ev.priority);
}

async function refreshTasks() {
  const seq = ++state.listSeq;
  const params = { ...state.filters, limit: state.limit, cursor: state.cursors[state.page] };
  const data = await api('GET', `/tasks${query(params)}`);
  if (seq !== state.listSeq) return; // a newer request (filters changed) wins
  state.tasks = data.items;
  state.nextCursor = data.next_cursor;
  renderTasks();
}

function setFilterSelect(name, value) {
  const select = $(`select#filter-${name}`); // the schedule filter is a chip, not a select
  if (!select) return;
  if (value && !Array.from(select.options).some((o) => o.value === value)) select.append(h('option', { value }, value));
  select.value = value;
}

function setFilter(name, value) {
  state.filters[name] = value;
  setFilterSelect(name, value);
  renderScheduleFilter();
  resetPaging();
  scheduleStats(); // re-renders the active card
}

function resetPaging() {
  state.cursors = [null];
  state.page = 0;
  writeHash();
  refreshTasks().catch(reportError);
}

function actionButtons(task, small) {
  const cls = small ? 'small' : '';
  const stop = (fn) => (e) => {
    e.stopPropagation();
    fn(task, e.currentTarget);
  };
  const buttons = [];
  if (ACTIVE.has(task.status)) {
    buttons.push(h('button', { type: 'button', class: `${cls} warn`, dataset: { action: 'cancel' },
      onclick: stop(doCancel) }, 'Cancel'));
  }
  if (RETRYABLE.has(task.status)) {
    buttons.push(h('button', { type: 'button', class: cls, dataset: { action: 'retry' },
      onclick: stop(doRetry) }, 'Retry'));
  }
  if (TERMINAL.has(task.status)) {
    const confirming = state.confirmDelete === task.id;
    buttons.push(h('button', { type: 'button', class: `${cls} danger${confirming ? ' confirming' : ''}`,
      dataset: { action: 'delete' }, onclick: stop(doDelete) }, confirming ? 'Confirm delete' : 'Delete'));
  }
  return buttons;
}

function taskRow(task) {
  const dur = taskDuration(task);
  return h('tr', {
    dataset: { taskId: task.id, status: task.status },
    class: state.selected === task.id ? 'selected' : '',
    tabindex: 0,
    onclick: () => openDetail(task.id),
    onkeydown: (e) => { if (e.key === 'Enter') openDetail(task.id); },
  },
  h('td', { class: 'task' }, h('span', { class: 'type' }, task.type),
    h('code', { class: 'id', title: task.id }, shortId(task.id))),
  h('td', { class: 'status' }, badge(task.status), task.quarantined ? quarantineBadge(task) : null,
    task.waiting && task.waiting.reason !== 'ready' ? reasonBadge(task.waiting.reason) : null),
  h('td', {}, h('span', { class: `prio p-${task.priority}` }, task.priority)),
  h('td', { class: 'queue queue-col' }, task.queue || ''),
  h('td', { class: 'num' }, `${task.attempts}/${task.max_retries + 1}`),
  h('td', { title: task.created_at }, formatTime(task.created_at)),
  h('td', { class: 'num' }, task.status === 'running' ? '…' : formatDuration(dur)),
  h('td', { class: 'actions' }, h('div', { class: 'btns' }, actionButtons(task, true))));
}

// A poison task (its attempts killed their worker TASKPROC_MAX_LOST_ATTEMPTS times): failed, but not by its handler.
function quarantineBadge(task) {
  return h('span', { class: 'badge quarantined', title: task.error || 'quarantined', dataset: { quarantined: '' } },
    'quarantined');
}

function renderTasks() {
  const body = $('#task-rows');
  body.replaceChildren(...state.tasks.map(taskRow));
  $('#empty').hidden = state.tasks.length > 0;
  $('#page-label').textContent = `Page ${state.page + 1}`;
  $('#page-newer').disabled = state.page === 0;
  $('#page-older').disabled = !state.nextCursor;
}

function renderRow(task) {
  const old = document.querySelector(`#task-rows tr[data-task-id="${CSS.escape(task.id)}"]`);
  if (!old) return;
  const row = taskRow(task);
  if (old.dataset.status !== task.status) row.classList.add('changed');
  old.replaceWith(row);
}

function mergeTask(task) {
  const i = state.tasks.findIndex((t) => t.id === task.id);
  if (i !== -1) {
    state.tasks[i] = task;
    renderRow(task);
  }
}

function queuesSeen(items) {
  queueNames(items.map((q) => q.name));
  // With the one default queue, a queue column and filter would only take room from the actions.
  const many = items.length > 1 || Boolean(state.filters.queue);
  $('#task-table').classList.toggle('one-queue', !many);
  $('#filter-queue').closest('label').hidden = !many;
  // A pause or resume makes no task event, but changes why waiting tasks wait: read them again.
  const paused = items.filter((q) => q.paused).map((q) => q.name).join('\n');
  if (state.paused !== null && paused !== state.paused) {
    scheduleTasks();
    if (state.selected) scheduleDetail();
  }
  state.paused = paused;
}

// The queue filter offers every queue GET /queues knows, and keeps the one chosen even if it has gone.
function queueNames(names) {
  const select = $('#filter-queue');
  const wanted = [...new Set([...names, ...(state.filters.queue ? [state.filters.queue] : [])])].sort();
  const have = Array.from(select.options).slice(1).map((o) => o.value);
  if (have.join('\n') === wanted.join('\n')) return;
  select.replaceChildren(h('option', { value: '' }, 'any'), ...wanted.map((n) => h('option', { value: n }, n)));
  select.value = state.filters.queue;
}

// A schedule's history (its "History" button) filters the list by schedule: shown as a removable chip.
function renderScheduleFilter() {
  const chip = $('#filter-schedule');
  chip.hidden = !state.filters.schedule;
  $('#filter-schedule-name').textContent = state.filters.schedule;
}

// ---- actions -----------------------------------------------------------------------------------------------

async function doCancel(task) {
  try {
    const updated = await api('POST', `/tasks/${task.id}/cancel`);
    mergeTask(updated);
    toast(updated.status === 'canceled' ? `Canceled ${shortId(task.id)}`
      : `Cancel requested: ${shortId(task.id)} stops within a second`, 'ok');
  } catch (err) {
    reportError(err);
  }
  afterAction(task.id);
}

async function doRetry(task) {
  try {
    const updated = await api('POST', `/tasks/${task.id}/retry`);
    mergeTask(updated);
    toast(`Retrying ${shortId(task.id)}`, 'ok');
  } catch (err) {
    reportError(err);
  }
  afterAction(task.id);
}

let confirmTimer = null;

async function doDelete(task) {
  if (state.confirmDelete !== task.id) {
    state.confirmDelete = task.id;
    clearTimeout(confirmTimer);
    confirmTimer = setTimeout(() => {
      state.confirmDelete = null;
      renderTasks();
      if (state.selected) scheduleDetail();
    }, 4000);
    renderTasks();
    if (state.selected === task.id) scheduleDetail();
    return;
  }
  state.confirmDelete = null;
  clearTimeout(confirmTimer);
  try {
    await api('DELETE', `/tasks/${task.id}`);
    state.tasks = state.tasks.filter((t) => t.id !== task.id);
    renderTasks();
    if (state.selected === task.id) closeDetail();
    toast(`Deleted ${shortId(task.id)}`, 'ok');
  } catch (err) {
    reportError(err);
  }
  scheduleTasks();
  scheduleStats();
}

async function doPriority(task, priority) {
  try {
    const updated = await api('PATCH', `/tasks/${task.id}`, { priority });
    mergeTask(updated);
    toast(`Priority of ${shortId(task.id)} is now ${priority}`, 'ok');
  } catch (err) {
    reportError(err);
  }
  afterAction(task.id);
}

function afterAction(id) {
  scheduleTasks();
  scheduleStats();
  if (state.selected === id) scheduleDetail();
}

// ---- task detail -------------------------------------------------------------------------------------------

function openDetail(id) {
  state.selected = id;
  writeHash();
  for (const tr of document.querySelectorAll('#task-rows tr')) {
    tr.classList.toggle('selected', tr.dataset.taskId === id);
  }
  const panel = $('#detail');
  panel.hidden = false;
  if (panel.dataset.taskId !== id) {
    panel.dataset.taskId = id;
    panel.replaceChildren(h('p', { class: 'hint' }, 'Loading…'));
  }
  loadDetail().catch(reportError);
}

function closeDetail() {
  state.selected = null;
  state.detailSeq += 1;
  writeHash();
  const panel = $('#detail');
  panel.hidden = true;
  delete panel.dataset.taskId;
  clear(panel);
  for (const tr of document.querySelectorAll('#task-rows tr.selected')) tr.classList.remove('selected');
}

async function loadDetail() {
  const id = state.selected;
  if (!id) return;
  const seq = ++state.detailSeq;
  let task;
  let events;
  try {
    [task, events] = await Promise.all([api('GET', `/tasks/${id}`), api('GET', `/tasks/${id}/events`)]);
  } catch (err) {
    if (seq !== state.detailSeq) return;
    if (err.status === 404 || err.status === 422) {
      $('#detail').replaceChildren(detailHeader(null, id), h('p', { class: 'hint' }, 'This task no longer exists.'));
      return;
    }
    throw err;
  }
  if (seq !== state.detailSeq || state.selected !== id) return;
  renderDetail(task, events);
}

function detailHeader(task, id) {
  return h('header', {},
    h('div', {},
      h('h2', {}, task ? task.type : 'Task', ' ', task ? badge(task.status) : null, ' ',
        task && task.quarantined ? quarantineBadge(task) : null),
      h('div', { class: 'idline' }, h('code', { class: 'full-id' }, id),
        h('button', { type: 'button', class: 'ghost small', title: 'Copy the task id', onclick: () => copy(id) },
          'Copy'))),
    h('button', { type: 'button', class: 'ghost icon', 'aria-label': 'Close', onclick: closeDetail }, '×'));
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast('Copied', 'ok', 1500);
  } catch {
    toast('Copy failed: select the id instead', 'error');
  }
}

function renderDetail(task, events) {
  const panel = $('#detail');
  const prio = task.status === 'pending'
    ? h('select', {
      id: 'detail-priority',
      'aria-label': 'Priority',
      onchange: (e) => doPriority(task, e.target.value),
    }, PRIORITIES.map((p) => h('option', { value: p, selected: p === task.priority }, p)))
    : h('span', { class: `prio p-${task.priority}` }, task.priority);
  const rows = [
    ['Priority', prio],
    ['Queue', h('code', { id: 'detail-queue' }, task.queue)],
    ['Attempts', `${task.attempts} of ${task.max_retries + 1}`
      + (task.lost_attempts ? ` (${task.lost_attempts} lost to a dying worker)` : '')],
    ['Timeout', `${task.timeout_s} s per attempt`],
    ['Created', h('time', { datetime: task.created_at, title: task.created_at }, formatTime(task.created_at))],
  ];
  if (task.run_at && new Date(task.run_at) - new Date(task.created_at) > 1000) {
    rows.push(['Runs at', h('time', { datetime: task.run_at, title: task.run_at }, formatTime(task.run_at))]);
  }
  if (task.started_at) rows.push(['Started', h('time', { title: task.started_at }, formatTime(task.started_at))]);
  if (task.finished_at) {
    rows.push(['Finished', h('time', { title: task.finished_at }, formatTime(task.finished_at))]);
    rows.push(['Duration', formatDuration(taskDuration(task))]);
  }
  if (task.idempotency_key) rows.push(['Idempotency key', h('code', {}, task.idempotency_key)]);
  if (task.schedule) rows.push(['Schedule', h('code', {}, task.schedule)]);
  if (task.concurrency_key) rows.push(['Concurrency key', h('code', { id: 'detail-key' }, task.concurrency_key)]);

  const sections = [
    h('section', {}, h('h3', {}, 'Payload'), h('pre', { class: 'json', id: 'detail-payload' }, pretty(task.payload))),
  ];
  if (task.result_expired) {
    sections.push(h('section', {}, h('h3', {}, 'Result'),
      h('p', { class: 'hint expired', id: 'detail-result-expired' }, 'Result expired ',
        h('time', { title: task.result_expires_at }, formatTime(task.result_expires_at)),
        ` (kept ${task.result_ttl_s} s after the task finished)`)));
  } else if (task.result !== null && task.result !== undefined) {
    sections.push(h('section', {}, h('h3', {}, 'Result'),
      h('pre', { class: 'json ok', id: 'detail-result' }, pretty(task.result)),
      task.result_expires_at ? h('p', { class: 'hint' }, 'Expires ',
        h('time', { title: task.result_expires_at }, formatTime(task.result_expires_at))) : null));
  }
  if (task.quarantined) {
    sections.push(h('section', {}, h('h3', {}, 'Quarantined'),
      h('p', { class: 'error', id: 'detail-quarantine' }, `${task.error}: it killed its worker each time, so it is `
        + 'not retried (TASKPROC_MAX_LOST_ATTEMPTS). Retry it once the cause is fixed.')));
  } else if (task.error) {
    sections.push(h('section', {}, h('h3', {}, 'Error'), h('pre', { class: 'error', id: 'detail-error' }, task.error)));
  }
  sections.push(h('section', {}, h('h3', {}, `Timeline `, h('span', { class: 'hint' }, `${events.length} events`)),
    h('ol', { class: 'timeline', id: 'detail-timeline' }, events.map((ev) => h('li', { dataset: { status: ev.status } },
      h('span', { class: `dot s-${ev.status}` }),
      h('div', { class: 'what' }, h('strong', {}, ev.status),
        ev.attempt ? h('span', { class: 'hint' }, ` · attempt ${ev.attempt}`) : null,
        h('time', { title: ev.at }, formatTime(ev.at))),
      ev.detail ? h('div', { class: 'detail-text' }, ev.detail) : null)))));

  panel.replaceChildren(...[
    detailHeader(task, task.id),
    task.waiting && ACTIVE.has(task.status) ? waitingLine(task.waiting) : null,
    h('dl', { class: 'facts' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    h('div', { class: 'detail-actions' }, actionButtons(task, false)),
    ...sections,
  ].filter(Boolean));
}

// ---- submit form -------------------------------------------------------------------------------------------

const submit = { form: null, raw: false };

function selectedType() {
  return state.types.find((t) => t.name === $('#submit-type').value);
}

function buildPayloadForm() {
  const type = selectedType();
  $('#submit-type-description').textContent = type ? type.description : '';
  submit.form = new PayloadForm($('#payload-fields'), type ? type.payload_schema : {});
  setRawMode(false);
  clearSubmitErrors();
}

function setRawMode(raw) {
  submit.raw = raw;
  $('#payload-fields').hidden = raw;
  $('#payload-raw').hidden = !raw;
  $('#toggle-raw').textContent = raw ? 'Use the form' : 'Edit as JSON';
}

function toggleRaw() {
  clearSubmitErrors();
  if (!submit.raw) {
    $('#payload-raw').value = pretty(submit.form.readLenient());
    setRawMode(true);
    return;
  }
  try {
    const payload = JSON.parse($('#payload-raw').value || '{}');
    submit.form.fill(payload);
    setRawMode(false);
  } catch (err) {
    showSubmitErrors([`Payload is not valid JSON: ${err.message}`]);
  }
}

function clearSubmitErrors() {
  const list = $('#submit-errors');
  list.hidden = true;
  clear(list);
  if (submit.form) submit.form.clearErrors();
}

function showSubmitErrors(messages) {
  const list = $('#submit-errors');
  list.replaceChildren(...messages.map((m) => h('li', {}, m)));
  list.hidden = messages.length === 0;
}

function openSubmit() {
  const select = $('#submit-type');
  const previous = select.value;
  select.replaceChildren(...state.types.map((t) => h('option', { value: t.name }, t.name)));
  if (previous && state.types.some((t) => t.name === previous)) select.value = previous;
  if (!submit.form || select.value !== previous) buildPayloadForm();
  clearSubmitErrors();
  $('#submit-dialog').showModal();
  const first = $('#payload-fields input, #payload-fields textarea, #payload-fields select');
  (first || select).focus();
}

function optionalNumber(selector, name, errors) {
  const raw = $(selector).value.trim();
  if (raw === '') return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n)) errors.push(`${name}: not a number`);
  return n;
}

async function onSubmit(e) {
  e.preventDefault();
  clearSubmitErrors();
  const type = $('#submit-type').value;
  const errors = [];
  let payload;
  try {
    payload = submit.raw ? JSON.parse($('#payload-raw').value || '{}') : submit.form.read();
  } catch (err) {
    if (err instanceof FieldError) submit.form.showError(err.field, err.message.split(': ').slice(1).join(': '));
    else errors.push(`Payload is not valid JSON: ${err.message}`);
    showSubmitErrors(errors.length ? errors : ['Fix the highlighted field.']);
    return;
  }
  const body = { type, priority: $('#submit-priority').value, payload };
  const maxRetries = optionalNumber('#submit-max-retries', 'max retries', errors);
  const timeout = optionalNumber('#submit-timeout', 'timeout', errors);
  const delay = optionalNumber('#submit-delay', 'delay', errors);
  if (errors.length) {
    showSubmitErrors(errors);
    return;
  }
  if (maxRetries !== undefined) body.max_retries = maxRetries;
  if (timeout !== undefined) body.timeout_s = timeout;
  if (delay !== undefined) body.delay_s = delay;
  const queue = $('#submit-queue').value.trim();
  if (queue) body.queue = queue;
  const key = $('#submit-concurrency-key').value;
  if (key) body.concurrency_key = key;

  const button = $('#submit-button');
  button.disabled = true;
  try {
    const task = await api('POST', '/tasks', body);
    $('#submit-dialog').close();
    toast(`Submitted ${task.type} ${shortId(task.id)}`, 'ok');
    if (state.page === 0) await refreshTasks().catch(reportError);
    scheduleStats();
    openDetail(task.id);
  } catch (err) {
    if (err.status === 422 && Array.isArray(err.detail)) {
      const general = [];
      for (const d of err.detail) {
        const loc = (d.loc || []).filter((p) => p !== 'body');
        const placed = !submit.raw && loc[0] === 'payload' && loc.length > 1
          && submit.form.showError(String(loc[1]), loc.length > 2 ? `${loc.slice(2).join('.')}: ${d.msg}` : d.msg);
        if (!placed) general.push(loc.length ? `${loc.join('.')}: ${d.msg}` : d.msg);
      }
      showSubmitErrors(general.length ? general : ['Fix the highlighted fields.']);
    } else if (err.status !== 401) {
      showSubmitErrors([err.message]);
    }
  } finally {
    button.disabled = false;
  }
}

// ---- API key -----------------------------------------------------------------------------------------------

function requireKey() {
  const dialog = $('#key-dialog');
  const hadKey = Boolean(getKey());
  clearKey();
  stream.stop();
  setLive('offline');
  $('#forget-key').hidden = true;
  const msg = $('#key-error');
  msg.textContent = hadKey ? 'The API rejected that key.' : '';
  msg.hidden = !hadKey;
  if (!dialog.open) {
    if ($('#submit-dialog').open) $('#submit-dialog').close();
    dialog.showModal();
  }
  $('#key-input').focus();
}

function onKeySubmit(e) {
  e.preventDefault();
  const key = $('#key-input').value.trim();
  if (!key) {
    $('#key-error').textContent = 'Enter a key.';
    $('#key-error').hidden = false;
    return;
  }
  setKey(key);
  $('#key-input').value = '';
  $('#key-dialog').close();
  start();
}

// ---- live updates ------------------------------------------------------------------------------------------

const LIVE_LABELS = { connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…', offline: 'offline' };

function setLive(s) {
  const el = $('#live');
  el.dataset.state = s;
  el.querySelector('.label').textContent = LIVE_LABELS[s] || s;
}

function onStreamEvent(type, data) {
  if (type === 'ready') {
    if (state.connectedOnce) refreshAll(); // after a reconnect: make sure nothing was missed
    state.connectedOnce = true;
    return;
  }
  if (type === 'reset') {
    refreshAll();
    return;
  }
  if (type !== 'task' || !data || !data.task_id) return;
  scheduleStats();
  scheduleQueues();
  scheduleLimits();
  const row = state.tasks.find((t) => t.id === data.task_id);
  if (row) {
    const changed = row.status !== data.task_status;
    row.status = data.task_status;
    row.priority = data.priority;
    row.attempts = data.task_attempts;
    if (changed) renderRow(row);
    scheduleTasks(); // fetch the full row (result, timings)
  } else if (state.page === 0 && matchesFilters(data)) {
    scheduleTasks();
  }
  if (state.selected === data.task_id) scheduleDetail();
}

const stream = new EventStream({
  url: `${API}/events`,
  headers: authHeaders,
  onEvent: onStreamEvent,
  onState: setLive,
  onUnauthorized: requireKey,
});

function refreshAll() {
  scheduleStats();
  scheduleQueues();
  scheduleLimits();
  scheduleTasks();
  if (state.selected) scheduleDetail();
}

// ---- start -------------------------------------------------------------------------------------------------

async function start() {
  $('#forget-key').hidden = !getKey();
  try {
    state.types = await api('GET', '/task-types');
  } catch (err) {
    reportError(err);
    if (err.status === 401) return;
  }
  const typeFilter = $('#filter-type');
  typeFilter.replaceChildren(h('option', { value: '' }, 'any'),
    ...state.types.map((t) => h('option', { value: t.name }, t.name)));
  if (state.filters.type && !state.types.some((t) => t.name === state.filters.type)) {
    typeFilter.append(h('option', { value: state.filters.type }, state.filters.type));
  }
  typeFilter.value = state.filters.type;
  stream.start();
  await Promise.all([refreshStats(), refreshTasks()]).catch(reportError);
  startSchedules(reportError, (name) => setFilter('schedule', name));
  startQueues(reportError, queuesSeen);
  startLimits(reportError);
  startCharts(reportError);
  startWebhooks(reportError);
  startBulk({ filters: () => state.filters, done: () => { scheduleTasks(); scheduleStats(); }, reportError });
  startCountdowns(() => { if (state.selected) scheduleDetail(); });
  if (state.selected) openDetail(state.selected);
  state.started = true;
  document.body.dataset.ready = 'true';
}

function wire() {
  for (const name of ['status', 'priority', 'type', 'queue']) {
    const select = $(`#filter-${name}`);
    setFilterSelect(name, state.filters[name]);
    select.addEventListener('change', () => setFilter(name, select.value));
  }
  renderScheduleFilter();
  const size = $('#page-size');
  size.value = String(state.limit);
  size.addEventListener('change', () => {
    state.limit = Number(size.value);
    resetPaging();
  });
  $('#clear-filters').addEventListener('click', () => {
    state.filters = { status: '', type: '', priority: '', queue: '', schedule: '' };
    for (const name of ['status', 'priority', 'type', 'queue']) $(`#filter-${name}`).value = '';
    renderScheduleFilter();
    resetPaging();
    scheduleStats();
  });
  $('#filter-schedule-clear').addEventListener('click', () => setFilter('schedule', ''));
  $('#page-newer').addEventListener('click', () => {
    if (state.page === 0) return;
    state.page -= 1;
    refreshTasks().catch(reportError);
  });
  $('#page-older').addEventListener('click', () => {
    if (!state.nextCursor) return;
    state.cursors[state.page + 1] = state.nextCursor;
    state.page += 1;
    refreshTasks().catch(reportError);
  });
  $('#new-task').addEventListener('click', openSubmit);
  $('#submit-type').addEventListener('change', buildPayloadForm);
  $('#toggle-raw').addEventListener('click', toggleRaw);
  $('#submit-form').addEventListener('submit', onSubmit);
  for (const btn of document.querySelectorAll('[data-close]')) {
    btn.addEventListener('click', () => btn.closest('dialog').close());
  }
  $('#key-form').addEventListener('submit', onKeySubmit);
  $('#key-dialog').addEventListener('cancel', (e) => e.preventDefault()); // no way around the key
  $('#forget-key').addEventListener('click', () => {
    clearKey();
    stream.stop();
    location.reload();
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && state.selected && !document.querySelector('dialog[open]')) closeDetail();
  });
  // A link to another task or filter followed in this tab (the page itself only ever replaces the hash).
  window.addEventListener('hashchange', () => {
    readHash();
    for (const name of ['status', 'priority', 'type', 'queue']) setFilterSelect(name, state.filters[name]);
    $('#page-size').value = String(state.limit);
    renderScheduleFilter();
    resetPaging();
    scheduleStats();
    if (state.selected) openDetail(state.selected);
    else closeDetail();
  });
  onUnauthorized(requireKey);
  // A slow safety net: if the event stream is down, the numbers still move.
  setInterval(() => {
    if (state.started && $('#live').dataset.state !== 'live' && !$('#key-dialog').open) refreshAll();
  }, 10000);
}

readHash();
wire();
start();
