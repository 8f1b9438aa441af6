/**
 * The Trellis web console: a small single-page app over the hub's console API. Pages are
 * addressed by the location hash (#/agents, #/executions/ID, ...). Every list is filtered and
 * paged by the hub; buttons the user's permissions do not allow are not shown (the hub refuses
 * the call all the same).
 */
import { h, clear, when, ago, badge, confirmDialog, b64text, textB64 } from './dom.js';
import { call, getSession, login, logout, currentTenant, setTenant, setUnauthenticatedHandler, openStream, ApiError, type Session, type StreamMessage } from './api.js';

interface Agent {
  id: string; tenant: string; hostname: string; labels: Record<string, string>; facts?: Record<string, unknown>;
  online: boolean; lastSeenMs: number; certExpiresAtMs: number; status: string; remoteAddress: string; enrolledAtMs: number; revoked: boolean;
}
interface Execution {
  id: string; action: string; agentId: string; tenant: string; status: string; exitCode: number; error: string; requestedBy: string; rule: string;
  requestedMs: number; startedMs: number; finishedMs: number; output?: string; outputTruncated: boolean; parametersJson?: string;
}
interface ActionParameter { name: string; type: string; required: boolean; defaultJson: string; enumJson: string; description: string; secret: boolean }
interface Action { ref: string; pack: string; name: string; description: string; parameters: ActionParameter[]; builtin: boolean }
type StreamUpdate = { state?: Execution; output?: unknown; matched?: { agents?: unknown } };

const FINAL = new Set(['succeeded', 'failed', 'timeout', 'canceled', 'abandoned', 'error']);
const PAGE = 50;

const root = document.getElementById('app')!;
let session: Session | undefined;
/** Ends what the current page holds open (its live stream). */
let leave: Array<() => void> = [];

const can = (perm: string) => !!session && (session.isAdmin || session.permissions.includes(perm));

function errorBox(err: unknown): HTMLElement {
  const msg = err instanceof ApiError ? `${err.message}${err.code ? ` (${err.code})` : ''}` : String((err as Error)?.message ?? err);
  return h('div', { class: 'error', role: 'alert' }, msg);
}

function go(hash: string): void { location.hash = hash; }

// ------------------------------------------------------------------ frame

async function tenantChoices(): Promise<string[]> {
  if (!session) return [];
  if (session.isAdmin) {
    try {
      const r = await call<{ tenants: Array<{ name: string }> }>('AdminTenants/ListTenants');
      return r.tenants.map((t) => t.name);
    } catch { return session.tenants; }
  }
  return session.tenants;
}

async function frame(active: string): Promise<HTMLElement> {
  const links: Array<[string, string, boolean]> = [
    ['overview', 'Overview', true],
    ['agents', 'Agents', can('agents:list')],
    ['executions', 'Executions', can('executions:read')],
    ['run', 'Run', can('actions:execute')],
    ['events', 'Events', can('events:read')],
    ['rules', 'Rules', can('rules:read')],
    ['packs', 'Packs', can('packs:list')],
    ['kv', 'Datastore', can('kv:read')],
    ['audit', 'Audit', !!session?.isAdmin],
  ];
  const tenants = await tenantChoices();
  const select = h('select', { id: 'tenant', title: 'tenant', onchange: (e: Event) => { setTenant((e.target as HTMLSelectElement).value); void render(); } },
    ...(session?.isAdmin ? [h('option', { value: '' }, 'default')] : []),
    ...tenants.filter((t) => !(session?.isAdmin && t === 'default')).map((t) => h('option', { value: t, selected: t === currentTenant() }, t)));
  if (!session?.isAdmin && !currentTenant() && tenants[0]) setTenant(tenants[0]);
  const main = h('main', { id: 'main' });
  clear(root,
    h('header', { class: 'top' },
      h('span', { class: 'brand' }, 'Trellis'),
      h('nav', {}, ...links.filter(([, , ok]) => ok).map(([id, label]) => h('a', { href: `#/${id}`, id: `nav-${id}`, class: active === id ? 'active' : undefined }, label))),
      h('span', { class: 'who' },
        tenants.length > 1 || session?.isAdmin ? h('label', {}, 'Tenant ', select) : h('span', { class: 'muted' }, currentTenant() || tenants[0] || ''),
        h('span', { id: 'whoami' }, session?.username ?? ''),
        h('button', { id: 'logout', onclick: () => void logout().then(() => { session = undefined; go('#/login'); void render(); }) }, 'Log out'))),
    main);
  return main;
}

