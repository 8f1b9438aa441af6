/**
 * Valid example messages per request type, the seeds of the "mutated" cases. They name objects
 * of the fuzzer's own ("fz-…"), never the principals the fuzzer calls with, so a valid call
 * cannot disable the fuzzer's own credentials. Types without an entry get a generated plausible
 * message (gen.ts plausibleMessage).
 */
export interface ExampleContext {
  /** A join token with uses left (Enroll examples). */
  joinToken?: string;
  /** A well-formed PEM CSR (Enroll and Renew examples). */
  csrPem?: string;
}

const RULE_YAML = 'name: fz-rule\ntrigger: core.cpu\ncriteria:\n  - "trigger.payload.pct > 90"\naction: core.noop\ntarget: local\n';
const RULE_JSON = JSON.stringify({ name: 'fz-rule-j', trigger: 'webhook.fz', action: 'core.noop', parameters: { x: '{{ trigger.payload.x }}' } });
const PACK_YAML = 'name: fzpack\nversion: 1.0.0\ndescription: fuzz\n';
const ACTION_YAML = 'name: echo\nrunner: command\ncommand: ["echo", "{{ parameters.msg }}"]\nparameters:\n  msg: { type: string, required: true }\n';

export function examplesFor(typeName: string, ctx: ExampleContext): Array<Record<string, unknown>> {
  const csr = ctx.csrPem ?? '';
  switch (typeName) {
    case 'LoginRequest': return [{ username: 'fz-target', password: 'not-the-password-1' }];
    case 'CreateJoinTokenRequest': return [{ tenant: 'default', uses: 3, ttlMs: 60_000, labels: { env: 'fz' }, description: 'fz', hostLabels: ['role'] }];
    case 'RevokeJoinTokenRequest': return [{ id: 'fz-token' }];
    case 'ListAgentsRequest': return [{ selectorExpr: 'env=prod,role in (a,b),!x', status: 'online' }, { selector: { env: 'fz' } }];
    case 'GetAgentRequest': case 'RevokeAgentRequest': return [{ id: '01hzzzzzzzzzzzzzzzzzzzzzzz', reason: 'fz' }];
    case 'SetAgentLabelsRequest': return [{ id: '01hzzzzzzzzzzzzzzzzzzzzzzz', labels: { env: 'fz' }, remove: ['x'] }];
    case 'PruneAgentsRequest': return [{ offlineForMs: 86_400_000 * 365 * 50, dryRun: true }];
    case 'IssueHubCertificateRequest': return [{ names: ['fz.example'], ttlMs: 3_600_000 }];
    case 'RunRequest': return [{ selectorExpr: 'env=fz-nowhere', argv: ['true'], timeoutMs: 1000 }];
    case 'CreateUserRequest': return [{ username: 'fz-target', password: 'fz-password-123456', roles: ['viewer'], tenants: ['default'] }];
    case 'GetUserRequest': case 'DeleteUserRequest': case 'UnlockUserRequest': return [{ username: 'fz-target' }];
    case 'SetPasswordRequest': return [{ username: 'fz-target', currentPassword: 'x', newPassword: 'fz-password-654321' }];
    case 'SetUserActiveRequest': return [{ username: 'fz-target', active: false }];
    case 'CreateApiKeyRequest': return [{ name: 'fz-key' }];
    case 'SetApiKeyEnabledRequest': case 'DeleteApiKeyRequest': return [{ id: 'fz-key-id', enabled: false }];
    case 'CreateRoleRequest': return [{ name: 'fz-role', description: 'fz', grants: [{ permission: 'kv:read', scope: '' }, { permission: 'actions:execute', scope: 'pack:fzpack' }] }];
    case 'GrantPermissionRequest': case 'RevokePermissionRequest': return [{ role: 'fz-role', grant: { permission: 'agents:run', scope: 'action:fzpack.echo' } }];
    case 'AssignRoleRequest': return [{ role: 'fz-role', user: 'fz-target' }, { role: 'fz-role', group: 'fz-group' }];
    case 'CreateTenantRequest': return [{ name: 'fz-tenant', description: 'fz' }];
    case 'TenantMemberRequest': return [{ tenant: 'fz-tenant', user: 'fz-target' }];
    case 'CreateGroupRequest': return [{ name: 'fz-group', description: 'fz', ldapGroups: ['cn=fz'] }];
    case 'GroupMemberRequest': return [{ group: 'fz-group', user: 'fz-target' }];
    case 'ListAuditRequest': return [{ limit: 5, actor: 'admin', methodContains: 'Kv' }];
    case 'KvSetRequest': return [{ key: 'fz/a', value: 'v', ttlMs: 60_000 }, { key: 'fz/s', value: 's3cret', secret: true, scope: 'user' }, { key: 'fz/p', value: 'p', private: true }];
    case 'KvGetRequest': return [{ key: 'fz/s', decrypt: true, scope: 'user' }];
    case 'KvListRequest': return [{ prefix: 'fz/' }];
    case 'KvDeleteRequest': return [{ key: 'fz/a' }];
    case 'InstallPackRequest': return [{
      files: [{ path: 'pack.yaml', content: Buffer.from(PACK_YAML), mode: 0o644 }, { path: 'actions/echo.yaml', content: Buffer.from(ACTION_YAML), mode: 0o644 },
        { path: 'rules/r.yaml', content: Buffer.from(RULE_YAML.replace('fz-rule', 'r')), mode: 0o644 }],
      force: true,
    }];
    case 'GetPackRequest': case 'RemovePackRequest': return [{ name: 'fzpack', force: true }];
    case 'ListActionsRequest': return [{ pack: 'core' }];
    case 'GetActionRequest': return [{ ref: 'fzpack.echo' }];
    case 'CreateRuleRequest': return [{ definition: RULE_YAML, replace: true, source: 'fz.yaml' }, { definition: RULE_JSON, replace: true }];
    case 'GetRuleRequest': case 'DeleteRuleRequest': case 'SetRuleEnabledRequest': return [{ name: 'fz-rule', enabled: false }];
    case 'TestRuleRequest': return [
      { definition: RULE_YAML, eventJson: Buffer.from('{"type":"core.cpu","payload":{"pct":95},"agent":"x"}') },
      { name: 'fz-rule', eventJson: Buffer.from('{"pct":1}') },
    ];
    case 'RunActionRequest': return [{ action: 'fzpack.echo', selectorExpr: 'env=fz-nowhere', parameters: { msg: '"hi"' } }, { action: 'core.noop', agentId: 'fz-nowhere', parameters: { x: '{{ kv.fz/a }}' } }];
    case 'ListExecutionsRequest': return [{ action: 'core.noop', status: 'failed', limit: 10, sinceMs: 1 }];
    case 'GetExecutionRequest': case 'FollowExecutionRequest': case 'CancelExecutionRequest': return [{ id: '01hzzzzzzzzzzzzzzzzzzzzzzz' }];
    case 'RerunExecutionRequest': return [{ id: '01hzzzzzzzzzzzzzzzzzzzzzzz', follow: false }];
    case 'CreateWebhookRequest': return [{ name: 'fz-hook', description: 'fz' }];
    case 'DeleteWebhookRequest': return [{ name: 'fz-hook' }];
    case 'SystemRequest': return [{ argument: 'fz' }];
    case 'EnrollRequest': return ctx.joinToken ? [{ token: ctx.joinToken, csr, hostname: 'fz-host', labels: { role: 'fz' } }] : [];
    case 'RenewRequest': return csr ? [{ csr }] : [];
    case 'AgentMessage': return agentMessages();
    default: return [];
  }
}

