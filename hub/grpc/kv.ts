/**
 * The datastore on the admin port (AdminKv): thin handlers over hub/kv. Values are never
 * logged. A decrypting Get is checked for kv:decrypt here (the method table only asks kv:read)
 * and writes its own audit record, since Get is a read and wrap.ts audits only mutations.
 */
import * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { TrellisError } from '../../common/errors.js';
import { unary, serverStream, type WrapDeps, type CallContext } from './wrap.js';
import { authorize } from '../authz/index.js';
import { writeTenant } from './admin.js';
import { Keyring } from '../secrets/keyring.js';
import type { KvCaller, KvDoc, KvScope, RotateProgress } from '../kv/index.js';
import type { HubComponents } from '../components.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const S = '/trellis.v1.AdminKv';
const kvService = () => v1.AdminKv.service;

function caller(ctx: CallContext): KvCaller {
  const p = ctx.principal!;
  return { username: p.username, isAdmin: p.grants.isAdmin };
}

const scopeOf = (s: string): KvScope | undefined => (s ? (s as KvScope) : undefined);

function entry(d: KvDoc, value: string, decrypted: boolean): T.KvEntry {
  return {
    key: d.key, scope: d.scope, secret: d.secret, value, decrypted, private: d.private, createdBy: d.createdBy,
    expiresAtMs: d.expiresAt, updatedAtMs: d.updatedAt, keyVersion: d.secret ? Keyring.versionOf(d.value) ?? 0 : 0,
  };
}

const target = (ctx: CallContext, scope: string, key: string) => `kv:${ctx.tenant}/${scope || 'tenant'}/${String(key).slice(0, 240)}`;

export function addKvServices(server: grpc.Server, c: HubComponents, deps: WrapDeps): void {
  server.addService(kvService(), {
    Set: unary<T.KvSetRequest__Output, T.KvEntry>(deps, `${S}/Set`, async (req, ctx) => {
      ctx.target = target(ctx, req.scope, req.key);
      const d = await c.kv.set(writeTenant(ctx), caller(ctx), {
        key: req.key, value: req.value, secret: req.secret, ttlMs: req.ttlMs, scope: scopeOf(req.scope), private: req.private,
      });
      return entry(d, d.value, false);
    }),
    Get: unary<T.KvGetRequest__Output, T.KvEntry>(deps, `${S}/Get`, async (req, ctx) => {
      ctx.target = target(ctx, req.scope, req.key);
      if (req.decrypt) authorize(ctx.principal!, 'kv:decrypt'); // refused: wrap.ts audits the denial
      const d = await c.kv.getDoc(writeTenant(ctx), caller(ctx), req.key, scopeOf(req.scope));
      if (!req.decrypt || !d.secret) return entry(d, d.value, false);
      let result: 'ok' | 'invalid' = 'invalid';
      let detail = 'decrypt';
      try {
        const plain = await c.kv.open(d);
        result = 'ok';
        return entry(d, plain, true);
      } catch (e) {
        detail = `decrypt failed: ${(e as Error).message}`.slice(0, 300);
        throw e;
      } finally {
        deps.audit?.record({
          timeMs: Date.now(), actor: ctx.principal!.kind === 'apikey' ? `apikey:${ctx.principal!.apiKeyId}@${ctx.principal!.username}` : ctx.principal!.username,
          tenant: ctx.tenant ?? '', method: ctx.method, target: ctx.target.slice(0, 256), result, sourceAddress: ctx.peer, detail,
        });
      }
    }),
    List: unary<T.KvListRequest__Output, T.KvListResponse>(deps, `${S}/List`, async (req, ctx) => {
      ctx.target = `kv:${ctx.tenant}/${req.prefix.slice(0, 200)}*`;
      const docs = await c.kv.list(writeTenant(ctx), caller(ctx), req.prefix);
      return { entries: docs.map((d) => entry(d, d.secret ? '' : d.value, false)) };
    }),
    Delete: unary<T.KvDeleteRequest__Output, T.KvDeleteResponse>(deps, `${S}/Delete`, async (req, ctx) => {
      ctx.target = target(ctx, req.scope, req.key);
      await c.kv.delete(writeTenant(ctx), caller(ctx), req.key, scopeOf(req.scope));
      return {};
    }),
    RotateKey: serverStream<T.RotateKeyRequest__Output, T.RotateProgress>(deps, `${S}/RotateKey`, async (_req, ctx, write) => {
      ctx.target = 'kv:master-key';
      // At most one progress message per 200 ms, and the latest one always goes out (trailing edge):
      // a rotation that stalls or slows shows where it stands, not a state up to 200 ms old.
      let last = 0;
      let sentFinal = false;
      let pending: RotateProgress | undefined;
      let trailing: NodeJS.Timeout | undefined;
      const send = (p: RotateProgress) => { clearTimeout(trailing); trailing = undefined; pending = undefined; last = Date.now(); sentFinal = p.finished; write({ ...p }); };
      let p: RotateProgress | undefined;
      try {
        p = await c.kv.rotate((p) => {
          if (p.finished || p.done === 0 || Date.now() - last >= 200) { send(p); return; }
          pending = p;
          trailing ??= setTimeout(() => { if (pending) send(pending); }, 200 - (Date.now() - last));
        });
      } finally {
        clearTimeout(trailing);
      }
      if (!p) throw new TrellisError('TRELLIS_E_INTERNAL', 'the rotation reported nothing');
      if (!sentFinal) write({ ...p, finished: true });
    }),
  });
}
