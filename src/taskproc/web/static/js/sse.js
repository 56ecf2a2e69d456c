// Server-Sent Events over fetch(): EventSource can't send an Authorization header, fetch can.
// Parses the text/event-stream format, reconnects with backoff and resumes with Last-Event-ID.

const STALL_MS = 45000; // the server sends a comment at least every 15 s; silence this long means a dead link

export function parseStream(onMessage) {
  // Returns push(chunk): feed decoded text, get onMessage({event, data, id}) per complete message.
  let buffer = '';
  let data = [];
  let event = '';
  let id = null;
  const state = { retry: null, lastEventId: null };

  function line(text) {
    if (text === '') {
      if (id !== null) state.lastEventId = id;
      if (data.length) onMessage({ event: event || 'message', data: data.join('\n'), id: state.lastEventId });
      data = [];
      event = '';
      id = null;
      return;
    }
    if (text.startsWith(':')) return;
    const colon = text.indexOf(':');
    const field = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data.push(value);
    else if (field === 'event') event = value;
    else if (field === 'id' && !value.includes('\0')) id = value;
    else if (field === 'retry' && /^\d+$/.test(value)) state.retry = Number(value);
  }

  function push(chunk) {
    buffer += chunk;
    // A trailing CR may be the first half of CRLF: keep it for the next chunk.
    const keepCR = buffer.endsWith('\r');
    const lines = (keepCR ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
    buffer = lines.pop() + (keepCR ? '\r' : '');
    for (const l of lines) line(l);
  }

  return { push, state };
}

export class EventStream {
  constructor({ url, headers, onEvent, onState, onUnauthorized }) {
    this.url = url;
    this.headers = headers; // () => object
    this.onEvent = onEvent;
    this.onState = onState || (() => {});
    this.onUnauthorized = onUnauthorized || (() => {});
    this.lastEventId = null;
    this.retryMs = 2000;
    this.failures = 0;
    this.running = false;
    this.controller = null;
    this.generation = 0; // a stopped loop must not carry on if start() comes before it noticed
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.generation += 1;
    this.loop(this.generation);
  }

  stop() {
    this.running = false;
    if (this.controller) this.controller.abort();
  }

  active(generation) {
    return this.running && this.generation === generation;
  }

  async loop(generation) {
    while (this.active(generation)) {
      this.controller = new AbortController();
      const { signal } = this.controller;
      try {
        this.onState(this.failures ? 'reconnecting' : 'connecting');
        const headers = { Accept: 'text/event-stream', ...this.headers() };
        if (this.lastEventId !== null) headers['Last-Event-ID'] = this.lastEventId;
        const res = await fetch(this.url, { headers, signal, cache: 'no-store' });
        if (!this.active(generation)) return;
        if (res.status === 401) {
          this.running = false;
          this.onState('offline');
          this.onUnauthorized();
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        this.onState('live');
        this.failures = 0;
        await this.read(res.body, this.controller);
      } catch (err) {
        if (!this.active(generation)) return;
        if (err && err.name !== 'AbortError') console.debug('event stream:', err.message);
      }
      if (!this.active(generation)) return;
      this.failures += 1;
      this.onState('reconnecting');
      const delay = Math.min(10000, this.retryMs * Math.min(4, 2 ** (this.failures - 1)));
      await new Promise((resolve) => setTimeout(resolve, delay * (0.75 + Math.random() * 0.5)));
    }
  }

  async read(body, controller) {
    const parser = parseStream((msg) => {
      if (msg.id !== null) this.lastEventId = msg.id;
      let data = null;
      try {
        data = JSON.parse(msg.data);
      } catch {
        data = msg.data;
      }
      this.onEvent(msg.event, data, msg.id);
    });
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let stall = setTimeout(() => controller.abort(), STALL_MS);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        clearTimeout(stall);
        stall = setTimeout(() => controller.abort(), STALL_MS);
        parser.push(value);
        if (parser.state.retry !== null) this.retryMs = parser.state.retry;
      }
    } finally {
      clearTimeout(stall);
    }
  }
}