/** One valid example of every AgentChannel frame an agent sends after hello. */
export function agentMessages(): Array<Record<string, unknown>> {
  const now = Date.now();
  return [
    { heartbeat: { sentAtMs: now, edgeBoot: 'fz-boot', edgeRules: [{ rule: 'fz-rule', matched: 3, fired: 1, suppressed: 2 }] } },
    { events: { seq: 1, events: [{ id: `01hz${now}`, type: 'core.cpu', payloadJson: Buffer.from('{"pct":95}'), timeMs: now }] } },
    { events: { seq: 2, events: [{ id: `01hy${now}`, type: 'trellis.edge_execution', payloadJson: Buffer.from('{"rule":"fz-rule","action":"core.noop","status":"succeeded"}'), timeMs: now }] } },
    { started: { executionId: '01hzzzzzzzzzzzzzzzzzzzzzzz', startedMs: now, pid: 42 } },
    { output: { executionId: '01hzzzzzzzzzzzzzzzzzzzzzzz', stream: 1, data: Buffer.from('out\n'), seq: 1 } },
    { result: { executionId: '01hzzzzzzzzzzzzzzzzzzzzzzz', status: 'succeeded', exitCode: 0, startedMs: now, finishedMs: now } },
    { configAck: { version: 'fz-version', error: '' } },
    { hello: { facts: { hostname: 'fz-host', os: 'linux', arch: 'x64', cpus: 2, memoryBytes: 1e9, agentVersion: '0.1.0' } } },
  ];
}

