// A payload form generated from a task type's JSON schema (as pydantic writes it).
// Simple fields get inputs; anything complex gets a JSON textarea; the whole payload can be edited as JSON.

import { h } from './dom.js';

export class FieldError extends Error {
  constructor(field, message) {
    super(`${field}: ${message}`);
    this.field = field;
  }
}

function resolve(schema, root) {
  let s = schema || {};
  for (let i = 0; i < 10 && s.$ref; i += 1) {
    const name = s.$ref.split('/').pop();
    s = { ...((root.$defs || root.definitions || {})[name] || {}), ...s, $ref: undefined };
  }
  return s;
}

function variants(schema) {
  // The non-null alternatives of anyOf/oneOf, and whether null is allowed.
  const alts = schema.anyOf || schema.oneOf;
  if (alts) {
    const nonNull = alts.filter((a) => a.type !== 'null');
    return { alts: nonNull, nullable: nonNull.length !== alts.length };
  }
  if (Array.isArray(schema.type)) {
    const types = schema.type.filter((t) => t !== 'null');
    return { alts: types.map((type) => ({ ...schema, type })), nullable: types.length !== schema.type.length };
  }
  return { alts: [schema], nullable: false };
}

function kindOf(schema, root) {
  const { alts, nullable } = variants(resolve(schema, root));
  const resolved = alts.map((a) => resolve(a, root));
  const types = new Set(resolved.map((a) => a.type));
  let kind = 'json';
  if (resolved.length === 1 && resolved[0].enum) kind = 'enum';
  else if (types.size && [...types].every((t) => t === 'integer' || t === 'number')) {
    kind = types.has('number') ? 'number' : 'integer';
  } else if (types.size === 1 && types.has('string')) kind = resolved[0].maxLength > 1000 ? 'text' : 'string';
  else if (types.size === 1 && types.has('boolean')) kind = 'boolean';
  else if (types.size === 1 && types.has('array') && resolved.length === 1) {
    const a = resolved[0];
    const item = a.items ? resolve(a.items, root) : null;
    if (!a.prefixItems && item && ['number', 'integer'].includes(item.type)) kind = 'numbers';
    else if (!a.prefixItems && item && item.type === 'string') kind = 'strings';
  }
  return { kind, nullable, schema: resolved[0] || {} };
}

export function example(schema, root, depth = 0) {
  const s = resolve(schema, root);
  if (depth > 4) return null;
  if (s.examples && s.examples.length) return s.examples[0];
  if (s.default !== undefined) return s.default;
  const { alts } = variants(s);
  const a = resolve(alts[0] || {}, root);
  if (a.enum) return a.enum[0];
  switch (a.type) {
    case 'integer': return a.minimum ?? 1;
    case 'number': return a.minimum ?? 1.5;
    case 'string': return 'text';
    case 'boolean': return false;
    case 'array':
      if (a.prefixItems) return [a.prefixItems.map((p) => example(p, root, depth + 1))];
      return a.items ? [example(a.items, root, depth + 1), example(a.items, root, depth + 1)] : [];
    case 'object': {
      const out = {};
      for (const [k, v] of Object.entries(a.properties || {})) {
        if ((a.required || []).includes(k)) out[k] = example(v, root, depth + 1);
      }
      return out;
    }
    default: return null;
  }
}

function describe(schema) {
  const parts = [];
  if (schema.description) parts.push(schema.description);
  const range = [];
  if (schema.minimum !== undefined) range.push(`≥ ${schema.minimum}`);
  if (schema.exclusiveMinimum !== undefined) range.push(`> ${schema.exclusiveMinimum}`);
  if (schema.maximum !== undefined) range.push(`≤ ${schema.maximum}`);
  if (schema.exclusiveMaximum !== undefined) range.push(`< ${schema.exclusiveMaximum}`);
  if (schema.minItems !== undefined) range.push(`at least ${schema.minItems} items`);
  if (schema.maxLength !== undefined) range.push(`at most ${schema.maxLength} characters`);
  if (range.length) parts.push(range.join(', '));
  return parts.join(' · ');
}

function numberAttrs(s, kind) {
  return {
    type: 'number',
    step: kind === 'integer' ? '1' : 'any',
    min: s.minimum ?? s.exclusiveMinimum,
    max: s.maximum ?? s.exclusiveMaximum,
  };
}

