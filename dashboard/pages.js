// The jobs list (GET /v1/dashboard/jobs, polled), the new-job form (estimate with
// POST /v1/fine_tuning/estimates, then create), the files page (upload, list, delete through
// /v1/files) and the models page (list and playground: chat completions or classifications).
import {
  el,
  setText,
  showNotice,
  time,
  number,
  statusBadge,
  tableWrap,
  syncRows,
  api,
  poll,
  progressCell,
  viewRoot,
} from './common.js';

export function jobsPage() {
  const tbody = el('tbody');
  const more = el('p', { class: 'empty' });
  viewRoot.replaceChildren(
    el('h1', { tabindex: -1 }, 'Fine-tuning jobs'),
    el('p', { class: 'actions page-actions' }, el('a', { class: 'button', href: '#/jobs/new' }, 'New job')),
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
      'No jobs yet: create one with New job above, or POST /v1/fine_tuning/jobs.', 7);
    setText(more, list.has_more ? `Showing the newest ${list.limit} jobs.` : '');
  });
}

// ---------- new job: estimate, then create ----------

/** 1536 → "1.5 KiB": binary units, as memory is sized. */
function bytes(value) {
  if (value === null || value === undefined) return '—';
  const units = [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]];
  for (const [unit, size] of units) {
    if (value >= size) return `${(value / size).toFixed(value >= 10 * size ? 0 : 1)} ${unit}`;
  }
  return `${value} B`;
}

/** 130 → "≈ 2 min": an estimate, so no more precision than a person plans with. */
function roughDuration(seconds) {
  if (seconds < 1) return '< 1 s';
  if (seconds < 60) return `≈ ${Math.round(seconds)} s`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `≈ ${minutes} min`;
  const [hours, rest] = [Math.floor(minutes / 60), minutes % 60];
  if (hours < 48) return rest ? `≈ ${hours} h ${rest} min` : `≈ ${hours} h`;
  return `≈ ${(hours / 24).toFixed(1)} days`;
}

/** 2.47e8 → "247 MFLOP": three significant digits and an SI prefix. */
function flops(value) {
  for (const [prefix, size] of [['P', 1e15], ['T', 1e12], ['G', 1e9], ['M', 1e6]]) {
    if (value >= size) return `${Number((value / size).toPrecision(3))} ${prefix}FLOP`;
  }
  return `${Math.round(value)} FLOP`;
}

function durationText(duration) {
  if (!duration) return 'unknown';
  const basis = duration.basis === 'history'
    ? `from ${duration.history_jobs} recent job${duration.history_jobs === 1 ? '' : 's'} at ${number(duration.per_second, 1)} ${duration.unit}/s`
    : `FLOPs model at ${flops(duration.assumed_flops_per_second)}/s`;
  return `${roughDuration(duration.seconds)} (${basis})`;
}

/** A number the test reads back: shown formatted, its exact value in data-value. */
function field(name, value) {
  return el('span', { 'data-field': name, 'data-value': value }, number(value));
}

function fitsBadge(fits) {
  const [text, style] = fits === true ? ['yes', 'fit-yes'] : fits === false ? ['no', 'fit-no'] : ['unknown', ''];
  return el('span', { class: `status ${style}`, 'data-fits': String(fits) }, text);
}

function deviceRow(device) {
  const memory = device.memory;
  return el('tr', { 'data-device': device.device },
    el('td', { 'data-label': 'Device' }, el('code', {}, device.device)),
    el('td', { 'data-label': 'Peak memory' }, memory
      ? [el('strong', {}, bytes(memory.total_bytes)), el('div', { class: 'breakdown' },
        `weights ${bytes(memory.weights_bytes)} · optimizer ${bytes(memory.optimizer_bytes)} · activations ${bytes(memory.activations_bytes)}`)]
      : el('span', { class: 'error-text' }, device.error || 'unknown')),
    el('td', { 'data-label': 'Available' }, memory && memory.available_bytes !== null ? bytes(memory.available_bytes) : 'unknown'),
    el('td', { 'data-label': 'Fits' }, fitsBadge(memory ? memory.fits : null)),
    el('td', { 'data-label': 'Duration' }, durationText(device.duration)));
}

