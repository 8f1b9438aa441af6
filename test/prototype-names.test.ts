/**
 * Names that are properties of Object.prototype ("toString", "constructor", "valueOf",
 * "hasOwnProperty") are ordinary unknown names: found by the fuzzer (bench/fuzz), the built-in role
 * table and the rule-operator aliases were plain objects, so `toString` was a "built-in role"
 * (GetRole answered a phantom role, AssignRole / UnassignRole / DeleteRole failed with INTERNAL
 * "grants is not iterable", CreateUser accepted it) and the operator "constructor" resolved to the
 * Object function. Real hub, real TLS/gRPC.
 */
import t from 'tap';
import { Metadata, status } from '@grpc/grpc-js';
import { CODE_KEY, fromGrpcError } from '../common/grpc-errors.js';
import { startHub, callError } from './helpers/hub.js';
import { call } from '../cli/client.js';
import { unaryT } from './helpers/admin.js';
import { BUILTIN_ROLES } from '../hub/authz/index.js';
import { normalizeOperator } from '../common/rules/index.js';
import type * as T from '../common/proto-gen/trellis/v1/index.js';

const NAMES = ['toString', 'constructor', 'valueOf', 'hasOwnProperty', '__proto__'];

t.test('the tables hold only their own names', async (t) => {
  for (const n of NAMES) {
    t.equal(BUILTIN_ROLES[n], undefined, `no built-in role ${n}`);
    t.equal(normalizeOperator(n), undefined, `no operator ${n}`);
  }
  t.ok(BUILTIN_ROLES.admin && BUILTIN_ROLES.user && BUILTIN_ROLES.observer, 'the built-in roles are still there');
  t.equal(normalizeOperator('not in'), 'ninside', 'aliases still resolve');
  // A client reading trellis-error-code from a (hostile) server or remote host: only real codes.
  for (const n of NAMES) {
    const md = new Metadata();
    md.set(CODE_KEY, n);
    t.equal(fromGrpcError({ code: status.NOT_FOUND, details: 'x', metadata: md }).code, 'TRELLIS_E_NOT_FOUND', `trellis-error-code ${n} is not taken as a code`);
  }
});

t.test('role calls naming Object.prototype properties are NOT_FOUND, never INTERNAL', async (t) => {
  const h = await startHub();
  t.teardown(() => h.close());
  const a = h.admin;
  await call<T.CreateUserRequest, T.UserInfo__Output>(a, a.users, a.users.CreateUser, { username: 'proto-user', password: 'proto-password-123', roles: [], tenants: ['default'] });
  for (const n of NAMES.slice(0, 4)) {
    const calls: Array<[string, () => Promise<unknown>]> = [
      ['GetRole', () => call<T.GetRoleRequest, T.RoleInfo__Output>(a, a.roles, a.roles.GetRole, { name: n })],
      ['AssignRole', () => call<T.AssignRoleRequest, T.RoleInfo__Output>(a, a.roles, a.roles.AssignRole, { role: n, user: 'proto-user' })],
      ['UnassignRole', () => call<T.AssignRoleRequest, T.RoleInfo__Output>(a, a.roles, a.roles.UnassignRole, { role: n, user: 'proto-user' })],
      ['DeleteRole', () => call<T.DeleteRoleRequest, T.DeleteRoleResponse__Output>(a, a.roles, a.roles.DeleteRole, { name: n })],
      ['GrantPermission', () => call<T.GrantPermissionRequest, T.RoleInfo__Output>(a, a.roles, a.roles.GrantPermission, { role: n, grant: { permission: 'kv:read', scope: '' } })],
      ['CreateUser', () => call<T.CreateUserRequest, T.UserInfo__Output>(a, a.users, a.users.CreateUser, { username: `u-${n.toLowerCase()}`, password: 'proto-password-123', roles: [n], tenants: [] })],
    ];
    for (const [what, fn] of calls) {
      const e = (await callError(fn())) ?? { grpcCode: status.OK, message: 'succeeded' };
      t.equal(e.grpcCode, status.NOT_FOUND, `${what} with role ${n}: NOT_FOUND (${e.message})`);
      t.match(e.message, new RegExp(`no role ${n}`), 'names the unknown role');
    }
  }
  const user = await call<T.GetUserRequest, T.UserInfo__Output>(a, a.users, a.users.GetUser, { username: 'proto-user' });
  t.same(user.roles, [], 'no phantom role was assigned');
  const rule = (await callError(unaryT<T.TestRuleRequest, T.TestRuleResponse__Output>(h, a.rules, a.rules.TestRule, {
    definition: JSON.stringify({ name: 'x', trigger: 'core.cpu', action: 'core.noop', criteria: [{ path: 'trigger.payload.x', type: 'constructor', pattern: 1 }] }), eventJson: Buffer.from('{"x":1}'),
  }))) ?? { grpcCode: status.OK, message: 'succeeded' };
  t.equal((rule as { code?: unknown }).code, status.INVALID_ARGUMENT, 'TestRule with operator constructor: INVALID_ARGUMENT');
  t.match(rule.message, /unknown operator "constructor"/, 'the operator is reported as written, not as a function');
});