function buildField(name, propSchema, root, required) {
  const { kind, nullable, schema } = kindOf(propSchema, root);
  const top = resolve(propSchema, root);
  const id = `payload-${name}`;
  const label = top.title || schema.title || name;
  const hintText = describe({ ...schema, ...top });
  const dflt = top.default !== undefined ? top.default : undefined;
  const common = { id, name: `payload.${name}`, 'aria-describedby': `${id}-hint` };
  let input;
  switch (kind) {
    case 'integer':
    case 'number':
      input = h('input', { ...common, ...numberAttrs(schema, kind), value: dflt ?? '' });
      break;
    case 'boolean':
      input = h('input', { ...common, type: 'checkbox', checked: Boolean(dflt) });
      break;
    case 'enum':
      input = h('select', common, required ? null : h('option', { value: '' }, '—'),
        schema.enum.map((v) => h('option', { value: JSON.stringify(v), selected: v === dflt }, String(v))));
      break;
    case 'string':
      input = h('input', { ...common, type: 'text', value: dflt ?? '', maxlength: schema.maxLength });
      break;
    case 'text':
      input = h('textarea', { ...common, rows: 4, value: dflt ?? '' });
      break;
    case 'numbers':
      input = h('input', { ...common, type: 'text', placeholder: 'comma-separated numbers, e.g. 1, 2, 3',
        value: Array.isArray(dflt) ? dflt.join(', ') : '' });
      break;
    case 'strings':
      input = h('textarea', { ...common, rows: 3, placeholder: 'one per line',
        value: Array.isArray(dflt) ? dflt.join('\n') : '' });
      break;
    default:
      input = h('textarea', { ...common, rows: 3, class: 'code', spellcheck: 'false',
        placeholder: JSON.stringify(example(propSchema, root)),
        value: dflt !== undefined ? JSON.stringify(dflt) : '' });
  }
  const typeHint = { json: 'JSON', numbers: 'list', strings: 'list' }[kind];
  const el = h('div', { class: `field f-${kind}`, dataset: { field: name } },
    h('label', { for: id }, label, required ? h('span', { class: 'req', title: 'required' }, ' *') : null,
      typeHint ? h('span', { class: 'kind' }, typeHint) : null),
    input,
    h('div', { class: 'hint', id: `${id}-hint` }, hintText),
    h('div', { class: 'field-error', hidden: true }));
  return { name, kind, nullable, required, el, input };
}

function readField(f) {
  const { input, kind, name } = f;
  if (kind === 'boolean') return { set: true, value: input.checked };
  const raw = input.value.trim();
  if (raw === '') {
    if (f.required) throw new FieldError(name, 'required');
    return { set: false };
  }
  switch (kind) {
    case 'integer':
    case 'number': {
      const n = Number(raw);
      if (!Number.isFinite(n)) throw new FieldError(name, 'not a number');
      if (kind === 'integer' && !Number.isInteger(n)) throw new FieldError(name, 'must be a whole number');
      return { set: true, value: n };
    }
    case 'enum': return { set: true, value: JSON.parse(raw) };
    case 'string':
    case 'text': return { set: true, value: input.value };
    case 'numbers': {
      const items = raw.split(/[\s,;]+/).filter(Boolean).map(Number);
      if (items.some((n) => !Number.isFinite(n))) throw new FieldError(name, 'a list of numbers, e.g. 1, 2, 3');
      return { set: true, value: items };
    }
    case 'strings': return { set: true, value: input.value.split('\n').filter((s) => s !== '') };
    default:
      try {
        return { set: true, value: JSON.parse(raw) };
      } catch {
        throw new FieldError(name, 'not valid JSON');
      }
  }
}

function writeField(f, value) {
  const { input, kind } = f;
  if (value === undefined || value === null) {
    if (kind === 'boolean') input.checked = false;
    else input.value = '';
    return;
  }
  switch (kind) {
    case 'boolean': input.checked = Boolean(value); break;
    case 'enum': input.value = JSON.stringify(value); break;
    case 'string':
    case 'text': input.value = typeof value === 'string' ? value : JSON.stringify(value); break;
    case 'integer':
    case 'number': input.value = String(value); break;
    case 'numbers': input.value = Array.isArray(value) ? value.join(', ') : JSON.stringify(value); break;
    case 'strings': input.value = Array.isArray(value) ? value.join('\n') : JSON.stringify(value); break;
    default: input.value = JSON.stringify(value);
  }
}

export class PayloadForm {
  constructor(container, schema) {
    this.container = container;
    this.schema = schema || {};
    const root = this.schema;
    const required = new Set(root.required || []);
    this.fields = Object.entries(root.properties || {}).map(
      ([name, prop]) => buildField(name, prop, root, required.has(name)));
    this.container.replaceChildren(...this.fields.map((f) => f.el));
    if (!this.fields.length) {
      this.container.append(h('p', { class: 'hint' }, 'This type takes no payload fields.'));
    }
  }

  read() {
    const out = {};
    for (const f of this.fields) {
      const { set, value } = readField(f);
      if (set) out[f.name] = value;
    }
    return out;
  }

  readLenient() {
    // What can be read: an incomplete or invalid field is left out instead of failing.
    const out = {};
    for (const f of this.fields) {
      try {
        const { set, value } = readField(f);
        if (set) out[f.name] = value;
      } catch {
        // left out
      }
    }
    return out;
  }

  fill(payload) {
    for (const f of this.fields) writeField(f, payload ? payload[f.name] : undefined);
  }

  clearErrors() {
    for (const f of this.fields) {
      f.el.classList.remove('invalid');
      const box = f.el.querySelector('.field-error');
      box.hidden = true;
      box.textContent = '';
    }
  }

  showError(name, message) {
    const f = this.fields.find((x) => x.name === name);
    if (!f) return false;
    f.el.classList.add('invalid');
    const box = f.el.querySelector('.field-error');
    box.textContent = box.textContent ? `${box.textContent}; ${message}` : message;
    box.hidden = false;
    return true;
  }
}