function estimateView(estimate) {
  const method = estimate.method || {};
  const knobs = (method[method.type] && method[method.type].hyperparameters) || {};
  const list = (items, empty) => (items.length
    ? el('ul', {}, items.map((item) => el('li', {}, item)))
    : el('p', { class: 'empty' }, empty));
  return [
    el('dl', { class: 'facts' },
      el('dt', {}, 'Task'), el('dd', {}, el('span', { 'data-field': 'task' }, estimate.task), ' on ', el('code', {}, estimate.model)),
      el('dt', {}, 'Examples'), el('dd', {}, field('training_examples', estimate.training_examples), ' training, ',
        field('validation_examples', estimate.validation_examples), ' validation'),
      el('dt', {}, 'Tokens'), el('dd', {}, field('tokens_per_epoch', estimate.tokens_per_epoch), ' per epoch, ',
        field('trained_tokens', estimate.trained_tokens), ' in all'),
      el('dt', {}, 'Steps'), el('dd', {}, field('steps_per_epoch', estimate.steps_per_epoch), ' per epoch × ',
        field('n_epochs', estimate.n_epochs), ' epochs = ', field('total_steps', estimate.total_steps)),
      el('dt', {}, 'Training FLOPs'), el('dd', {}, estimate.training_flops === null ? '—' : flops(estimate.training_flops))),
    el('h3', {}, 'Devices'),
    tableWrap('Devices', el('table', { class: 'cards', 'data-testid': 'estimate-devices' },
      el('thead', {}, el('tr', {}, ['Device', 'Peak memory', 'Available', 'Fits', 'Duration'].map((n) => el('th', { scope: 'col' }, n)))),
      el('tbody', {}, estimate.devices.map(deviceRow)))),
    el('h3', {}, `Hyperparameters (${method.type || 'supervised'}, resolved)`),
    el('dl', { class: 'facts', 'data-testid': 'estimate-hyperparameters' }, Object.entries(knobs).flatMap(([name, value]) => [
      el('dt', {}, el('code', {}, name)), el('dd', {}, typeof value === 'object' ? JSON.stringify(value) : String(value))])),
    el('h3', {}, 'Warnings'), list(estimate.warnings, 'None.'),
    el('h3', {}, 'What "auto" became'), list(estimate.auto_choices, 'Nothing was left to "auto".'),
  ];
}