// ------------------------------------------------------------------ pages

function loginPage(): void {
  const user = h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true });
  const pass = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const msg = h('div', {});
  const form = h('form', { class: 'panel login', id: 'login-form' },
    h('h1', {}, 'Trellis console'),
    h('label', { for: 'username' }, 'User name'), user,
    h('label', { for: 'password' }, 'Password'), pass,
    h('div', { class: 'row' }, h('button', { class: 'primary', type: 'submit', id: 'login' }, 'Log in')),
    msg);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    clear(msg);
    void login(user.value, pass.value).then(async () => {
      session = await getSession();
      go('#/overview');
      await render();
    }, (err) => clear(msg, errorBox(err)));
  });
  clear(root, form);
  user.focus();
}

async function overviewPage(main: HTMLElement): Promise<void> {
  clear(main, h('h1', {}, 'Overview'));
  const cards = h('div', { class: 'cards', id: 'overview-cards' });
  main.append(cards);
  if (can('agents:list')) {
    for (const status of ['online', 'offline']) {
      const r = await call<{ total: number }>('AdminAgents/ListAgents', { status, limit: 1 });
      cards.append(h('div', { class: 'card', id: `agents-${status}` }, h('div', { class: 'n' }, r.total), h('div', { class: 'muted' }, `agents ${status}`)));
    }
  }
  if (can('executions:read')) {
    // Counted by the hub: the page gets a dozen numbers, not the hour's records.
    const r = await call<{ byStatus: Record<string, number>; total: number }>('AdminExecutions/CountExecutions', { sinceMs: Date.now() - 3_600_000 });
    const by = new Map(Object.entries(r.byStatus).map(([s, n]) => [s, Number(n)] as const).filter(([, n]) => n > 0));
    main.append(h('h2', {}, 'Executions in the last hour', ` (${r.total})`),
      h('table', { id: 'executions-by-status' }, h('tr', {}, h('th', {}, 'status'), h('th', {}, 'count')),
        ...[...by].sort((a, b) => b[1] - a[1]).map(([s, n]) => h('tr', {}, h('td', {}, h('a', { href: `#/executions?status=${s}` }, badge(s))), h('td', {}, n))),
        by.size === 0 ? h('tr', {}, h('td', { colspan: 2, class: 'muted' }, 'none')) : null));
  }
  if (can('rules:read')) {
    const r = await call<{ rules: Array<{ name: string; fired: number; matched: number; enabled: boolean }> }>('AdminRules/ListRules');
    const top = r.rules.filter((x) => Number(x.fired) > 0).sort((a, b) => Number(b.fired) - Number(a.fired)).slice(0, 5);
    main.append(h('h2', {}, 'Top firing rules (since the hub started)'),
      h('table', {}, h('tr', {}, h('th', {}, 'rule'), h('th', {}, 'fired'), h('th', {}, 'matched')),
        ...top.map((x) => h('tr', {}, h('td', {}, x.name), h('td', {}, x.fired), h('td', {}, x.matched))),
        top.length === 0 ? h('tr', {}, h('td', { colspan: 3, class: 'muted' }, 'none fired')) : null));
  }
}

function factsText(f: Record<string, unknown> | undefined): string {
  if (!f) return '';
  return Object.entries(f).filter(([, v]) => v !== '' && v !== 0 && v !== null && typeof v !== 'object').map(([k, v]) => `${k}=${String(v)}`).join(' ');
}

