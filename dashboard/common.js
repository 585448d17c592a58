// The dashboard's shared pieces: DOM helpers, the API client (the key from sessionStorage as
// a bearer token), downloads, and the poll loop that refreshes a page every POLL_MS until the
// user navigates away. Polling updates the DOM in place (rows keyed by id) so keyboard focus
// survives a refresh.

export const KEY_STORAGE = 'temper.apiKey';
const POLL_MS = 2000;
export const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
export const viewRoot = document.getElementById('view');
export const notice = document.getElementById('notice');
// Bumped on every navigation; a poll loop of an older page stops at its next tick.
let generation = 0;

/** A new page starts: poll loops of the previous one stop at their next tick. */
export function newPage() {
  generation += 1;
}

// ---------- small DOM helpers ----------

/** el('td', {class: 'num'}, 'text', node…): attributes, then children. */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name === 'text') node.textContent = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Sets text only when it changed, so polling does not churn the DOM. */
export function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

export function showNotice(message, isError) {
  notice.textContent = message;
  notice.classList.toggle('error', Boolean(isError));
}

export function time(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  const date = new Date(seconds * 1000);
  return el('time', { datetime: date.toISOString() }, date.toLocaleString());
}

export function number(value, digits) {
  if (value === null || value === undefined) return '—';
  if (typeof value !== 'number') return String(value);
  if (Number.isInteger(value)) return value.toLocaleString();
  return value.toFixed(digits === undefined ? 4 : digits);
}

export function statusBadge(status) {
  return el('span', { class: `status status-${status}`, 'data-status': status }, status);
}

export function tableWrap(label, table, extraClass) {
  // A scrollable region must be reachable by keyboard to scroll it.
  const classes = extraClass ? `table-wrap ${extraClass}` : 'table-wrap';
  return el('div', { class: classes, role: 'region', 'aria-label': label, tabindex: 0 }, table);
}

/** Axis ticks: three significant digits, exponents for learning rates and the like. */
export function tick(value) {
  if (value === 0) return '0';
  const size = Math.abs(value);
  if (size < 1e-3 || size >= 1e5) return value.toExponential(1);
  return String(Number(value.toPrecision(3)));
}

/** Names each cell after its column, for the stacked (card) layout on phones. */
function labelCells(tbody, row) {
  const head = tbody.parentElement && tbody.parentElement.tHead;
  if (!head || !head.rows.length) return;
  const names = [...head.rows[0].cells].map((cell) => cell.textContent);
  [...row.cells].forEach((cell, i) => {
    if (names[i]) cell.dataset.label = names[i];
  });
}

/**
 * Keeps tbody's rows in step with items: rows are keyed by key(item), built once by
 * build(item) and refreshed by update(row, item), so focused controls stay put.
 */
export function syncRows(tbody, items, key, build, update, emptyText, columns) {
  const wanted = new Map(items.map((item) => [key(item), item]));
  for (const row of [...tbody.rows]) {
    if (!wanted.has(row.dataset.key)) row.remove();
  }
  const existing = new Map([...tbody.rows].map((row) => [row.dataset.key, row]));
  let previous = null;
  for (const item of items) {
    const id = key(item);
    let row = existing.get(id);
    if (!row) {
      row = build(item);
      row.dataset.key = id;
      labelCells(tbody, row);
    }
    update(row, item);
    const expected = previous ? previous.nextSibling : tbody.firstChild;
    if (row !== expected) tbody.insertBefore(row, expected);
    previous = row;
  }
  if (items.length === 0) {
    tbody.replaceChildren(el('tr', {}, el('td', { colspan: columns, class: 'empty' }, emptyText)));
  }
}

// ---------- the API ----------

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export async function api(path, options) {
  const { method = 'GET', json, body } = options || {};
  const headers = authHeaders();
  let payload = body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body: payload });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error && data.error.message) || `${response.status} ${response.statusText}`;
    if (response.status === 401) {
      throw new ApiError(401, `${message} Enter an API key above.`);
    }
    throw new ApiError(response.status, message);
  }
  return data;
}

/** Downloads path (which needs the key, so no plain link) as filename. */
export async function download(path, filename) {
  showNotice(`Preparing ${filename}…`);
  try {
    const response = await fetch(path, { headers: authHeaders() });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        message = (await response.json()).error.message;
      } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, message);
    }
    const url = URL.createObjectURL(await response.blob());
    const link = el('a', { href: url, download: filename });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    showNotice(`Downloaded ${filename}.`);
  } catch (error) {
    showNotice(`Download failed: ${error.message}`, true);
  }
}

/** Runs load() now and every POLL_MS until the page changes or load() returns false. */
export function poll(load) {
  const mine = generation;
  const step = async () => {
    if (mine !== generation) return;
    let again = true;
    try {
      again = (await load()) !== false;
      if (notice.classList.contains('error') && notice.dataset.source === 'poll') showNotice('');
    } catch (error) {
      if (mine !== generation) return;
      showNotice(error.message, true);
      notice.dataset.source = 'poll';
    }
    if (again && mine === generation) setTimeout(step, POLL_MS);
  };
  step();
}

export function progressCell(job, progress) {
  const percent = job.status === 'succeeded'
    ? 100
    : progress && progress.total_steps > 0 ? Math.floor((100 * progress.step) / progress.total_steps) : null;
  const label = percent === null ? '—' : `${percent}\u00a0%`;
  const bar = el('progress', { max: 100, value: percent === null ? 0 : percent, 'aria-label': `progress ${label}` });
  return { percent, node: el('span', { class: 'progress' }, bar, el('span', {}, label)) };
}