export function helloMessage(): Record<string, unknown> {
  return { hello: { facts: { hostname: 'fz-host', os: 'linux', arch: 'x64', osRelease: '6', cpus: 2, memoryBytes: 2e9, agentVersion: '0.1.0' }, labels: { a: 'b' } } };
}

/** One valid example of every HubMessage frame the hub sends an agent (the seeds of the agent-side fuzzer's mutated frames). */
export function hubMessages(): Array<Record<string, unknown>> {
  const now = Date.now();
  const rule = { name: 'fz-rule', trigger: 'core.cpu', criteria: ['trigger.payload.pct > 90'], action: 'core.noop', target: 'local' };
  const action = { ref: 'core.noop', runner: 'command', argv: ['true'] };
  return [
    { welcome: { agentId: '01hzzzzzzzzzzzzzzzzzzzzzzz', tenant: 'default', heartbeatIntervalMs: 10_000, caBundle: [], serverTimeMs: now } },
    { action: { executionId: '01hzzzzzzzzzzzzzzzzzzzzzzz', argv: ['true'], timeoutMs: 5000, env: { FZ: '1' }, cwd: '/', sealedEnv: { S: 'not-sealed' }, runner: 'command', runAs: '', script: Buffer.from('') } },
    { action: { executionId: '01hyyyyyyyyyyyyyyyyyyyyyyy', argv: ['a'], timeoutMs: 1000, runner: 'script', script: Buffer.from('#!/bin/sh\nexit 0\n') } },
    { action: { executionId: '01hxxxxxxxxxxxxxxxxxxxxxxx', argv: ['GET', 'http://127.0.0.1:1/'], timeoutMs: 1000, runner: 'http' } },
    { cancel: { executionId: '01hzzzzzzzzzzzzzzzzzzzzzzz' } },
    { eventAck: { seq: 1, refused: 1, refusedTypes: ['core.fz'] } },
    { caBundle: { certificates: ['-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'], renew: false, renewInMs: 60_000 } },
    { heartbeat: { sentAtMs: now } },
    { config: { version: 'fz-1', sensors: [{ name: 'fz.cpu', kind: 'cpu', trigger: 'core.cpu', intervalMs: 60_000, configJson: Buffer.from('{}') }], rules: [{ name: 'fz-rule', trigger: 'core.cpu', definitionJson: Buffer.from(JSON.stringify(rule)), actionJson: Buffer.from(JSON.stringify(action)) }], sealedSecrets: { 'kv:fz': 'not-sealed' } } },
    { resultAck: { executionIds: ['01hzzzzzzzzzzzzzzzzzzzzzzz'] } },
  ];
}