async function agentsPage(main: HTMLElement, q: URLSearchParams): Promise<void> {
  const selector = h('input', { id: 'agent-selector', placeholder: 'selector, e.g. role=web,env!=dev', value: q.get('selector') ?? '', size: 36 });
  const facts = h('input', { id: 'agent-facts', placeholder: 'facts, e.g. os=linux,arch=arm64', value: q.get('facts') ?? '', size: 30 });
  const status = h('select', { id: 'agent-status' }, ...['', 'online', 'offline', 'revoked'].map((s) => h('option', { value: s, selected: s === (q.get('status') ?? '') }, s || 'any status')));
  const form = h('form', { class: 'filters' }, selector, facts, status, h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (e) => { e.preventDefault(); go(`#/agents?${new URLSearchParams({ selector: selector.value, facts: facts.value, status: status.value }).toString()}`); });
  const body = h('div', {});
  clear(main, h('h1', {}, 'Agents'), form, body);
  // Paged by the hub, in id order: `after` is the last id of the previous page.
  const after = q.get('after') ?? '';
  const r = await call<{ agents: Agent[]; total: number }>('AdminAgents/ListAgents', { selectorExpr: q.get('selector') ?? '', factsExpr: q.get('facts') ?? '', status: q.get('status') ?? '', limit: PAGE, afterId: after });
  const rows = r.agents;
  const table = h('table', { id: 'agents' },
    h('tr', {}, ...['status', 'hostname', 'id', 'labels', 'facts', 'last seen', 'certificate expires', ''].map((c) => h('th', {}, c))),
    ...rows.map((a) => h('tr', { 'data-agent': a.id },
      h('td', {}, badge(a.status)),
      h('td', {}, h('a', { href: `#/agents/${a.id}` }, a.hostname || '-')),
      h('td', { class: 'mono' }, a.id),
      h('td', {}, ...Object.entries(a.labels).map(([k, v]) => h('span', { class: 'label' }, `${k}=${v}`))),
      h('td', { class: 'mono' }, factsText(a.facts)),
      h('td', {}, a.online ? 'now' : ago(a.lastSeenMs)),
      h('td', {}, a.certExpiresAtMs ? `${when(a.certExpiresAtMs)} (${ago(a.certExpiresAtMs)})` : '-'),
      h('td', {}, can('agents:revoke') && !a.revoked ? h('button', { class: 'danger revoke', onclick: () => void revokeAgent(a) }, 'Revoke') : null))));
  const last = rows[rows.length - 1];
  clear(body, rows.length === 0 ? h('p', { class: 'muted' }, 'No agents match.') : table,
    h('div', { class: 'pager' },
      after ? h('button', { onclick: () => { q.delete('after'); go(`#/agents?${q.toString()}`); } }, '⇤ First page') : null,
      h('span', { class: 'muted', id: 'agents-total' }, `${rows.length} shown of ${r.total} matching`),
      rows.length === PAGE && last ? h('button', { id: 'agents-next', onclick: () => { q.set('after', last.id); go(`#/agents?${q.toString()}`); } }, 'Next →') : null));
}

async function revokeAgent(a: Agent): Promise<void> {
  const ok = await confirmDialog('Revoke agent', `Revoke ${a.hostname || a.id}? Its certificate is revoked and its connection cut; it must be enrolled again to come back.`, 'Revoke');
  if (!ok) return;
  try {
    await call('AdminAgents/RevokeAgent', { id: a.id, reason: `revoked from the web console by ${session?.username ?? ''}` });
    await render();
  } catch (err) { document.getElementById('main')?.prepend(errorBox(err)); }
}

function executionsTable(list: Execution[]): HTMLElement {
  return h('table', { id: 'executions' },
    h('tr', {}, ...['status', 'action', 'agent', 'requested by', 'requested', 'duration', 'id'].map((c) => h('th', {}, c))),
    ...list.map((e) => h('tr', { 'data-execution': e.id },
      h('td', {}, badge(e.status)),
      h('td', {}, e.action),
      h('td', { class: 'mono' }, e.agentId ? h('a', { href: `#/agents/${e.agentId}` }, e.agentId.slice(0, 12)) : '-'),
      h('td', {}, e.requestedBy),
      h('td', {}, ago(e.requestedMs)),
      h('td', {}, e.finishedMs ? `${((e.finishedMs - (e.startedMs || e.requestedMs)) / 1000).toFixed(1)}s` : '-'),
      h('td', { class: 'mono' }, h('a', { href: `#/executions/${e.id}` }, e.id)))));
}

