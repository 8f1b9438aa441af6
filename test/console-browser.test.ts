/**
 * The web console in a real browser (Debian's Chromium, headless, through playwright-core) against
 * a real hub and agent: login, the agents list, running a pack action from the form built from its
 * parameters and watching its output arrive live over /stream, cancel and re-run, revoke with a
 * confirmation, CSRF refused, an observer without the run button whose forged POST is refused,
 * logout. Screenshots of the main pages go to .tap/artifacts/console/.
 */
import t, { type Test } from 'tap';
import { join } from 'node:path';
import type { Page, BrowserContext } from 'playwright-core';
import { startHub, ADMIN_PASSWORD, type TestHub } from './helpers/hub.js';
import { needs } from './helpers/needs.js';
import { install, file, getExecution, getAgent, createRule, getRule, setSecret, setKv, unaryT } from './helpers/admin.js';
import { chromiumMissing, launchBrowser, artifactsDir } from './helpers/browser.js';
import { consoleCall } from './helpers/console.js';
import { postWebhook } from './helpers/catalog.js';
import { signWebhook } from '../hub/webhooks/index.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';
import { csrfFor } from '../hub/web/console/session.js';

// What the page functions (run in the browser by page.evaluate / waitForFunction) use; the test
// program is compiled without the DOM library.
interface PageNode { textContent: string | null; getAttribute(name: string): string | null }
declare const document: { cookie: string; querySelector(sel: string): PageNode | null; querySelectorAll(sel: string): Iterable<PageNode> };
declare const location: { hash: string };

const PW = 'observer-password-1';
const WAIT = 60_000;

const TICKER = file('actions/ticker.yaml', [
  'name: ticker', 'description: Print a numbered word once a second', 'runner: command',
  'command: ["/bin/sh", "-c", "i=1; while [ $i -le $COUNT ]; do echo \\"$WORD $i\\"; i=$((i+1)); sleep 1; done"]',
  'parameters:',
  '  count: { type: integer, default: 3, description: how many lines }',
  '  word: { type: string, required: true, enum: [tick, tock] }',
  'env:', '  COUNT: "{{ count }}"', '  WORD: "{{ word }}"', 'timeout: 5m', '',
].join('\n'));

/** Fails the test on any script error or CSP violation the page reports. */
function watchErrors(t: Test, page: Page): void {
  page.on('pageerror', (err) => t.fail(`page error: ${err.message}`));
  page.on('console', (m) => {
    // 401s while logged out are expected answers, not errors of the console.
    if (m.type() === 'error' && !/status of 40[13]/.test(m.text())) t.fail(`console error: ${m.text()}`);
  });
}

async function login(page: Page, h: TestHub, user: string, password: string): Promise<void> {
  await page.goto(`https://localhost:${h.hub.webPort}/console/`);
  await page.waitForSelector('#login-form', { timeout: WAIT });
  await page.fill('#username', user);
  await page.fill('#password', password);
  await page.click('#login');
  await page.waitForSelector('main[data-ready="overview"]', { timeout: WAIT });
}

/** Waits for `sel`; on a timeout the error names what the page showed. */
async function seen(page: Page, sel: string): Promise<void> {
  try {
    await page.waitForSelector(sel, { timeout: WAIT });
  } catch (err) {
    throw new Error(`${sel} did not appear; the page shows: ${(await page.textContent('body').catch(() => ''))?.slice(0, 1500)}`, { cause: err });
  }
}

async function ready(page: Page, name: string): Promise<void> {
  await page.waitForSelector(`main[data-ready="${name}"]`, { timeout: WAIT });
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(artifactsDir(), `${name}.png`), fullPage: true });
}

async function sessionCookie(ctx: BrowserContext) {
  return (await ctx.cookies()).find((c) => c.name === '__Host-trellis-session');
}

