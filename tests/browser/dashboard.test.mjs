// The dashboard, driven in a real Chromium against a real `workhost serve --http`.
//
// Started by the Rust integration test, which runs the server and then
// `node --test tests/browser/` with:
//   WORKHOST_URL       the server, e.g. http://127.0.0.1:PORT
//   WORKHOST_BIN       the workhost CLI
//   WORKHOST_MANIFEST  the manifest the server uses (handlers echo, fail, spin)
//   CHROMIUM           the browser (default /usr/bin/chromium; scripts/chromium-install)
//   SCREENSHOT_DIR     where the page screenshots go (default docs/screenshots)
// Work is enqueued through the CLI, as an operator would from another shell,
// and every check polls the page (no fixed sleeps) for up to WAIT_MS.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  throw new Error(`dashboard test: cannot load playwright-core (${e.message}); run scripts/npm-ci tests/browser, which installs the version tests/browser/package-lock.json pins`);
}

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const WAIT_MS = 20_000;

function env(name, fallback) {
  const v = process.env[name] || fallback;
  if (!v) throw new Error(`dashboard test: set ${name} (see the header of tests/browser/dashboard.test.mjs)`);
  return v;
}
const URL_BASE = env('WORKHOST_URL').replace(/\/+$/, '');
const BIN = env('WORKHOST_BIN');
const MANIFEST = env('WORKHOST_MANIFEST');
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const SHOTS = path.resolve(repo, env('SCREENSHOT_DIR', 'docs/screenshots'));
// A run-unique tag keeps this run's tasks apart from anything else in the store.
const RUN = `bt${Date.now().toString(36)}`;

let browser;
let page;
const pageErrors = [];

/** `workhost enqueue --config MANIFEST HANDLER --task NAME ...`; returns the new task's id. */
function enqueue(handler, ...flags) {
  const args = ['enqueue', '--config', MANIFEST, handler, '--task', `${RUN}-${handler}`, '--tag', RUN, ...flags];
  let out;
  try {
    out = execFileSync(BIN, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  } catch (e) {
    throw new Error(`${BIN} ${args.join(' ')} failed (exit ${e.status}): ${e.stderr || e.message}`);
  }
  const id = Number(out.trim().split('\n').pop());
  assert.ok(Number.isInteger(id) && id > 0, `enqueue printed no task id: ${JSON.stringify(out)}`);
  return id;
}

/** Polls `probe` (async, returns a value or null/false) until `ok(value)` or WAIT_MS; fails naming `what` and the last value. */
async function until(what, probe, ok = Boolean, timeout = WAIT_MS) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try { last = await probe(); } catch (e) { last = `probe threw: ${e.message}`; }
    if (ok(last)) return last;
    if (Date.now() > end) {
      const banner = await page.locator('#banner:not([hidden])').textContent({ timeout: 500 }).catch(() => null);
      throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}; last seen: ${JSON.stringify(last)}`
        + `${banner ? `; the page's banner says: ${banner}` : ''}; page ${page.url()}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The state the task list (or periodic list) shows for a task: its row's data-state and the text of its state cell. */
const rowState = (id) => page.evaluate((id) => {
  const row = document.querySelector(`tr[data-task-id="${id}"]`);
  if (!row) return null;
  const cell = row.querySelector('.state-cell');
  return { data: row.dataset.state, text: cell ? cell.textContent.trim() : row.textContent };
}, id);

/** The state the detail page shows, and its attempt rows. */
const detail = () => page.evaluate(() => {
  const s = document.querySelector('dd .state-cell');
  return {
    heading: document.querySelector('h1')?.textContent,
    state: s ? s.textContent.trim() : null,
    attempts: [...document.querySelectorAll('tr.attempt-row')].map((r) => r.dataset.outcome),
    buttons: [...document.querySelectorAll('.actions button')].map((b) => b.textContent),
  };
});

async function go(hash, heading) {
  await page.goto(`${URL_BASE}/${hash}`);
  await page.getByRole('heading', { level: 1, name: heading }).waitFor({ timeout: WAIT_MS });
}

async function shot(name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, name) });
}