async function agentPage(main: HTMLElement, id: string): Promise<void> {
  const a = await call<Agent>('AdminAgents/GetAgent', { id });
  clear(main, h('h1', {}, `Agent ${a.hostname || a.id}`),
    h('div', { class: 'panel' }, h('dl', { class: 'kv' },
      h('dt', {}, 'status'), h('dd', {}, badge(a.status)),
      h('dt', {}, 'id'), h('dd', { class: 'mono' }, a.id),
      h('dt', {}, 'tenant'), h('dd', {}, a.tenant),
      h('dt', {}, 'labels'), h('dd', {}, ...Object.entries(a.labels).map(([k, v]) => h('span', { class: 'label' }, `${k}=${v}`))),
      h('dt', {}, 'facts'), h('dd', { class: 'mono' }, factsText(a.facts)),
      h('dt', {}, 'address'), h('dd', {}, a.remoteAddress || '-'),
      h('dt', {}, 'enrolled'), h('dd', {}, when(a.enrolledAtMs)),
      h('dt', {}, 'last seen'), h('dd', {}, a.online ? 'now' : ago(a.lastSeenMs)),
      h('dt', {}, 'certificate expires'), h('dd', {}, when(a.certExpiresAtMs))),
      can('agents:revoke') && !a.revoked ? h('div', { class: 'row' }, h('button', { class: 'danger revoke', onclick: () => void revokeAgent(a) }, 'Revoke')) : null));
  if (can('executions:read')) {
    const r = await call<{ executions: Execution[] }>('AdminExecutions/ListExecutions', { agentId: a.id, limit: 20 });
    main.append(h('h2', {}, 'Recent executions'), executionsTable(r.executions));
  }
  if (can('events:read')) main.append(h('h2', {}, 'Events (live)'), eventsView({ agent: a.id }));
}

async function executionsPage(main: HTMLElement, q: URLSearchParams): Promise<void> {
  const field = (name: string, ph: string) => h('input', { id: `ex-${name}`, placeholder: ph, value: q.get(name) ?? '', size: 18 });
  const action = field('action', 'action, e.g. core.echo');
  const agent = field('agent', 'agent id or hostname');
  const status = h('select', { id: 'ex-status' }, ...['', 'requested', 'scheduled', 'running', 'succeeded', 'failed', 'timeout', 'canceled', 'abandoned', 'error']
    .map((s) => h('option', { value: s, selected: s === (q.get('status') ?? '') }, s || 'any status')));
  const form = h('form', { class: 'filters' }, action, agent, status, h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (e) => { e.preventDefault(); go(`#/executions?${new URLSearchParams({ action: action.value, agent: agent.value, status: status.value }).toString()}`); });
  clear(main, h('h1', {}, 'Executions'), form);
  const before = q.get('before') ?? '';
  const r = await call<{ executions: Execution[] }>('AdminExecutions/ListExecutions', { action: q.get('action') ?? '', agentId: q.get('agent') ?? '', status: q.get('status') ?? '', limit: PAGE, beforeId: before });
  main.append(r.executions.length === 0 ? h('p', { class: 'muted' }, 'No executions match.') : executionsTable(r.executions));
  const last = r.executions[r.executions.length - 1];
  main.append(h('div', { class: 'pager' },
    before ? h('button', { onclick: () => { q.delete('before'); go(`#/executions?${q.toString()}`); } }, '⇤ Newest') : null,
    r.executions.length === PAGE && last ? h('button', { id: 'older', onclick: () => { q.set('before', last.id); go(`#/executions?${q.toString()}`); } }, 'Older →') : null));
}

