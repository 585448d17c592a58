// The jobs list (GET /v1/dashboard/jobs, polled), the files page (upload, list, delete through
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