t.test('the console in Chromium: login, agents, run with live output, cancel, re-run, revoke, CSRF, observer, logout', async (t) => {
  const missing = chromiumMissing();
  if (needs(t, missing).skip) return;
  await using h = await startHub();
  const c = h.hub.components;
  await install(h, [file('pack.yaml', 'name: ops\nversion: 1.0.0\ndescription: console test pack\n'), TICKER]);
  await using agent = await h.agent();
  const agentId = agent.agentId!;
  const spare = await h.enroll(); // enrolled, never started: the one revoked from the console
  await createRule(h, { name: 'on-tick', trigger: 'core.tick', action: { ref: 'ops.ticker', parameters: { word: 'tick', count: 1 } } });
  const SECRET = 'console-secret-value-9f8e7d';
  await setSecret(h, 'db_password', SECRET);
  await setKv(h, 'greeting', 'hello-plain <img src=x onerror="document.title=\'pwned\'">', false);
  await c.iam.createTenant('red', '');
  await c.auth.createUser({ username: 'watcher', password: PW, roles: ['observer'], tenants: ['default', 'red'] });
  await using browser = await launchBrowser(h);

  // ---- an administrator
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  watchErrors(t, page);
  await login(page, h, 'admin', ADMIN_PASSWORD);
  const cookie = await sessionCookie(ctx);
  t.ok(cookie, 'the session cookie is set');
  t.equal(cookie?.httpOnly, true, 'HttpOnly');
  t.equal(cookie?.secure, true, 'Secure');
  t.equal(cookie?.sameSite, 'Strict', 'SameSite=Strict');
  t.equal(await page.evaluate(() => document.cookie), '', 'script cannot read the session cookie');
  await page.waitForSelector('#agents-online', { timeout: WAIT });
  t.equal((await page.textContent('#agents-online .n'))?.trim(), '1', 'the overview counts the online agent');
  await shot(page, 'overview');

  await page.goto(`https://localhost:${h.hub.webPort}/console/#/agents`);
  await ready(page, 'agents');
  const row = page.locator(`tr[data-agent="${agentId}"]`);
  t.match(await row.textContent(), /online/);
  t.ok(await page.locator(`tr[data-agent="${spare.agentId}"]`).count(), 'the offline agent is listed');
  // The filter is the hub's: online only.
  await page.selectOption('#agent-status', 'online');
  await page.click('form.filters button[type=submit]');
  // The new page rendered (not the moment between clearing the old one and drawing the new).
  await page.waitForFunction((id) => !document.querySelector(`tr[data-agent="${id}"]`) && location.hash.includes('status=online') && !!document.querySelector('main[data-ready="agents"]'), spare.agentId, { timeout: WAIT });
  t.equal(await page.locator('tr[data-agent]').count(), 1);
  await shot(page, 'agents');

  // Run ops.ticker from the form built from its parameters (an enum is a select).
  await page.goto(`https://localhost:${h.hub.webPort}/console/#/run?action=ops.ticker`);
  await ready(page, 'run');
  t.equal(await page.locator('select#param-word option').count(), 2, 'the enum parameter is a choice of its values');
  await page.fill('#param-count', '40');
  await page.selectOption('#param-word', 'tock');
  await page.selectOption('#run-agent', agentId);
  await shot(page, 'run');
  await page.click('#run-submit');
  await page.waitForFunction(() => /^#\/executions\/[0-9a-z]+$/.test(location.hash), undefined, { timeout: WAIT });
  const execId = (await page.evaluate(() => location.hash)).split('/')[2]!;
  await ready(page, 'executions');
  // Output arrives live: "tock 3" shows while the execution is still running.
  await page.waitForFunction(() => document.querySelector('#output')?.textContent?.includes('tock 3'), undefined, { timeout: WAIT });
  t.equal(await page.getAttribute('#exec-status .badge', 'data-status'), 'running', 'output shown while it runs');
  const firstText = await page.textContent('#output');
  await page.waitForFunction((n) => (document.querySelector('#output')?.textContent?.length ?? 0) > n, firstText!.length, { timeout: WAIT });
  t.pass('more output arrived without reloading');
  t.match(await page.textContent('#output'), /^tock 1\ntock 2\ntock 3\n/, 'in order, nothing lost or repeated');
  await shot(page, 'execution-live');
  // Cancel.
  await page.click('#cancel');
  await seen(page, '#exec-status .badge[data-status="canceled"]');
  t.equal((await getExecution(h, execId)).status, 'canceled', 'the hub canceled it');
  // Re-run: a new execution of the same action and parameters.
  await page.click('#rerun');
  await page.waitForFunction((id) => /^#\/executions\/[0-9a-z]+$/.test(location.hash) && !location.hash.endsWith(id), execId, { timeout: WAIT });
  const rerunId = (await page.evaluate(() => location.hash)).split('/')[2]!;
  await page.waitForFunction(() => document.querySelector('#output')?.textContent?.includes('tock 1'), undefined, { timeout: WAIT });
  const rerun = await getExecution(h, rerunId);
  t.equal(rerun.action, 'ops.ticker');
  t.match(JSON.parse(Buffer.from(rerun.parametersJson).toString()), { word: 'tock' });
  await page.click('#cancel');
  await seen(page, '#exec-status .badge[data-status="canceled"]');

  await page.goto(`https://localhost:${h.hub.webPort}/console/#/executions`);
  await ready(page, 'executions');
  t.equal(await page.locator('tr[data-execution]').count(), 2);
  await shot(page, 'executions');

  // Agent detail: its record, its recent executions (the two runs above), its events view.
  await page.goto(`https://localhost:${h.hub.webPort}/console/#/agents/${agentId}`);
  await ready(page, 'agents');
  t.match(await page.textContent('main h1'), /^Agent /);
  t.match(await page.textContent('main dl.kv'), new RegExp(agentId), 'the agent\'s record');
  t.same((await page.locator('#executions tr[data-execution]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-execution')))).sort(), [execId, rerunId].sort(), 'its recent executions');
  t.equal(await page.locator('#events').count(), 1, 'its live events');
  await shot(page, 'agent-detail');

  // Events: a webhook's event arrives live; paused, the next is not shown; resumed, the next is.
  const hook = await unaryT<T.CreateWebhookRequest, T.CreateWebhookResponse__Output>(h, h.admin.webhooks, h.admin.webhooks.CreateWebhook, { name: 'console', description: '' });
  const fire = async (n: number) => {
    const body = JSON.stringify({ n: `probe-${n}` });
    t.equal((await postWebhook(h, '/webhooks/console', body, { 'x-trellis-signature': signWebhook(hook.secret, body, Math.floor(Date.now() / 1000)) })).status, 202, `webhook ${n} accepted`);
  };
  const shown = (n: number) => page.waitForFunction((x) => [...document.querySelectorAll('#events tr')].some((r) => r.textContent?.includes(`probe-${x}`)), n, { timeout: WAIT });
  await page.goto(`https://localhost:${h.hub.webPort}/console/#/events?type=webhook.*`);
  await ready(page, 'events');
  await page.waitForFunction(() => document.querySelector('#events-state')?.textContent === 'live', undefined, { timeout: WAIT });
  await fire(1);
  await shown(1);
  t.match(await page.textContent('#events'), /webhook\.console/, 'the event arrived live with its type');
  await shot(page, 'events');
  await page.click('#events-pause');
  await fire(2);
  await page.waitForFunction(() => document.querySelector('#events-state')?.textContent === 'paused: 1 not shown', undefined, { timeout: WAIT });
  t.notMatch(await page.textContent('#events'), /probe-2/, 'paused: received, not shown');
  await page.click('#events-pause');
  await fire(3);
  await shown(3);
  t.notMatch(await page.textContent('#events'), /probe-2/, 'resumed: the paused one stays out, the next is shown');

  // Revoke with a confirmation: cancelling the dialog revokes nothing.
  await page.goto(`https://localhost:${h.hub.webPort}/console/#/agents`);
  await ready(page, 'agents');
  const spareRow = page.locator(`tr[data-agent="${spare.agentId}"]`);
  await spareRow.locator('button.revoke').click();
  await page.waitForSelector('#confirm');
  await shot(page, 'revoke-confirm');
  await page.click('#confirm-cancel');
  t.equal((await getAgent(h, spare.agentId)).revoked, false, 'cancelled: not revoked');
  await spareRow.locator('button.revoke').click();
  await page.click('#confirm-ok');
  await page.waitForFunction((id) => document.querySelector(`tr[data-agent="${id}"] .badge`)?.getAttribute('data-status') === 'revoked', spare.agentId, { timeout: WAIT });
  t.equal((await getAgent(h, spare.agentId)).revoked, true, 'revoked');

  // Rules: disable and enable again.
  await page.goto(`https://localhost:${h.hub.webPort}/console/#/rules`);
  await ready(page, 'rules');
  await page.locator('tr[data-rule="on-tick"] button').click();
  await page.waitForFunction(() => document.querySelector('tr[data-rule="on-tick"] button')?.textContent === 'Enable', undefined, { timeout: WAIT });
  t.equal((await getRule(h, 'on-tick')).enabled, false, 'disabled from the console');
  await page.locator('tr[data-rule="on-tick"] button').click();
  await page.waitForFunction(() => document.querySelector('tr[data-rule="on-tick"] button')?.textContent === 'Disable', undefined, { timeout: WAIT });
  t.equal((await getRule(h, 'on-tick')).enabled, true, 'enabled again');

  // Datastore: a secret's value is not on the page until decrypted (kv:decrypt, audited).
  await page.goto(`https://localhost:${h.hub.webPort}/console/#/kv`);
  await ready(page, 'kv');
  t.match(await page.textContent('tr[data-key="greeting"]'), /hello-plain <img src=x/, 'markup in a value is shown as text');
  t.equal(await page.locator('tr[data-key="greeting"] img').count(), 0, 'never parsed as HTML');
  t.not(await page.title(), 'pwned');
  t.notOk((await page.content()).includes(SECRET), 'the secret is not on the page');
  await page.locator('tr[data-key="db_password"] button').click();
  await page.waitForFunction((v) => document.querySelector('tr[data-key="db_password"]')?.textContent?.includes(v), SECRET, { timeout: WAIT });
  await c.audit.flush();
  t.ok((await c.audit.query({ methodContains: 'AdminKv/Get', limit: 10 })).some((r) => r.actor === 'admin'), 'the decryption is audited');

  // Other pages render without errors.
  for (const p of ['events', 'rules', 'packs', 'kv', 'audit']) {
    await page.goto(`https://localhost:${h.hub.webPort}/console/#/${p}`);
    await ready(page, p);
    t.equal(await page.locator('main .error').count(), 0, `${p} page shows no error`);
  }
  await shot(page, 'audit');

  // CSRF: the page's own fetch without the header is refused, even with the cookie.
  const forged = await page.evaluate(async () => {
    const r = await fetch('/console/api/AdminJoinTokens/CreateJoinToken', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"uses":1}' });
    return r.status;
  });
  t.equal(forged, 403, 'no CSRF token: 403');

  // Logout: the cookie no longer works, in the browser or anywhere else.
  const oldCookie = `${cookie!.name}=${cookie!.value}`;
  await page.click('#logout');
  await page.waitForSelector('#login-form', { timeout: WAIT });
  t.equal(await sessionCookie(ctx), undefined, 'the cookie is cleared');
  const after = await consoleCall(h, { cookie: oldCookie, token: cookie!.value, csrf: csrfFor(cookie!.value), setCookie: '' }, 'AdminAgents/ListAgents', {});
  t.equal(after.status, 401, 'the old cookie is refused after logout');
  await ctx.close();

  // ---- an observer: no run button, no cancel, no revoke; a forged run is refused by the hub.
  const octx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const opage = await octx.newPage();
  watchErrors(t, opage);
  await login(opage, h, 'watcher', PW);
  t.equal(await opage.locator('#nav-run').count(), 0, 'no Run link');
  t.equal(await opage.locator('#nav-audit').count(), 0, 'no Audit link');
  await opage.goto(`https://localhost:${h.hub.webPort}/console/#/agents`);
  await ready(opage, 'agents');
  t.ok(await opage.locator('tr[data-agent]').count() >= 1, 'the observer sees the agents');
  t.equal(await opage.locator('button.revoke').count(), 0, 'no revoke button');
  // The tenant switcher: a member of two tenants sees the other one's (empty) fleet.
  t.same(await opage.locator('#tenant option').allTextContents(), ['default', 'red']);
  await opage.selectOption('#tenant', 'red');
  await opage.waitForFunction(() => document.querySelector('main[data-ready="agents"]') && !document.querySelector('tr[data-agent]') && document.querySelector('main')?.textContent?.includes('No agents match'), undefined, { timeout: WAIT });
  t.pass('tenant red: no agents');
  await opage.selectOption('#tenant', 'default');
  await opage.waitForSelector('tr[data-agent]', { timeout: WAIT });
  await opage.goto(`https://localhost:${h.hub.webPort}/console/#/kv`);
  await ready(opage, 'kv');
  t.equal(await opage.locator('tr[data-key="db_password"] button').count(), 0, 'no decrypt button without kv:decrypt');
  t.notOk((await opage.content()).includes(SECRET), 'the secret is not on the observer\'s page');
  await opage.goto(`https://localhost:${h.hub.webPort}/console/#/executions/${rerunId}`);
  await ready(opage, 'executions');
  t.equal(await opage.locator('#cancel, #rerun').count(), 0, 'no cancel or re-run');
  await shot(opage, 'observer-execution');
  const forgedRun = await opage.evaluate(async (agentId) => {
    const s = await (await fetch('/console/api/session')).json() as { csrf: string };
    const r = await fetch('/console/api/AdminExecutions/RunAction', {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-trellis-csrf': s.csrf },
      body: JSON.stringify({ action: 'ops.ticker', agentId, parameters: { word: 'tick' } }),
    });
    return { status: r.status, body: await r.json() as { code: string } };
  }, agentId);
  t.equal(forgedRun.status, 403, 'the observer\'s forged POST is refused');
  t.equal(forgedRun.body.code, 'TRELLIS_E_PERMISSION_DENIED');
  t.equal((await c.executions.list('*', { limit: 100 })).length, 2, 'nothing ran');
  await octx.close();
});
