// temper dashboard: plain JS modules, no build step. Pages are hash routes (#/jobs,
// #/jobs/new, #/jobs/<id>, #/files, #/models[/<model>]); data comes from /v1/dashboard/* (views through the
// server's JobService), and actions call the OpenAI routes.
import {
  KEY_STORAGE, newPage, showNotice, viewRoot,
} from './common.js';
import { jobPage } from './job.js';
import {
  filesPage, jobsPage, modelsPage, newJobPage,
} from './pages.js';

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

// ---------- routing ----------

function route() {
  newPage();
  const parts = (location.hash || '#/jobs').replace(/^#\/?/, '').split('/');
  const [section, arg] = [parts[0] || 'jobs', parts.slice(1).join('/')];
  const page = ['jobs', 'files', 'models'].includes(section) ? section : 'jobs';
  for (const link of document.querySelectorAll('nav a[data-section]')) {
    if (link.dataset.section === page) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  // A message belongs to the page it was shown on.
  showNotice('');
  // No job id is `new` (ids start with ftjob-).
  if (page === 'jobs' && arg === 'new') newJobPage();
  else if (page === 'jobs' && arg) jobPage(decodeURIComponent(arg));
  else if (page === 'files') filesPage();
  else if (page === 'models') modelsPage(arg ? decodeURIComponent(arg) : '');
  else jobsPage();
  document.title = `temper · ${page === 'jobs' && arg === 'new' ? 'new job' : page}`;
}

window.addEventListener('hashchange', () => {
  route();
  // Move focus to the new page's heading so keyboard and screen reader users start there.
  const heading = viewRoot.querySelector('h1');
  if (heading) heading.focus();
});
renderKeyState();
route();
