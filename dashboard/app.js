// temper dashboard: plain JS, no build step. Pages are hash routes (#/jobs, #/jobs/<id>,
// #/files, #/models[/<model>]); data comes from /v1/dashboard/* (views through the server's
// JobService) polled every POLL_MS, and actions call the OpenAI routes. Polling updates the
// DOM in place (rows keyed by id) so keyboard focus survives a refresh.
'use strict';

(() => {
  const KEY_STORAGE = 'temper.apiKey';
  const POLL_MS = 2000;
  const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
  const REPORT_FILENAMES = new Set([
    'classification_report.json', 'squad_report.json', 'training_report.json',
  ]);
  const viewRoot = document.getElementById('view');
  const notice = document.getElementById('notice');
  // Bumped on every navigation; a poll loop of an older page stops at its next tick.
  let generation = 0;

  // ---------- small DOM helpers ----------

  /** el('td', {class: 'num'}, 'text', node…): attributes, then children. */
  function el(tag, attrs, ...children) {
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
  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function showNotice(message, isError) {
    notice.textContent = message;
    notice.classList.toggle('error', Boolean(isError));
  }

  function time(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    const date = new Date(seconds * 1000);
    return el('time', { datetime: date.toISOString() }, date.toLocaleString());
  }

  function number(value, digits) {
    if (value === null || value === undefined) return '—';
    if (typeof value !== 'number') return String(value);
    if (Number.isInteger(value)) return value.toLocaleString();
    return value.toFixed(digits === undefined ? 4 : digits);
  }

  function statusBadge(status) {
    return el('span', { class: `status status-${status}`, 'data-status': status }, status);
  }

  function tableWrap(label, table, extraClass) {
    // A scrollable region must be reachable by keyboard to scroll it.
    const classes = extraClass ? `table-wrap ${extraClass}` : 'table-wrap';
    return el('div', { class: classes, role: 'region', 'aria-label': label, tabindex: 0 }, table);
  }

  /** Axis ticks: three significant digits, exponents for learning rates and the like. */
  function tick(value) {
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
  function syncRows(tbody, items, key, build, update, emptyText, columns) {
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

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function authHeaders() {
    const key = sessionStorage.getItem(KEY_STORAGE);
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  async function api(path, options) {
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
  async function download(path, filename) {
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
  function poll(load) {
    const mine = generation;
    const tick = async () => {
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
      if (again && mine === generation) setTimeout(tick, POLL_MS);
    };
    tick();
  }

  // ---------- the key ----------

  function renderKeyState() {
    const state = document.getElementById('key-state');
    state.textContent = sessionStorage.getItem(KEY_STORAGE) ? 'key set for this tab' : 'no key set';
  }

  document.getElementById('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = document.getElementById('api-key');
    const key = input.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    input.value = '';
    renderKeyState();
    route();
    showNotice(key ? 'Key saved for this tab.' : 'Type a key first.', !key);
  });
  document.getElementById('forget-key').addEventListener('click', () => {
    sessionStorage.removeItem(KEY_STORAGE);
    renderKeyState();
    route();
    showNotice('Key forgotten.');
  });

  // ---------- jobs page ----------

  function progressCell(job, progress) {
    const percent = job.status === 'succeeded'
      ? 100
      : progress && progress.total_steps > 0 ? Math.floor((100 * progress.step) / progress.total_steps) : null;
    const label = percent === null ? '—' : `${percent}\u00a0%`;
    const bar = el('progress', { max: 100, value: percent === null ? 0 : percent, 'aria-label': `progress ${label}` });
    return { percent, node: el('span', { class: 'progress' }, bar, el('span', {}, label)) };
  }

  function jobsPage() {
    const tbody = el('tbody');
    const more = el('p', { class: 'empty' });
    viewRoot.replaceChildren(
      el('h1', { tabindex: -1 }, 'Fine-tuning jobs'),
      tableWrap('Jobs', el('table', { class: 'jobs', 'data-testid': 'jobs-table' },
        el('caption', {}, 'Newest first; updates every 2 seconds.'),
        el('thead', {}, el('tr', {},
          el('th', { scope: 'col' }, 'Job'),
          el('th', { scope: 'col' }, 'Status'),
          el('th', { scope: 'col', class: 'optional' }, 'Model'),
          el('th', { scope: 'col' }, 'Progress'),
          el('th', { scope: 'col', class: 'num optional' }, 'Trained tokens'),
          el('th', { scope: 'col', class: 'optional' }, 'Created'),
          el('th', { scope: 'col', class: 'optional' }, 'Finished'))),
        tbody)),
      more,
    );
    poll(async () => {
      const list = await api('/v1/dashboard/jobs');
      syncRows(tbody, list.data, (item) => item.job.id,
        (item) => el('tr', {},
          el('td', {}, el('a', { href: `#/jobs/${encodeURIComponent(item.job.id)}` }, el('code', {}, item.job.id))),
          el('td', { class: 'status-cell' }),
          el('td', { class: 'optional' }, el('code', {}, item.job.model)),
          el('td', { class: 'progress-cell' }),
          el('td', { class: 'num optional tokens-cell' }),
          el('td', { class: 'optional' }, time(item.job.created_at)),
          el('td', { class: 'optional finished-cell' })),
        (row, item) => {
          const { job, progress } = item;
          row.dataset.status = job.status;
          const [status, progressTd, tokens, finished] = ['status-cell', 'progress-cell', 'tokens-cell', 'finished-cell']
            .map((name) => row.querySelector(`.${name}`));
          if (status.dataset.status !== job.status) {
            status.dataset.status = job.status;
            status.replaceChildren(statusBadge(job.status));
          }
          const cell = progressCell(job, progress);
          if (progressTd.dataset.percent !== String(cell.percent)) {
            progressTd.dataset.percent = String(cell.percent);
            progressTd.replaceChildren(cell.node);
          }
          setText(tokens, number(job.trained_tokens));
          if (finished.dataset.at !== String(job.finished_at)) {
            finished.dataset.at = String(job.finished_at);
            finished.replaceChildren(time(job.finished_at));
          }
        },
        'No jobs yet: create one with POST /v1/fine_tuning/jobs.', 7);
      setText(more, list.has_more ? `Showing the newest ${list.limit} jobs.` : '');
    });
  }

  // ---------- one job ----------

  /** A uPlot line chart of some series against step, updated in place. */
  class Chart {
    constructor(title, names) {
      this.title = title;
      this.names = names;
      this.canvas = el('div', { class: 'chart-canvas' });
      this.summary = el('p', { class: 'chart-summary' });
      this.figure = el('figure', { class: 'chart', 'data-chart': title.toLowerCase().replace(/\s+/g, '-') },
        el('figcaption', {}, title), this.canvas, this.summary);
      this.plot = null;
      this.resizer = new ResizeObserver(() => {
        if (this.plot) this.plot.setSize(this.size());
      });
      this.resizer.observe(this.canvas);
    }

    size() {
      return { width: Math.max(240, this.canvas.clientWidth), height: 220 };
    }

    update(metrics, names) {
      if (names.length === 0) {
        // Nothing of this kind logged (yet): no empty axes, just the sentence.
        if (this.plot) this.plot.destroy();
        this.plot = null;
        this.names = names;
        this.figure.dataset.pointCounts = '{}';
        setText(this.summary, 'No values yet.');
        return;
      }
      const data = [metrics.steps, ...names.map((name) => metrics.values[name])];
      if (!this.plot || names.join() !== this.names.join()) {
        if (this.plot) this.plot.destroy();
        this.names = names;
        const palette = ['#1f5fbf', '#c2410c', '#15803d', '#7e22ce', '#be123c', '#0e7490', '#a16207'];
        this.plot = new uPlot({
          ...this.size(),
          scales: { x: { time: false } },
          axes: [{ label: 'step' }, { size: 64, values: (_, splits) => splits.map(tick) }],
          series: [{ label: 'step' }, ...names.map((name, i) => ({
            label: name,
            stroke: palette[i % palette.length],
            width: 2,
            spanGaps: true,
            points: { show: true, size: 4 },
          }))],
        }, data, this.canvas);
      } else {
        this.plot.setData(data);
      }
      // What the chart holds, for people (the summary) and for tests (the attribute).
      const counts = {};
      const last = [];
      names.forEach((name, i) => {
        const values = this.plot.data[i + 1].filter((v) => v !== null && v !== undefined);
        counts[name] = values.length;
        if (values.length) last.push(`${name} ${number(values[values.length - 1])}`);
      });
      this.figure.dataset.pointCounts = JSON.stringify(counts);
      setText(this.summary, metrics.steps.length
        ? `${metrics.steps.length} steps logged; latest: ${last.join(', ')} (step ${metrics.steps[metrics.steps.length - 1]}).`
        : 'No metrics yet.');
    }
  }

  function isLoss(name) {
    return /loss/.test(name);
  }

  function factsList(pairs) {
    return el('dl', { class: 'facts' }, pairs.flatMap(([term, value]) => [el('dt', {}, term), el('dd', {}, value)]));
  }

  function hyperparameterTable(job) {
    const method = job.method || {};
    const knobs = (method[method.type] && method[method.type].hyperparameters) || {};
    const rows = Object.entries(knobs).map(([name, value]) => el('tr', {},
      el('th', { scope: 'row' }, el('code', {}, name)),
      el('td', {}, typeof value === 'object' ? JSON.stringify(value) : String(value))));
    return el('table', {},
      el('caption', {}, `Method: ${method.type || 'supervised'} ("auto" until the job resolves it)`),
      el('tbody', {}, rows));
  }

  function confusionMatrix(report) {
    const labels = report.labels;
    const matrix = report.confusion_matrix;
    const max = Math.max(1, ...matrix.flat());
    const head = el('tr', {}, el('td', {}), labels.map((label) => el('th', { scope: 'col' }, label)));
    const body = matrix.map((row, i) => el('tr', {},
      el('th', { scope: 'row' }, labels[i]),
      row.map((count, j) => {
        const share = count / max;
        // Light to dark blue; white text once the cell is dark enough to need it.
        const lightness = Math.round(96 - share * 62);
        return el('td', {
          class: 'cm-cell',
          'data-count': count,
          style: `background: hsl(214, 70%, ${lightness}%); color: ${lightness < 60 ? '#fff' : '#1c2230'}`,
          title: `true ${labels[i]}, predicted ${labels[j]}: ${count}`,
        }, String(count));
      })));
    return el('table', { class: 'confusion', 'data-testid': 'confusion-matrix' },
      el('caption', {}, 'Confusion matrix'),
      el('thead', {}, head), el('tbody', {}, body));
  }

  function classReport(report) {
    const scoreRow = (name, scores) => el('tr', {},
      el('th', { scope: 'row' }, name),
      ['precision', 'recall', 'f1-score'].map((key) => el('td', { class: 'num' }, number(scores[key], 3))),
      el('td', { class: 'num' }, number(scores.support)));
    const rows = report.labels.map((label) => scoreRow(label, report.per_class[label] || {}));
    if (report.macro_avg) rows.push(scoreRow('macro avg', report.macro_avg));
    if (report.weighted_avg) rows.push(scoreRow('weighted avg', report.weighted_avg));
    return el('table', { 'data-testid': 'class-report' },
      el('caption', {}, `Per-class report (accuracy ${number(report.accuracy, 4)}, best step ${report.step ?? '—'})`),
      el('thead', {}, el('tr', {}, ['Class', 'Precision', 'Recall', 'F1', 'Support']
        .map((name, i) => el('th', { scope: 'col', class: i ? 'num' : undefined }, name)))),
      el('tbody', {}, rows));
  }

  function reportSection(report) {
    const content = report.content || {};
    const parts = [el('h2', {}, 'Report'), el('p', {}, 'From result file ', el('code', {}, report.filename), '.')];
    if (Array.isArray(content.labels) && Array.isArray(content.confusion_matrix)) {
      parts.push(el('p', {}, `On the ${content.split || 'validation'} split, at the best step: rows are the true label, columns the predicted one.`));
      parts.push(tableWrap('Confusion matrix', confusionMatrix(content)));
      if (content.per_class) parts.push(tableWrap('Per-class report', classReport(content)));
    } else {
      parts.push(el('pre', { class: 'result' }, JSON.stringify(content, null, 2)));
    }
    return el('section', { class: 'panel', 'data-testid': 'report' }, parts);
  }

  function jobPage(id) {
    const heading = el('h1', { tabindex: -1 }, 'Job ', el('code', {}, id));
    const facts = el('div');
    const buttons = {};
    const actions = el('div', { class: 'actions' });
    for (const [action, label, style] of [['pause', 'Pause', 'secondary'], ['resume', 'Resume', 'secondary'], ['cancel', 'Cancel job', 'danger']]) {
      buttons[action] = el('button', {
        type: 'button', class: style, 'data-action': action,
        onclick: () => control(action),
      }, label);
      actions.append(buttons[action]);
    }
    const hyper = el('div');
    const charts = {
      loss: new Chart('Loss', []),
      metrics: new Chart('Metrics', []),
      lr: new Chart('Learning rate', []),
    };
    const chartGrid = el('div', { class: 'charts' }, charts.loss.figure, charts.metrics.figure, charts.lr.figure);
    const report = el('div');
    const checkpointBody = el('tbody');
    const resultList = el('ul');
    const eventBody = el('tbody');
    viewRoot.replaceChildren(
      el('p', {}, el('a', { href: '#/jobs' }, '← All jobs')),
      heading,
      el('section', { class: 'panel', 'aria-label': 'Summary' }, facts, actions),
      el('section', { class: 'panel' }, el('h2', {}, 'Training curves'), chartGrid),
      report,
      el('section', { class: 'panel' }, el('h2', {}, 'Checkpoints'),
        tableWrap('Checkpoints', el('table', { class: 'cards', 'data-testid': 'checkpoints' },
          el('thead', {}, el('tr', {}, ['Step', 'Model', 'Metrics', 'Use'].map((n) => el('th', { scope: 'col' }, n)))),
          checkpointBody))),
      el('section', { class: 'panel' }, el('h2', {}, 'Result files'), resultList),
      el('section', { class: 'panel' }, el('h2', {}, 'Hyperparameters'), hyper),
      el('section', { class: 'panel' }, el('h2', {}, 'Events'),
        el('p', {}, 'The newest 50, newest first.'),
        tableWrap('Events', el('table', { 'data-testid': 'events' },
          el('thead', {}, el('tr', {}, ['Time', 'Level', 'Message'].map((n) => el('th', { scope: 'col' }, n)))),
          eventBody), 'scroll')),
    );
    async function control(action) {
      try {
        const job = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/${action}`, { method: 'POST', json: {} });
        showNotice(`Job ${id}: ${action} accepted; status ${job.status}.`);
        notice.dataset.source = 'action';
        await refresh();
      } catch (error) {
        showNotice(`Could not ${action}: ${error.message}`, true);
        notice.dataset.source = 'action';
      }
    }

    async function refresh() {
      const view = await api(`/v1/dashboard/jobs/${encodeURIComponent(id)}`);
      render(view);
      // A finished job never changes again: one last render, then polling stops.
      return !TERMINAL.has(view.job.status);
    }

    function render(view) {
      const { job } = view;
      const jobKey = JSON.stringify([job.status, job.trained_tokens, job.finished_at, job.fine_tuned_model, view.progress, job.error]);
      if (facts.dataset.key !== jobKey) {
        facts.dataset.key = jobKey;
        const progress = progressCell(job, view.progress);
        facts.replaceChildren(factsList([
          ['Status', statusBadge(job.status)],
          ['Base model', el('code', {}, job.model)],
          ['Fine-tuned model', job.fine_tuned_model ? el('code', {}, job.fine_tuned_model) : '—'],
          ['Progress', view.progress
            ? el('span', {}, progress.node, ` step ${view.progress.step} of ${view.progress.total_steps}`)
            : progress.node],
          ['Trained tokens', number(job.trained_tokens)],
          ['Created', time(job.created_at)],
          ['Finished', time(job.finished_at)],
          ['Training file', el('code', {}, job.training_file)],
          ['Validation file', job.validation_file ? el('code', {}, job.validation_file) : '—'],
          ...(job.error && job.error.message ? [['Error', `${job.error.code || ''} ${job.error.message}`]] : []),
        ]));
      }
      for (const action of Object.keys(buttons)) {
        buttons[action].disabled = !view.actions[action];
      }
      const hyperKey = JSON.stringify(job.method);
      if (hyper.dataset.key !== hyperKey) {
        hyper.dataset.key = hyperKey;
        hyper.replaceChildren(tableWrap('Hyperparameters', hyperparameterTable(job)));
      }
      const names = Object.keys(view.metrics.values);
      charts.loss.update(view.metrics, names.filter(isLoss));
      charts.metrics.update(view.metrics, names.filter((n) => !isLoss(n) && n !== 'learning_rate'));
      charts.lr.update(view.metrics, names.filter((n) => n === 'learning_rate'));
      const reportKey = view.report ? view.report.file_id : '';
      if (report.dataset.key !== reportKey) {
        report.dataset.key = reportKey;
        report.replaceChildren(view.report ? reportSection(view.report) : '');
      }
      syncRows(checkpointBody, view.checkpoints, (c) => c.id,
        (c) => el('tr', {},
          el('td', { class: 'num' }, String(c.step_number)),
          el('td', {}, el('code', {}, c.fine_tuned_model_checkpoint)),
          el('td', {}, Object.entries(c.metrics).filter(([k]) => k !== 'step')
            .map(([k, v]) => `${k} ${number(v)}`).join(', ')),
          el('td', {}, el('div', { class: 'actions' },
            el('a', {
              class: 'button',
              href: `#/models/${encodeURIComponent(c.fine_tuned_model_checkpoint)}`,
              'aria-label': `Serve the step ${c.step_number} checkpoint in the playground`,
            }, 'Serve'),
            el('button', {
              type: 'button', class: 'secondary',
              'aria-label': `Download the step ${c.step_number} checkpoint`,
              onclick: () => download(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/download?step=${c.step_number}`,
                `${id}-step-${c.step_number}.tar`),
            }, 'Download')))),
        () => {}, 'No checkpoints yet.', 4);
      const filesKey = JSON.stringify([job.result_files, job.fine_tuned_model]);
      if (resultList.dataset.key !== filesKey) {
        resultList.dataset.key = filesKey;
        const items = job.result_files.map((fileId) => el('li', {},
          el('button', {
            type: 'button', class: 'secondary',
            onclick: () => download(`/v1/files/${encodeURIComponent(fileId)}/content`, fileId),
          }, `Download ${fileId}`)));
        if (job.fine_tuned_model) {
          items.push(el('li', {}, el('a', { class: 'button', href: `#/models/${encodeURIComponent(job.fine_tuned_model)}` }, 'Serve the final model'),
            ' ',
            el('button', {
              type: 'button', class: 'secondary',
              onclick: () => download(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/download`, `${id}-merged.tar`),
            }, 'Download the final model')));
        }
        resultList.replaceChildren(...(items.length ? items : [el('li', { class: 'empty' }, 'None yet: they appear when the job succeeds.')]));
      }
      syncRows(eventBody, view.events, (e) => e.id,
        (e) => el('tr', {}, el('td', {}, time(e.created_at)), el('td', {}, e.level), el('td', {}, e.message)),
        () => {}, 'No events.', 3);
    }

    poll(refresh);
  }

  // ---------- files ----------

  function filesPage() {
    const tbody = el('tbody');
    const fileInput = el('input', { id: 'upload-file', name: 'file', type: 'file', required: true });
    const purpose = el('select', { id: 'upload-purpose', name: 'purpose' },
      ['fine-tune', 'assistants', 'batch', 'vision', 'user_data', 'evals'].map((p) => el('option', { value: p }, p)));
    const form = el('form', { class: 'row', 'aria-label': 'Upload a file' },
      el('div', { class: 'field' }, el('label', { for: 'upload-file' }, 'File (JSONL or CSV)'), fileInput),
      el('div', { class: 'field' }, el('label', { for: 'upload-purpose' }, 'Purpose'), purpose),
      el('div', { class: 'field' }, el('button', { type: 'submit' }, 'Upload')));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!fileInput.files.length) {
        showNotice('Choose a file to upload.', true);
        return;
      }
      const body = new FormData();
      body.append('purpose', purpose.value);
      body.append('file', fileInput.files[0]);
      try {
        const file = await api('/v1/files', { method: 'POST', body });
        showNotice(`Uploaded ${file.filename} as ${file.id} (${file.status}).`);
        form.reset();
        await load();
      } catch (error) {
        showNotice(`Upload failed: ${error.message}`, true);
      }
    });

    async function remove(file) {
      if (!window.confirm(`Delete ${file.filename} (${file.id})?`)) return;
      try {
        await api(`/v1/files/${encodeURIComponent(file.id)}`, { method: 'DELETE' });
        showNotice(`Deleted ${file.id}.`);
        await load();
      } catch (error) {
        showNotice(`Could not delete ${file.id}: ${error.message}`, true);
      }
    }

    async function load() {
      const list = await api('/v1/files');
      syncRows(tbody, list.data, (f) => f.id,
        (f) => el('tr', {},
          el('td', {}, el('code', {}, f.id)),
          el('td', {}, f.filename),
          el('td', {}, f.purpose),
          el('td', { class: 'num' }, number(f.bytes)),
          el('td', {}, time(f.created_at)),
          el('td', { class: 'status-cell' }),
          el('td', { class: 'details-cell' }),
          el('td', {}, el('button', { type: 'button', class: 'danger', onclick: () => remove(f), 'aria-label': `Delete ${f.filename}` }, 'Delete'))),
        (row, f) => {
          const status = row.querySelector('.status-cell');
          if (status.dataset.status !== f.status) {
            status.dataset.status = f.status;
            status.replaceChildren(statusBadge(f.status));
          }
          setText(row.querySelector('.details-cell'), f.status_details || '');
        },
        'No files yet.', 8);
    }

    viewRoot.replaceChildren(
      el('h1', { tabindex: -1 }, 'Files'),
      el('section', { class: 'panel' }, el('h2', {}, 'Upload'), form),
      el('section', { class: 'panel' }, el('h2', {}, 'All files'),
        tableWrap('Files', el('table', { class: 'cards', 'data-testid': 'files-table' },
          el('thead', {}, el('tr', {}, ['ID', 'Name', 'Purpose', 'Bytes', 'Created', 'Validation', 'Error', 'Delete']
            .map((n) => el('th', { scope: 'col' }, n)))),
          tbody))),
    );
    poll(load);
  }

  // ---------- models ----------

  function modelsPage(selected) {
    const tbody = el('tbody');
    const modelSelect = el('select', { id: 'play-model', name: 'model', required: true });
    const input = el('textarea', { id: 'play-input', name: 'input', required: true, rows: 4 });
    const mode = (value, label, checked) => el('label', {},
      el('input', { type: 'radio', name: 'mode', value, checked }), ` ${label}`);
    const result = el('div', { class: 'result', role: 'status', 'aria-live': 'polite', 'data-testid': 'play-result' }, 'No answer yet.');
    const form = el('form', { 'aria-label': 'Playground' },
      el('div', { class: 'field' }, el('label', { for: 'play-model' }, 'Model'), modelSelect),
      el('fieldset', {}, el('legend', {}, 'Ask as'),
        mode('chat', 'Chat (a prompt)', true), mode('classification', 'Classification (a text)', false)),
      el('div', { class: 'field' }, el('label', { for: 'play-input' }, 'Prompt or text'), input),
      el('button', { type: 'submit' }, 'Send'), result);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const model = modelSelect.value;
      const asChat = form.elements.mode.value === 'chat';
      setText(result, 'Waiting…');
      try {
        if (asChat) {
          const reply = await api('/v1/chat/completions', {
            method: 'POST',
            json: { model, messages: [{ role: 'user', content: input.value }], max_tokens: 128 },
          });
          setText(result, reply.choices[0].message.content);
        } else {
          const reply = await api('/v1/classifications', { method: 'POST', json: { model, input: [input.value] } });
          const top = reply.data[0];
          const scores = Object.entries(top.scores).map(([label, score]) => `${label}: ${number(score, 3)}`).join(', ');
          setText(result, `${top.label} (score ${number(top.score, 3)}); ${scores}`);
        }
      } catch (error) {
        setText(result, `Error: ${error.message}`);
      }
    });

    function tryModel(id) {
      modelSelect.value = id;
      input.focus();
    }

    async function load() {
      const list = await api('/v1/models');
      const ids = list.data.map((m) => m.id);
      const optionsKey = ids.join('\n');
      if (modelSelect.dataset.key !== optionsKey) {
        const keep = modelSelect.value || selected;
        modelSelect.dataset.key = optionsKey;
        modelSelect.replaceChildren(...ids.map((id) => el('option', { value: id }, id)));
        if (keep && ids.includes(keep)) modelSelect.value = keep;
      }
      syncRows(tbody, list.data, (m) => m.id,
        (m) => el('tr', {},
          el('td', {}, el('code', {}, m.id)),
          el('td', {}, m.owned_by),
          el('td', {}, m.parent ? el('code', {}, m.parent) : '—'),
          el('td', {}, time(m.created)),
          el('td', {}, el('button', { type: 'button', class: 'secondary', onclick: () => tryModel(m.id), 'aria-label': `Try ${m.id}` }, 'Try'))),
        () => {}, 'No models.', 5);
    }

    viewRoot.replaceChildren(
      el('h1', { tabindex: -1 }, 'Models'),
      el('section', { class: 'panel' }, el('h2', {}, 'Playground'), form),
      el('section', { class: 'panel' }, el('h2', {}, 'Base and fine-tuned models'),
        tableWrap('Models', el('table', { class: 'cards', 'data-testid': 'models-table' },
          el('thead', {}, el('tr', {}, ['Model', 'Owner', 'Adapter over', 'Created', 'Playground'].map((n) => el('th', { scope: 'col' }, n)))),
          tbody))),
    );
    poll(async () => {
      await load();
      return false;
    });
  }

  // ---------- routing ----------

  function route() {
    generation += 1;
    const parts = (location.hash || '#/jobs').replace(/^#\/?/, '').split('/');
    const [section, arg] = [parts[0] || 'jobs', parts.slice(1).join('/')];
    const page = ['jobs', 'files', 'models'].includes(section) ? section : 'jobs';
    for (const link of document.querySelectorAll('nav a[data-section]')) {
      if (link.dataset.section === page) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    // A message belongs to the page it was shown on.
    showNotice('');
    if (page === 'jobs' && arg) jobPage(decodeURIComponent(arg));
    else if (page === 'files') filesPage();
    else if (page === 'models') modelsPage(arg ? decodeURIComponent(arg) : '');
    else jobsPage();
    document.title = `temper · ${page}`;
  }

  window.addEventListener('hashchange', () => {
    route();
    // Move focus to the new page's heading so keyboard and screen reader users start there.
    const heading = viewRoot.querySelector('h1');
    if (heading) heading.focus();
  });
  renderKeyState();
  route();
})();
