// The dashboard in a real browser: Debian's chromium, headless, driven by playwright-core,
// against a running temper (scripts/browser-test.sh starts it with the tiny models and an
// API key, then runs this):
//
//   node tests/browser/dashboard.test.js BASE_URL API_KEY ARTIFACTS_DIR
//
// A blocker job keeps the one worker busy, so the classification job under test waits in
// `queued` and its Pause / Resume buttons act deterministically; the blocker is then
// cancelled with its Cancel button and the job trains to the end (with a validation file).
// The job under test is made with the New job form: its Estimate (checked against
// POST /v1/fine_tuning/estimates, and afterwards against the finished job's trained tokens,
// last step and resolved method) must succeed before Create is enabled, and an edit disables
// it again. The test checks the pages against the API: the jobs list, the loss chart's points against
// the metrics events with a train loss (counted on the OpenAI events route), the confusion
// matrix's cells against the validation file's size, the files page (upload, list, delete),
// the playground (a classification and a chat), keyboard reach, and no sideways scrolling on
// a phone; it saves screenshots at 1280×800 and 390×844 into ARTIFACTS_DIR.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');

const [baseUrl, apiKey, artifacts] = process.argv.slice(2);
if (!baseUrl || !apiKey || !artifacts) {
  console.error('usage: node dashboard.test.js BASE_URL API_KEY ARTIFACTS_DIR');
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// Generous guards for shared CI machines; nothing asserts a duration.
const JOB_TIMEOUT_MS = 300_000;
const UI_TIMEOUT_MS = 30_000;
const TRAIN_EXAMPLES = 48;
const VALID_EXAMPLES = 10;

// ---------- the API, as a client would call it ----------

async function api(method, route, body) {
  const headers = { Authorization: `Bearer ${apiKey}` };
  let payload;
  if (body instanceof FormData) {
    payload = body;
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const response = await fetch(new URL(route, baseUrl), { method, headers, body: payload });
  const data = await response.json();
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${JSON.stringify(data)}`);
  return data;
}

function sentimentJsonl(n, offset) {
  const lines = [];
  for (let i = 0; i < n; i += 1) {
    const positive = i % 2 === 0;
    const text = positive ? `good great happy film ${offset + i}` : `bad awful sad film ${offset + i}`;
    lines.push(JSON.stringify({ text, label: positive ? 'positive' : 'negative' }));
  }
  return `${lines.join('\n')}\n`;
}

async function upload(filename, content) {
  const form = new FormData();
  form.append('purpose', 'fine-tune');
  form.append('file', new Blob([content]), filename);
  const file = await api('POST', '/v1/files', form);
  assert.equal(file.status, 'processed', JSON.stringify(file));
  return file.id;
}

async function job(id) {
  return api('GET', `/v1/fine_tuning/jobs/${id}`);
}

/** Polls the job until its status is one of `statuses`; returns the job. */
async function waitForStatus(id, statuses) {
  const deadline = Date.now() + JOB_TIMEOUT_MS;
  for (;;) {
    const current = await job(id);
    if (statuses.includes(current.status)) return current;
    if (['failed', 'cancelled', 'succeeded'].includes(current.status)) {
      throw new Error(`job ${id} ended ${current.status}, waiting for ${statuses}: ${JSON.stringify(current.error)}`);
    }
    if (Date.now() > deadline) throw new Error(`job ${id} still ${current.status}, waiting for ${statuses}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** Every event of the job through the OpenAI route, paging with `after`. */
async function allEvents(id) {
  const events = [];
  let after = '';
  for (;;) {
    const page = await api('GET', `/v1/fine_tuning/jobs/${id}/events?limit=1000${after ? `&after=${after}` : ''}`);
    events.push(...page.data);
    if (!page.has_more) return events;
    after = page.data[page.data.length - 1].id;
  }
}

// ---------- the browser ----------

async function screenshot(page, name) {
  const file = path.join(artifacts, name);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot: ${file}`);
}

/** Presses Tab until the focused element matches `selector`; fails after `limit` presses. */
async function tabTo(page, selector, limit) {
  for (let i = 0; i < limit; i += 1) {
    await page.keyboard.press('Tab');
    if (await page.evaluate((s) => document.activeElement && document.activeElement.matches(s), selector)) return i + 1;
  }
  throw new Error(`Tab never reached ${selector} in ${limit} presses`);
}

async function statusOnPage(page) {
  return page.locator('dl.facts .status').getAttribute('data-status');
}

async function main() {
  fs.mkdirSync(artifacts, { recursive: true });
  const trainFile = await upload('train.jsonl', sentimentJsonl(TRAIN_EXAMPLES, 0));
  const validFile = await upload('valid.jsonl', sentimentJsonl(VALID_EXAMPLES, 1000));
  const blockerFile = await upload('blocker.jsonl', sentimentJsonl(100, 2000));
  const supervised = (hyperparameters) => ({ type: 'supervised', supervised: { hyperparameters } });
  // 5000 steps: the one worker is busy with it until it is cancelled.
  const blocker = await api('POST', '/v1/fine_tuning/jobs', {
    model: 'test-org/tiny-bert', training_file: blockerFile, suffix: 'blocker',
    method: supervised({ n_epochs: 50, batch_size: 1 }),
  });
  await waitForStatus(blocker.id, ['running']);
  // The body the New job form sends for the values the test types in.
  const testedBody = {
    model: 'test-org/tiny-bert', training_file: trainFile, method: supervised({ n_epochs: 4, batch_size: 4 }),
    validation_file: validFile, suffix: 'dash',
  };
  const estimate = await api('POST', '/v1/fine_tuning/estimates', testedBody);
  assert.equal(estimate.object, 'fine_tuning.estimate');
  assert.equal(estimate.training_examples, TRAIN_EXAMPLES);
  assert.equal(estimate.validation_examples, VALID_EXAMPLES);
  assert.equal(estimate.n_epochs, 4);
  assert.equal(estimate.total_steps, estimate.steps_per_epoch * 4);
  assert.equal(estimate.trained_tokens, estimate.tokens_per_epoch * 4);
  // A bad body's estimate is an OpenAI error envelope; the form shows its message.
  const badResponse = await fetch(new URL('/v1/fine_tuning/estimates', baseUrl), {
    method: 'POST',
    headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...testedBody, model: 'test-org/no-such-model' }),
  });
  assert.ok(badResponse.status >= 400 && badResponse.status < 500, `bad estimate answered ${badResponse.status}`);
  const badMessage = (await badResponse.json()).error.message;

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in a container: chromium's sandbox needs user namespaces it may not have.
    args: ['--no-sandbox'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(UI_TIMEOUT_MS);
  const consoleErrors = [];
  // The one request meant to fail: the estimate of an unknown model (chromium logs its 4xx).
  let expectedEstimateErrors = 0;
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    if (/\/v1\/fine_tuning\/estimates$/.test(message.location().url) && /status of 4\d\d/.test(message.text())) {
      expectedEstimateErrors += 1;
    } else {
      consoleErrors.push(message.text());
    }
  });
  page.on('pageerror', (error) => consoleErrors.push(String(error)));
  page.on('dialog', (dialog) => dialog.accept());
  try {
    // Without the key the data routes answer 401 and the page says so.
    await page.goto(baseUrl);
    await page.locator('#notice.error').filter({ hasText: 'API key' }).waitFor();
    // The key, typed once into the form, reached by keyboard.
    await tabTo(page, '#api-key', 10);
    await page.keyboard.type(apiKey);
    await page.keyboard.press('Enter');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('temper.apiKey')), apiKey);

    // The New job form, reached by keyboard from the jobs page.
    await page.locator(`table.jobs tr[data-key="${blocker.id}"][data-status="running"]`).waitFor();
    await tabTo(page, 'a[href="#/jobs/new"]', 20);
    await page.keyboard.press('Enter');
    await page.locator('h1').filter({ hasText: 'New fine-tuning job' }).waitFor();
    await page.locator(`#new-training-file option[value="${trainFile}"]`).waitFor({ state: 'attached' });
    await page.locator('#new-model-list option[value="test-org/tiny-bert"]').waitFor({ state: 'attached' });
    const create = page.getByRole('button', { name: 'Create job' });
    assert.equal(await create.isDisabled(), true, 'Create is disabled before an estimate');
    // An unknown model: the estimate shows the error envelope's message, Create stays disabled.
    await page.getByLabel('Base model').fill('test-org/no-such-model');
    await page.getByLabel('Training file').selectOption(trainFile);
    await page.getByRole('button', { name: 'Estimate' }).click();
    await page.locator('[data-testid="estimate"][data-state="error"]').waitFor();
    assert.equal(await page.locator('[data-testid="estimate-error"]').textContent(), `Could not estimate: ${badMessage}`);
    assert.equal(await create.isDisabled(), true, 'Create is disabled after a failed estimate');
    // The tested job's values, typed in; Enter in a field estimates, as the button does.
    await page.getByLabel('Base model').fill('test-org/tiny-bert');
    await page.getByLabel('Validation file').selectOption(validFile);
    // DPO's beta is offered for dpo jobs only.
    await page.getByLabel('Method').selectOption('dpo');
    assert.equal(await page.getByLabel('DPO beta').isVisible(), true, 'beta shows for dpo');
    await page.getByLabel('Method').selectOption('supervised');
    assert.equal(await page.getByLabel('DPO beta').isVisible(), false, 'beta hides for supervised');
    await page.getByLabel('Seed').fill('7');
    await page.getByLabel('Epochs (n_epochs)').fill('4');
    await page.getByLabel('Batch size').fill('4');
    await page.getByLabel('Suffix').fill('dash');
    assert.equal(await create.isDisabled(), true);
    await page.getByLabel('Suffix').press('Enter');
    await page.locator('[data-testid="estimate"][data-state="ok"]').waitFor();
    // The numbers shown are the API's for the same body.
    for (const name of ['training_examples', 'validation_examples', 'tokens_per_epoch', 'trained_tokens',
      'steps_per_epoch', 'n_epochs', 'total_steps']) {
      const shown = page.locator(`[data-testid="estimate"] [data-field="${name}"]`);
      assert.equal(Number(await shown.getAttribute('data-value')), estimate[name], name);
      assert.equal(Number((await shown.textContent()).replace(/\D/g, '')), estimate[name], `${name} as shown`);
    }
    assert.equal(await page.locator('[data-testid="estimate"] [data-field="task"]').textContent(), estimate.task);
    const deviceRows = page.locator('[data-testid="estimate-devices"] tbody tr[data-device]');
    assert.equal(await deviceRows.count(), estimate.devices.length);
    assert.ok(estimate.devices.length >= 1, 'one device at least');
    assert.match(await deviceRows.first().textContent(), /(≈ \d|< 1 s|unknown)/);
    const hyper = estimate.method.supervised.hyperparameters;
    const shownHyper = await page.locator('[data-testid="estimate-hyperparameters"] dt').allTextContents();
    assert.deepEqual(shownHyper, Object.keys(hyper));
    assert.equal(await create.isDisabled(), false, 'Create is enabled after the estimate');
    // An edit invalidates the estimate; the estimated values again make it current again.
    await page.getByLabel('Epochs (n_epochs)').fill('5');
    assert.equal(await create.isDisabled(), true, 'an edit disables Create');
    await page.locator('[data-testid="estimate-stale"]').waitFor();
    await page.getByLabel('Epochs (n_epochs)').fill('4');
    assert.equal(await create.isDisabled(), false);
    await screenshot(page, 'estimate-1280x800.png');
    await page.setViewportSize({ width: 390, height: 844 });
    const phoneWidths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(phoneWidths[0] <= phoneWidths[1], `the estimate scrolls sideways on a phone: ${phoneWidths}`);
    await screenshot(page, 'estimate-390x844.png');
    await page.setViewportSize({ width: 1280, height: 800 });
    await create.click();
    await page.locator('h1').filter({ hasText: /ftjob-/ }).waitFor();
    const tested = { id: decodeURIComponent(new URL(page.url()).hash.replace(/^#\/jobs\//, '')) };
    assert.match(tested.id, /^ftjob-/);
    assert.equal(expectedEstimateErrors, 1, 'the unknown model\'s estimate failed once');

    // Jobs page: both jobs, live.
    await page.getByRole('link', { name: '← All jobs' }).click();
    const testedRow = page.locator(`table.jobs tr[data-key="${tested.id}"]`);
    await testedRow.waitFor();
    await page.locator(`table.jobs tr[data-key="${blocker.id}"][data-status="running"]`).waitFor();
    assert.match(await testedRow.getAttribute('data-status'), /^(validating_files|queued)$/);
    await tabTo(page, `a[href="#/jobs/${tested.id}"]`, 40);
    await page.keyboard.press('Enter');

    // The job page: pause (while queued behind the blocker), then resume, by keyboard.
    await page.locator('h1').filter({ hasText: tested.id }).waitFor();
    await page.locator('button[data-action="pause"]:not([disabled])').waitFor();
    await tabTo(page, 'button[data-action="pause"]', 60);
    await page.keyboard.press('Enter');
    const paused = await waitForStatus(tested.id, ['paused', 'pausing']);
    console.log(`after Pause the API says ${paused.status}`);
    await waitForStatus(tested.id, ['paused']);
    await page.locator('dl.facts .status[data-status="paused"]').waitFor();
    await page.locator('button[data-action="resume"]:not([disabled])').waitFor();
    assert.equal(await page.locator('button[data-action="pause"]').isDisabled(), true);
    await tabTo(page, 'button[data-action="resume"]', 60);
    await page.keyboard.press('Enter');
    const resumed = await waitForStatus(tested.id, ['queued', 'running', 'succeeded']);
    console.log(`after Resume the API says ${resumed.status}`);

    // The blocker's Cancel button frees the worker.
    await page.goto(`${baseUrl}#/jobs/${blocker.id}`);
    await page.locator('button[data-action="cancel"]:not([disabled])').click();
    await waitForStatus(blocker.id, ['cancelled']);
    await page.locator('dl.facts .status[data-status="cancelled"]').waitFor();

    // The tested job trains; its page follows without a reload until it succeeds.
    await page.goto(`${baseUrl}#/jobs/${tested.id}`);
    await page.locator('figure[data-chart="loss"] .uplot').waitFor();
    const done = await waitForStatus(tested.id, ['succeeded']);
    // The job trained what its estimate said.
    assert.equal(done.trained_tokens, estimate.trained_tokens, 'trained tokens as estimated');
    assert.deepEqual(done.method, estimate.method, 'the resolved method as estimated');
    assert.equal(done.model, 'test-org/tiny-bert');
    assert.equal(done.seed, 7, 'the form\'s seed reaches the job');
    assert.equal(done.validation_file, validFile);
    await page.locator('dl.facts .status[data-status="succeeded"]').waitFor({ timeout: JOB_TIMEOUT_MS });
    await page.locator('[data-testid="confusion-matrix"]').waitFor();

    // The loss chart has one point per metrics event with a train loss.
    const events = await allEvents(tested.id);
    // Events come newest first: the first metrics event is the last step trained.
    const lastMetrics = events.find((e) => e.type === 'metrics');
    assert.equal(lastMetrics.data.step, estimate.total_steps, 'last step as estimated');
    console.log(`estimate: ${estimate.total_steps} steps, ${estimate.trained_tokens} tokens = the job's`);
    const withTrainLoss = events.filter((e) => e.type === 'metrics' && typeof e.data.train_loss === 'number').length;
    assert.ok(withTrainLoss >= 4, `several metrics events, got ${withTrainLoss}`);
    const counts = JSON.parse(await page.locator('figure[data-chart="loss"]').getAttribute('data-point-counts'));
    assert.equal(counts.train_loss, withTrainLoss, JSON.stringify(counts));
    const withValidLoss = events.filter((e) => e.type === 'metrics' && typeof e.data.valid_loss === 'number').length;
    assert.equal(counts.valid_loss, withValidLoss, JSON.stringify(counts));
    console.log(`loss chart: ${counts.train_loss} train-loss points = ${withTrainLoss} metrics events; ${counts.valid_loss} validation points`);

    // The confusion matrix counts every validation example once; the report lists both classes.
    const cells = await page.locator('[data-testid="confusion-matrix"] td.cm-cell').allTextContents();
    assert.equal(cells.length, 4);
    assert.equal(cells.reduce((sum, text) => sum + Number(text), 0), VALID_EXAMPLES);
    const reportRows = await page.locator('[data-testid="class-report"] tbody th').allTextContents();
    assert.deepEqual(reportRows.slice(0, 2).sort(), ['negative', 'positive']);
    const checkpoints = await page.locator('[data-testid="checkpoints"] tbody tr[data-key]').count();
    assert.ok(checkpoints >= 1, 'checkpoints listed');
    await screenshot(page, 'job-1280x800.png');

    await page.goto(`${baseUrl}#/jobs`);
    await page.locator(`table.jobs tr[data-key="${tested.id}"][data-status="succeeded"]`).waitFor();
    assert.equal(await page.locator(`tr[data-key="${tested.id}"] .progress-cell`).getAttribute('data-percent'), '100');
    await screenshot(page, 'jobs-1280x800.png');

    // Files: the uploads are listed; one more is uploaded and deleted through the page.
    await page.goto(`${baseUrl}#/files`);
    for (const id of [trainFile, validFile]) {
      await page.locator(`[data-testid="files-table"] tr[data-key="${id}"]`).waitFor();
    }
    assert.equal(await page.locator(`tr[data-key="${trainFile}"] .status`).getAttribute('data-status'), 'processed');
    await page.locator('#upload-file').setInputFiles({
      name: 'broken.jsonl', mimeType: 'application/jsonl', buffer: Buffer.from('{"text": "no label"}\n'),
    });
    await page.getByRole('button', { name: 'Upload' }).click();
    const uploaded = page.locator('[data-testid="files-table"] tr').filter({ hasText: 'broken.jsonl' });
    await uploaded.waitFor();
    assert.equal(await uploaded.locator('.status').getAttribute('data-status'), 'error');
    assert.notEqual((await uploaded.locator('.details-cell').textContent()).trim(), '', 'the validation error is shown');
    await screenshot(page, 'files-1280x800.png');
    await uploaded.getByRole('button', { name: 'Delete broken.jsonl' }).click();
    await uploaded.waitFor({ state: 'detached' });

    // Models: the fine-tuned model answers a classification in the playground.
    await page.goto(`${baseUrl}#/models/${encodeURIComponent(done.fine_tuned_model)}`);
    await page.locator(`[data-testid="models-table"] tr[data-key="${done.fine_tuned_model}"]`).waitFor();
    assert.equal(await page.locator('#play-model').inputValue(), done.fine_tuned_model);
    await page.getByLabel('Classification (a text)').check();
    await page.getByLabel('Prompt or text').fill('good great happy film');
    await page.getByRole('button', { name: 'Send' }).click();
    await page.locator('[data-testid="play-result"]').filter({ hasText: /score/ }).waitFor();
    const answer = await page.locator('[data-testid="play-result"]').textContent();
    assert.match(answer, /^(positive|negative) \(score/);
    await screenshot(page, 'models-1280x800.png');
    // And a base decoder answers a chat prompt (tiny random weights: any text will do).
    await page.locator('#play-model').selectOption('test-org/tiny-llama');
    await page.getByLabel('Chat (a prompt)').check();
    await page.getByLabel('Prompt or text').fill('Hello');
    await page.getByRole('button', { name: 'Send' }).click();
    await page.locator('[data-testid="play-result"]').filter({ hasNotText: /^(Waiting…|No answer yet\.)$/ }).waitFor();
    const chat = await page.locator('[data-testid="play-result"]').textContent();
    assert.doesNotMatch(chat, /^Error:/);

    // A phone: the same pages, nothing wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    for (const [route, name, ready] of [
      [`#/jobs/${tested.id}`, 'job-390x844.png', '[data-testid="confusion-matrix"]'],
      ['#/jobs', 'jobs-390x844.png', `table.jobs tr[data-key="${tested.id}"]`],
      ['#/files', 'files-390x844.png', `tr[data-key="${trainFile}"]`],
    ]) {
      await page.goto(`${baseUrl}${route}`);
      await page.locator(ready).waitFor();
      const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
      assert.ok(widths[0] <= widths[1], `${route} scrolls sideways on a phone: ${widths}`);
      await screenshot(page, name);
    }
    assert.deepEqual(consoleErrors.filter((e) => !/401|Unauthorized/.test(e)), []);
    console.log(`browser test passed: job ${tested.id}, screenshots in ${artifacts}`);
  } catch (error) {
    await screenshot(page, 'failure.png').catch(() => {});
    console.error(`console errors: ${JSON.stringify(consoleErrors)}`);
    throw error;
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