export function newJobPage() {
  const input = (id, attrs) => el('input', { id, name: id.replace(/^new-/, '').replace(/-/g, '_'), ...attrs });
  const modelList = el('datalist', { id: 'new-model-list' });
  const model = input('new-model', { required: true, list: 'new-model-list', spellcheck: 'false', placeholder: 'org/model' });
  const trainingFile = el('select', { id: 'new-training-file', name: 'training_file', required: true });
  const validationFile = el('select', { id: 'new-validation-file', name: 'validation_file' });
  const methodType = el('select', { id: 'new-method', name: 'method' },
    el('option', { value: 'supervised' }, 'supervised'), el('option', { value: 'dpo' }, 'dpo'));
  const whole = { type: 'number', min: 1, step: 1, placeholder: 'auto' };
  const knobs = {
    n_epochs: input('new-n-epochs', whole),
    batch_size: input('new-batch-size', whole),
    learning_rate_multiplier: input('new-learning-rate-multiplier', { type: 'number', min: 0, step: 'any', placeholder: 'auto' }),
    lora_rank: input('new-lora-rank', { ...whole, placeholder: 'server default' }),
  };
  // DPO's own knob: only a dpo job has it (the server refuses it on a supervised one).
  const beta = input('new-beta', { type: 'number', min: 0, step: 'any', placeholder: 'auto' });
  const seed = input('new-seed', { type: 'number', step: 1, placeholder: 'random' });
  const suffix = input('new-suffix', { maxlength: 64, spellcheck: 'false', placeholder: 'optional' });
  const labelled = (label, control, hint, wide) => el('div', { class: wide ? 'field wide' : 'field' }, el('label', { for: control.id }, label), control,
    hint ? el('span', { class: 'hint' }, hint) : null);
  const betaField = labelled('DPO beta', beta, 'blank: auto');
  const showBeta = () => { betaField.hidden = methodType.value !== 'dpo'; };
  methodType.addEventListener('change', showBeta);
  showBeta();
  const estimateButton = el('button', { type: 'submit' }, 'Estimate');
  const createButton = el('button', { type: 'button', disabled: true, 'aria-describedby': 'create-hint' }, 'Create job');
  const result = el('section', {
    class: 'panel', 'data-testid': 'estimate', 'data-state': 'none', 'aria-live': 'polite', 'aria-label': 'Estimate',
  }, el('h2', {}, 'Estimate'), el('p', { class: 'empty' }, 'No estimate yet.'));
  const form = el('form', { 'aria-label': 'New fine-tuning job' },
    el('div', { class: 'form-grid' },
      labelled('Base model', model), labelled('Method', methodType),
      labelled('Training file', trainingFile, null, true), labelled('Validation file', validationFile, null, true),
      labelled('Epochs (n_epochs)', knobs.n_epochs, 'blank: auto'),
      labelled('Batch size', knobs.batch_size, 'blank: auto'),
      labelled('Learning rate multiplier', knobs.learning_rate_multiplier, 'blank: auto'),
      labelled('LoRA rank', knobs.lora_rank, 'blank: the server\'s default'),
      betaField,
      labelled('Seed', seed, 'blank: the server picks one'),
      labelled('Suffix', suffix, 'part of the fine-tuned model\'s name')),
    modelList,
    el('div', { class: 'actions' }, estimateButton, createButton),
    el('p', { id: 'create-hint', class: 'hint' }, 'Create is enabled once an estimate of exactly these values succeeded.'));

  /** The job create body of the form's current values (blank knobs are "auto": left out). */
  function body() {
    const hyperparameters = {};
    for (const [name, control] of Object.entries(knobs)) {
      if (control.value.trim() !== '') hyperparameters[name] = Number(control.value);
    }
    if (methodType.value === 'dpo' && beta.value.trim() !== '') hyperparameters.beta = Number(beta.value);
    const job = {
      model: model.value.trim(),
      training_file: trainingFile.value,
      method: { type: methodType.value, [methodType.value]: { hyperparameters } },
    };
    if (validationFile.value) job.validation_file = validationFile.value;
    if (suffix.value.trim()) job.suffix = suffix.value.trim();
    if (seed.value.trim() !== '') job.seed = Number(seed.value);
    return job;
  }
  // The body the shown estimate answers; Create sends exactly it, and only while the form
  // still says the same.
  let estimated = null;
  // Each Estimate click counts; only the latest one's answer is shown.
  let asked = 0;
  const stale = el('p', { class: 'notice error', 'data-testid': 'estimate-stale', hidden: true },
    'The form changed since this estimate: estimate again to create the job.');
  function syncCreate() {
    const current = estimated !== null && JSON.stringify(body()) === estimated;
    createButton.disabled = !current;
    if (estimated === null) return;
    result.dataset.state = current ? 'ok' : 'stale';
    stale.hidden = current;
  }
  form.addEventListener('input', syncCreate);
  form.addEventListener('change', syncCreate);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const job = body();
    const key = JSON.stringify(job);
    asked += 1;
    const mine = asked;
    estimated = null;
    createButton.disabled = true;
    result.dataset.state = 'pending';
    result.replaceChildren(el('h2', {}, 'Estimate'), el('p', {}, 'Estimating…'));
    let shown;
    try {
      const estimate = await api('/v1/fine_tuning/estimates', { method: 'POST', json: job });
      if (mine !== asked) return;
      shown = estimateView(estimate);
      estimated = key;
    } catch (error) {
      if (mine !== asked) return;
      result.dataset.state = 'error';
      shown = [el('p', { class: 'notice error', 'data-testid': 'estimate-error' }, `Could not estimate: ${error.message}`)];
    }
    stale.hidden = true;
    result.replaceChildren(el('h2', {}, 'Estimate'), stale, ...shown);
    syncCreate();
  });

  createButton.addEventListener('click', async () => {
    if (estimated === null) return;
    createButton.disabled = true;
    try {
      const job = await api('/v1/fine_tuning/jobs', { method: 'POST', json: JSON.parse(estimated) });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      showNotice(`Could not create the job: ${error.message}`, true);
      syncCreate();
    }
  });

  viewRoot.replaceChildren(
    el('p', {}, el('a', { href: '#/jobs' }, '← All jobs')),
    el('h1', { tabindex: -1 }, 'New fine-tuning job'),
    el('section', { class: 'panel' }, form),
    result,
  );
  poll(async () => {
    const [models, files] = await Promise.all([api('/v1/models'), api('/v1/files')]);
    modelList.replaceChildren(...models.data.map((m) => el('option', { value: m.id })));
    const usable = files.data.filter((f) => f.purpose === 'fine-tune' && f.status === 'processed');
    const option = (f) => el('option', { value: f.id }, `${f.filename} (${f.id})`);
    trainingFile.replaceChildren(...(usable.length
      ? usable.map(option) : [el('option', { value: '' }, 'No processed fine-tune files: upload one on the Files page')]));
    validationFile.replaceChildren(el('option', { value: '' }, 'None'), ...usable.map(option));
    syncCreate();
    return false;
  });
}

// ---------- files ----------

export function filesPage() {
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

export function modelsPage(selected) {
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