async function executionPage(main: HTMLElement, id: string): Promise<void> {
  const out = h('pre', { class: 'output', id: 'output' });
  const head = h('div', { class: 'panel' });
  const msg = h('div', {});
  clear(main, h('h1', {}, 'Execution ', h('span', { class: 'mono' }, id)), msg, head, h('h2', {}, 'Output'), out);
  let rec: Execution | undefined;
  let loaded = false;
  let pending = '';
  const show = (e: Execution) => {
    // Answers and stream updates can cross (a cancel's answer may come after the stream said
    // "canceled"): a finished execution never goes back to running.
    if (rec && FINAL.has(rec.status) && !FINAL.has(e.status)) return;
    rec = e;
    const final = FINAL.has(e.status);
    clear(head, h('dl', { class: 'kv' },
      h('dt', {}, 'status'), h('dd', { id: 'exec-status' }, badge(e.status), e.status !== 'succeeded' && final && e.exitCode ? ` exit ${e.exitCode}` : '', e.error ? ` — ${e.error}` : ''),
      h('dt', {}, 'action'), h('dd', {}, e.action),
      h('dt', {}, 'agent'), h('dd', { class: 'mono' }, e.agentId ? h('a', { href: `#/agents/${e.agentId}` }, e.agentId) : '-'),
      h('dt', {}, 'requested by'), h('dd', {}, e.requestedBy, e.rule ? ` (rule ${e.rule})` : ''),
      h('dt', {}, 'requested'), h('dd', {}, when(e.requestedMs)),
      h('dt', {}, 'finished'), h('dd', {}, when(e.finishedMs))),
    h('div', { class: 'row' },
      can('executions:cancel') && !final ? h('button', { class: 'danger', id: 'cancel', onclick: () => void call<Execution>('AdminExecutions/CancelExecution', { id }).then(show, (err) => clear(msg, errorBox(err))) }, 'Cancel') : null,
      can('executions:cancel') && final ? h('button', { id: 'rerun', onclick: () => void call<{ messages: StreamUpdate[] }>('AdminExecutions/RerunExecution', { id, follow: false }).then((r) => {
        const next = r.messages.find((m) => m.state)?.state;
        if (next) go(`#/executions/${next.id}`);
      }, (err) => clear(msg, errorBox(err))) }, 'Re-run') : null));
  };
  // The live stream first, then the record: output arriving in between is not lost.
  if (can('events:read')) {
    const s = openStream({ kinds: 'executions', execution: id }, (m: StreamMessage) => {
      if (m.kind === 'output') {
        if (!loaded) pending += m.data; else out.append(m.data);
        out.scrollTop = out.scrollHeight;
      } else if (m.kind === 'execution' && rec && m.record.id === id) {
        show({ ...rec, ...(m.record as unknown as Partial<Execution>), output: undefined } as Execution);
      }
    }, () => undefined);
    leave.push(() => s.ws.close());
    await s.opened.catch((err: Error) => clear(msg, errorBox(err)));
  }
  const e = await call<Execution>('AdminExecutions/GetExecution', { id });
  const text = b64text(e.output);
  // Chunks that came before the record may already be in its output.
  let overlap = Math.min(pending.length, text.length);
  while (overlap > 0 && !text.endsWith(pending.slice(0, overlap))) overlap--;
  out.textContent = text + pending.slice(overlap);
  loaded = true;
  show(e);
  if (e.outputTruncated) main.append(h('p', { class: 'muted' }, 'The output was cut at the hub\'s limit.'));
}

