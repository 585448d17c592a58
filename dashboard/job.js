// The job page: facts and controls, loss / metric / learning-rate charts (uPlot, loaded as a
// classic script before the modules), the report (confusion matrix heatmap and per-class
// scores for classifiers), checkpoints, result files, hyperparameters and events, all from
// GET /v1/dashboard/jobs/{id} polled until the job ends.
/* global uPlot */
import {
  el,
  setText,
  showNotice,
  time,
  number,
  statusBadge,
  tableWrap,
  tick,
  syncRows,
  api,
  download,
  poll,
  progressCell,
  viewRoot,
  notice,
  TERMINAL,
} from './common.js';

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

export function jobPage(id) {
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