before(async () => {
  try {
    fs.accessSync(CHROMIUM, fs.constants.X_OK);
  } catch {
    throw new Error(`dashboard test: no Chromium at ${CHROMIUM}. Run scripts/chromium-install (installs Debian's chromium), or set CHROMIUM to a Chromium executable.`);
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('dialog', (d) => d.accept()); // the confirm() of Cancel, Delete and the bulk actions
});

after(async () => {
  await browser?.close();
});

test('the overview shows counts per state, the charts and the queue state', async () => {
  await go('#/', 'Overview');
  for (const s of ['ENQUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED']) {
    await page.locator(`.counts [data-state="${s}"]`).waitFor({ timeout: WAIT_MS });
  }
  await page.getByRole('heading', { name: 'Last hour' }).waitFor();
  await page.getByRole('button', { name: 'Pause' }).waitFor(); // the whole queue runs
});

test('the task list updates live: a task enqueued by the CLI appears and succeeds without a reload', async () => {
  await go(`#/tasks?tag=${RUN}`, 'Tasks');
  await until('the live-update stream to connect', () => page.locator('#live').textContent(), (t) => t.includes('live'));
  await page.evaluate(() => { window.__noReload = 'still here'; });
  const id = enqueue('echo', '--input-json', '{"n":1}');
  const seen = await until(`task ${id} to show SUCCEEDED in the list`, () => rowState(id), (s) => s && s.data === 'SUCCEEDED');
  assert.equal(seen.text, 'SUCCEEDED', 'the row shows its state as text');
  assert.equal(await page.evaluate(() => window.__noReload), 'still here', 'the list updated without a page load');

  // Open its detail from the list.
  await page.locator(`tr[data-task-id="${id}"] a[href="#/tasks/${id}"]`).click();
  await page.getByRole('heading', { level: 1, name: `Task ${id}` }).waitFor({ timeout: WAIT_MS });
  const d = await until(`task ${id}'s detail to show its run`, detail, (d) => d.state === 'SUCCEEDED' && d.attempts.length === 1);
  assert.deepEqual(d.buttons, ['Delete'], 'a succeeded task offers Delete only');
  const output = await page.locator('section', { has: page.getByRole('heading', { name: 'Output' }) }).locator('pre').textContent();
  assert.deepEqual(JSON.parse(output), { n: 1 }, 'echo outputs its input, pretty-printed');
  await page.locator('details summary').first().click();
  await shot('task-detail.png');
  assert.equal(await page.evaluate(() => window.__noReload), 'still here', 'the detail opened without a page load');
});

test('retrying a failed task from its page runs it again (and it fails again)', async () => {
  const id = enqueue('fail');
  await go(`#/tasks/${id}`, `Task ${id}`);
  let d = await until(`task ${id} to fail once`, detail, (d) => d.state === 'FAILED' && d.attempts.length === 1);
  assert.ok(d.buttons.includes('Retry') && d.buttons.includes('Delete') && !d.buttons.includes('Cancel'), `buttons of a failed task: ${d.buttons}`);
  await page.getByRole('button', { name: 'Retry', exact: true }).click();
  d = await until(`task ${id} to fail a second time after Retry`, detail, (d) => d.state === 'FAILED' && d.attempts.length === 2);
  assert.deepEqual(d.attempts, ['failed', 'failed']);
});

test('cancelling a running task from its page stops it', async () => {
  const id = enqueue('spin');
  await go(`#/tasks/${id}`, `Task ${id}`);
  let d = await until(`task ${id} (spin) to be RUNNING`, detail, (d) => d.state === 'RUNNING');
  assert.ok(d.buttons.includes('Cancel') && !d.buttons.includes('Retry') && !d.buttons.includes('Delete'), `buttons of a running task: ${d.buttons}`);
  await page.getByRole('button', { name: 'Cancel', exact: true }).click();
  d = await until(`task ${id} to be CANCELLED`, detail, (d) => d.state === 'CANCELLED');
  assert.ok(d.buttons.includes('Retry'), 'a cancelled task offers Retry');
  await go(`#/tasks?tag=${RUN}&state=cancelled`, 'Tasks');
  await until(`task ${id} listed as CANCELLED`, () => rowState(id), (s) => s && s.text === 'CANCELLED');
});

test('a paused handler holds its work until it is resumed', async () => {
  await go('#/handlers', 'Handlers');
  const echo = page.locator('tr[data-handler="echo"]');
  await echo.getByRole('button', { name: 'Pause' }).click();
  await until('echo to show as paused', () => echo.getAttribute('data-paused'), (v) => v === 'true');
  await echo.getByRole('button', { name: 'Resume' }).waitFor();
  await shot('handlers.png');

  const id = enqueue('echo', '--input-json', '{"n":2}');
  await go(`#/tasks?handler=echo&tag=${RUN}`, 'Tasks');
  await page.evaluate(() => { window.__noReload = 'still here'; });
  await until(`task ${id} listed`, () => rowState(id));
  // It must stay ENQUEUED while echo is paused: watch it for a while.
  const watchUntil = Date.now() + 2000;
  while (Date.now() < watchUntil) {
    const s = await rowState(id);
    assert.equal(s && s.data, 'ENQUEUED', `task ${id} ran while its handler was paused: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 200));
  }

  // Resume through the API the page uses, from the same page (no reload), then watch the row.
  await page.locator('a[data-nav="handlers"]').click();
  await page.getByRole('heading', { level: 1, name: 'Handlers' }).waitFor();
  await echo.getByRole('button', { name: 'Resume' }).click();
  await until('echo to show as active', () => echo.getAttribute('data-paused'), (v) => v === 'false');
  await page.goBack();
  await page.getByRole('heading', { level: 1, name: 'Tasks' }).waitFor();
  await until(`task ${id} to succeed after Resume`, () => rowState(id), (s) => s && s.data === 'SUCCEEDED');
  assert.equal(await page.evaluate(() => window.__noReload), 'still here', 'the pages switched without a page load');
});

test('bulk cancel cancels every task that matches the filter', async () => {
  const tag = `${RUN}-bulk`;
  const ids = [enqueue('echo', '--tag', tag, '--delay', '1h'), enqueue('echo', '--tag', tag, '--delay', '1h')];
  await go(`#/tasks?tag=${tag}`, 'Tasks');
  for (const id of ids) await until(`task ${id} listed as ENQUEUED`, () => rowState(id), (s) => s && s.data === 'ENQUEUED');
  await shot('tasks.png');
  await page.getByRole('button', { name: 'Cancel all matching' }).click();
  for (const id of ids) await until(`task ${id} to be CANCELLED by the bulk action`, () => rowState(id), (s) => s && s.data === 'CANCELLED');
});

test('the other pages draw, and no script error happened', async () => {
  const tick = enqueue('echo', '--every', '1h', '--tag', `${RUN}-tick`);
  await go('#/periodic', 'Periodic');
  await page.locator(`tr[data-task-id="${tick}"]`).waitFor({ timeout: WAIT_MS });
  await shot('periodic.png');
  await go('#/hosts', 'Hosts');
  await page.locator('tr[data-host]').first().waitFor({ timeout: WAIT_MS });
  await go('#/device', 'Device');
  await go('#/', 'Overview');
  // Pause and resume the whole queue.
  await page.locator('.queue').getByRole('button', { name: 'Pause' }).click();
  await until('the queue to show as paused', () => page.locator('.queue-state').getAttribute('data-paused'), (v) => v === 'true');
  assert.ok(await page.locator('#queue-pill').isVisible(), 'the header says the queue is paused');
  await page.locator('.queue').getByRole('button', { name: 'Resume' }).click();
  await until('the queue to show as running', () => page.locator('.queue-state').getAttribute('data-paused'), (v) => v === 'false');
  assert.ok(!(await page.locator('#queue-pill').isVisible()), 'the header no longer says the queue is paused');
  await until('the overview to count this run\'s succeeded tasks', () => page.locator('.counts [data-state="SUCCEEDED"] .n').textContent(), (t) => Number(String(t).replace(/\D/g, '')) >= 2);
  await shot('overview.png');
  assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
});