async function runPage(main: HTMLElement, q: URLSearchParams): Promise<void> {
  clear(main, h('h1', {}, 'Run an action'));
  const r = await call<{ actions: Action[] }>('AdminPacks/ListActions', { pack: '' });
  const actions = r.actions.filter((a) => a.ref !== 'core.command');
  const chosen = q.get('action') ?? actions[0]?.ref ?? '';
  const pick = h('select', { id: 'run-action', onchange: (e: Event) => go(`#/run?action=${encodeURIComponent((e.target as HTMLSelectElement).value)}`) },
    ...actions.map((a) => h('option', { value: a.ref, selected: a.ref === chosen }, a.ref)));
  const action = actions.find((a) => a.ref === chosen);
  const agents = can('agents:list') ? (await call<{ agents: Agent[] }>('AdminAgents/ListAgents', { status: 'online', limit: 500 })).agents : [];
  const agent = h('select', { id: 'run-agent' }, h('option', { value: '' }, '(use the selector)'), ...agents.map((a) => h('option', { value: a.id }, `${a.hostname} (${a.id.slice(0, 12)})`)));
  const selector = h('input', { id: 'run-selector', placeholder: 'selector, e.g. role=web' });
  const inputs = new Map<string, () => string | undefined>();
  const params = (action?.parameters ?? []).map((p) => {
    const def = p.defaultJson ? b64text(p.defaultJson) : '';
    const choices = p.enumJson ? JSON.parse(b64text(p.enumJson)) as unknown[] : undefined;
    let el: HTMLInputElement | HTMLSelectElement;
    if (choices) {
      el = h('select', { id: `param-${p.name}`, name: p.name }, ...(p.required ? [] : [h('option', { value: '' }, '')]), ...choices.map((c) => h('option', { value: typeof c === 'string' ? c : JSON.stringify(c), selected: JSON.stringify(c) === def }, String(c))));
      inputs.set(p.name, () => el.value || undefined);
    } else if (p.type === 'boolean') {
      const box = h('input', { id: `param-${p.name}`, name: p.name, type: 'checkbox', checked: def === 'true' });
      el = box;
      inputs.set(p.name, () => String(box.checked));
    } else {
      el = h('input', { id: `param-${p.name}`, name: p.name, type: p.secret ? 'password' : 'text', placeholder: def ? `default ${def}` : p.type, required: p.required && !def, autocomplete: 'off' });
      inputs.set(p.name, () => (el as HTMLInputElement).value || undefined);
    }
    return [h('label', { for: `param-${p.name}` }, p.name, p.required ? ' *' : '', h('span', { class: 'muted' }, ` (${p.type})${p.description ? ` ${p.description}` : ''}`)), el];
  });
  const msg = h('div', {});
  const form = h('form', { class: 'panel fields', id: 'run-form' },
    h('label', { for: 'run-action' }, 'Action'), pick, action?.description ? h('p', { class: 'muted' }, action.description) : null,
    h('label', { for: 'run-agent' }, 'Agent', agents.length === 500 ? h('span', { class: 'muted' }, ' (the first 500 online; or use a selector)') : null), agent,
    h('label', { for: 'run-selector' }, 'or agents matching a selector (online ones)'), selector,
    h('h2', {}, 'Parameters'), ...(params.length ? params.flat() : [h('p', { class: 'muted' }, 'none')]),
    h('div', { class: 'row' }, h('button', { class: 'primary', type: 'submit', id: 'run-submit' }, 'Run')), msg);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    clear(msg);
    const parameters: Record<string, string> = {};
    for (const [k, get] of inputs) { const v = get(); if (v !== undefined) parameters[k] = v; }
    void call<{ messages: StreamUpdate[] }>('AdminExecutions/RunAction', { action: chosen, agentId: agent.value, selectorExpr: agent.value ? '' : selector.value, parameters, follow: false }).then((res) => {
      const ids = [...new Set(res.messages.map((m) => m.state?.id).filter((x): x is string => !!x))];
      if (ids.length === 1) go(`#/executions/${ids[0]}`);
      else if (ids.length > 1) go(`#/executions?action=${encodeURIComponent(chosen)}`);
      else clear(msg, h('div', { class: 'error' }, 'No agent matched: nothing ran.'));
    }, (err) => clear(msg, errorBox(err)));
  });
  main.append(form);
}

function eventsView(filter: Record<string, string>): HTMLElement {
  const list = h('table', { id: 'events' }, h('tr', {}, ...['time', 'type', 'agent', 'payload'].map((c) => h('th', {}, c))));
  const state = h('span', { class: 'muted', id: 'events-state' }, 'connecting…');
  let paused = false;
  let skipped = 0;
  const pause = h('button', { id: 'events-pause', type: 'button', onclick: () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    skipped = 0;
    state.textContent = paused ? 'paused' : 'live';
  } }, 'Pause');
  const s = openStream({ kinds: 'events', ...filter }, (m) => {
    if (m.kind !== 'event') return;
    // Paused: the table stays as it is; the count says what went by.
    if (paused) { state.textContent = `paused: ${++skipped} not shown`; return; }
    list.children[0]!.after(h('tr', {}, h('td', {}, when(m.timeMs)), h('td', {}, m.type), h('td', { class: 'mono' }, m.agent), h('td', { class: 'mono' }, JSON.stringify(m.payload).slice(0, 300))));
    while (list.children.length > 201) list.lastChild?.remove();
  }, (reason) => { state.textContent = `stream closed: ${reason}`; });
  void s.opened.then(() => { state.textContent = 'live'; }, () => { state.textContent = 'the live stream could not be opened'; });
  leave.push(() => s.ws.close());
  return h('div', {}, h('div', { class: 'row' }, pause, state), list);
}

async function eventsPage(main: HTMLElement, q: URLSearchParams): Promise<void> {
  const type = h('input', { id: 'events-type', placeholder: 'type globs, e.g. core.*,webhook.*', value: q.get('type') ?? '', size: 30 });
  const form = h('form', { class: 'filters' }, type, h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (e) => { e.preventDefault(); go(`#/events?${new URLSearchParams({ type: type.value }).toString()}`); });
  clear(main, h('h1', {}, 'Events'), form, eventsView(q.get('type') ? { type: q.get('type')! } : {}));
}

async function rulesPage(main: HTMLElement): Promise<void> {
  const r = await call<{ rules: Array<{ name: string; pack: string; enabled: boolean; trigger: string; action: string; target: string; matched: number; fired: number; suppressed: number }> }>('AdminRules/ListRules');
  const msg = h('div', {});
  const testName = h('select', { id: 'test-rule' }, ...r.rules.map((x) => h('option', { value: x.name }, x.name)));
  const testEvent = h('textarea', { id: 'test-event', placeholder: '{"type": "core.heartbeat", "payload": {...}}' });
  const testOut = h('pre', { class: 'mono', id: 'test-result' });
  const test = h('form', { class: 'panel fields' }, h('h2', {}, 'Test a rule against an event'), testName, testEvent, h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Test')), testOut);
  test.addEventListener('submit', (e) => {
    e.preventDefault();
    void call<{ matched: boolean; reasons: string[]; action: string; warnings: string[] }>('AdminRules/TestRule', { name: testName.value, eventJson: textB64(testEvent.value) })
      .then((t) => { testOut.textContent = `${t.matched ? 'matched' : 'did not match'}\n${t.reasons.join('\n')}${t.warnings.length ? `\n${t.warnings.join('\n')}` : ''}`; }, (err) => clear(testOut, errorBox(err)));
  });
  clear(main, h('h1', {}, 'Rules'), msg,
    h('table', { id: 'rules' }, h('tr', {}, ...['rule', 'enabled', 'trigger', 'action', 'target', 'matched', 'fired', 'suppressed', ''].map((c) => h('th', {}, c))),
      ...r.rules.map((x) => h('tr', { 'data-rule': x.name },
        h('td', {}, x.name), h('td', {}, x.enabled ? 'yes' : 'no'), h('td', {}, x.trigger), h('td', {}, x.action), h('td', {}, x.target),
        h('td', {}, x.matched), h('td', {}, x.fired), h('td', {}, x.suppressed),
        h('td', {}, can('rules:write') ? h('button', { onclick: () => void call('AdminRules/SetRuleEnabled', { name: x.name, enabled: !x.enabled }).then(() => render(), (err) => clear(msg, errorBox(err))) }, x.enabled ? 'Disable' : 'Enable') : null)))),
    r.rules.length ? test : h('p', { class: 'muted' }, 'No rules.'));
}

async function packsPage(main: HTMLElement): Promise<void> {
  const r = await call<{ packs: Array<{ name: string; version: string; description: string; actions: string[]; rules: string[]; sensors: string[]; installedMs: number; installedBy: string }> }>('AdminPacks/ListPacks');
  clear(main, h('h1', {}, 'Packs'),
    h('table', { id: 'packs' }, h('tr', {}, ...['pack', 'version', 'description', 'actions', 'rules', 'sensors', 'installed'].map((c) => h('th', {}, c))),
      ...r.packs.map((p) => h('tr', {}, h('td', {}, p.name), h('td', {}, p.version), h('td', {}, p.description),
        h('td', {}, ...p.actions.map((a) => h('div', {}, can('actions:execute') ? h('a', { href: `#/run?action=${encodeURIComponent(a)}` }, a) : a))),
        h('td', {}, p.rules.join(', ')), h('td', {}, p.sensors.join(', ')), h('td', {}, `${ago(p.installedMs)} by ${p.installedBy}`)))));
}

async function kvPage(main: HTMLElement, q: URLSearchParams): Promise<void> {
  const prefix = h('input', { id: 'kv-prefix', placeholder: 'key prefix', value: q.get('prefix') ?? '' });
  const form = h('form', { class: 'filters' }, prefix, h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (e) => { e.preventDefault(); go(`#/kv?${new URLSearchParams({ prefix: prefix.value }).toString()}`); });
  const r = await call<{ entries: Array<{ key: string; scope: string; secret: boolean; value: string; createdBy: string; updatedAtMs: number; expiresAtMs: number }> }>('AdminKv/List', { prefix: q.get('prefix') ?? '' });
  const msg = h('div', {});
  clear(main, h('h1', {}, 'Datastore'), form, msg,
    h('table', { id: 'kv' }, h('tr', {}, ...['key', 'scope', 'value', 'updated', 'expires', ''].map((c) => h('th', {}, c))),
      ...r.entries.map((x) => {
        const cell = h('td', { class: 'mono' }, x.secret ? h('span', { class: 'muted' }, 'secret (hidden)') : x.value);
        return h('tr', { 'data-key': x.key }, h('td', {}, x.key), h('td', {}, x.scope), cell, h('td', {}, ago(x.updatedAtMs)), h('td', {}, x.expiresAtMs ? when(x.expiresAtMs) : 'never'),
          h('td', {}, x.secret && can('kv:decrypt') ? h('button', { onclick: () => void call<{ value: string }>('AdminKv/Get', { key: x.key, scope: x.scope, decrypt: true }).then((v) => clear(cell, v.value), (err) => clear(msg, errorBox(err))) }, 'Decrypt (audited)') : null));
      })));
}

async function auditPage(main: HTMLElement, q: URLSearchParams): Promise<void> {
  const actor = h('input', { id: 'audit-actor', placeholder: 'actor', value: q.get('actor') ?? '' });
  const method = h('input', { id: 'audit-method', placeholder: 'method contains', value: q.get('method') ?? '' });
  const form = h('form', { class: 'filters' }, actor, method, h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (e) => { e.preventDefault(); go(`#/audit?${new URLSearchParams({ actor: actor.value, method: method.value }).toString()}`); });
  const r = await call<{ messages: Array<{ timeMs: number; actor: string; tenant: string; method: string; target: string; result: string; sourceAddress: string; detail: string }> }>('AdminAudit/ListAudit', { limit: 200, actor: q.get('actor') ?? '', methodContains: q.get('method') ?? '' });
  clear(main, h('h1', {}, 'Audit log'), form,
    h('table', { id: 'audit' }, h('tr', {}, ...['time', 'actor', 'tenant', 'method', 'target', 'result', 'source', 'detail'].map((c) => h('th', {}, c))),
      ...r.messages.slice().reverse().map((a) => h('tr', {}, h('td', {}, when(a.timeMs)), h('td', {}, a.actor), h('td', {}, a.tenant), h('td', { class: 'mono' }, a.method.replace('/trellis.v1.', '')),
        h('td', {}, a.target), h('td', {}, badge(a.result === 'ok' ? 'succeeded' : 'failed'), ` ${a.result}`), h('td', {}, a.sourceAddress), h('td', {}, a.detail)))));
}

// ------------------------------------------------------------------ router

async function render(): Promise<void> {
  for (const fn of leave) fn();
  leave = [];
  const [path, query] = (location.hash.replace(/^#/, '') || '/overview').split('?') as [string, string | undefined];
  const q = new URLSearchParams(query ?? '');
  const parts = path.split('/').filter(Boolean);
  if (!session) session = await getSession().catch(() => undefined);
  if (!session || parts[0] === 'login') {
    if (session) { go('#/overview'); return; }
    loginPage();
    return;
  }
  const page = parts[0] ?? 'overview';
  const main = await frame(page);
  try {
    switch (page) {
      case 'agents': await (parts[1] ? agentPage(main, decodeURIComponent(parts[1])) : agentsPage(main, q)); break;
      case 'executions': await (parts[1] ? executionPage(main, decodeURIComponent(parts[1])) : executionsPage(main, q)); break;
      case 'run': await runPage(main, q); break;
      case 'events': await eventsPage(main, q); break;
      case 'rules': await rulesPage(main); break;
      case 'packs': await packsPage(main); break;
      case 'kv': await kvPage(main, q); break;
      case 'audit': await auditPage(main, q); break;
      default: await overviewPage(main);
    }
  } catch (err) {
    main.append(errorBox(err));
  }
  main.setAttribute('data-ready', page);
}

setUnauthenticatedHandler(() => { session = undefined; if (!location.hash.startsWith('#/login')) go('#/login'); });
window.addEventListener('hashchange', () => void render());
void render();
