/**
 * The datastore: tenant-scoped key/values, plain or secret, with TTL, user scope and private
 * tenant keys. Secrets are AES-256-GCM under the hub master key ring (hub/secrets/keyring.ts)
 * with `trellis-kv/v1 \0 tenant \0 scope \0 owner \0 key` bound as additional data, so a
 * ciphertext moved to another key, scope, user or tenant fails to open.
 *
 * Key rotation: a new key version file is written (atomically) first, then every secret whose
 * ciphertext names an older version is re-encrypted in batches, each inside store.update (so it
 * never overwrites a newer write, and writes made meanwhile already use the new key). An old
 * version's file is deleted only after a full scan finds no value naming it. A hub killed
 * mid-way holds both versions on restart and `resume()` finishes the job.
 */
import { TrellisError } from '../../common/errors.js';
import type { Store } from '../store/index.js';
import { Keyring } from '../secrets/keyring.js';

export const KEY_MAX = 256;
export const VALUE_MAX = 64 * 1024;
const KEY_RE = /^[A-Za-z0-9._/-]+$/;
const BATCH = 500;

export type KvScope = 'tenant' | 'user';

export interface KvDoc {
  id: string;
  tenant: string;
  scope: KvScope;
  /** The user for scope user, '' for scope tenant. */
  owner: string;
  key: string;
  secret: boolean;
  /** Plain text, or a keyring ciphertext for secrets. */
  value: string;
  createdBy: string;
  private: boolean;
  /** 0: never. */
  expiresAt: number;
  createdAt: number;
  updatedAt: number;
  [k: string]: unknown;
}

/** Who is calling: their name, and whether they are an administrator (sees private keys). */
/** Something else encrypted under the master key ring (see KvStore.addKeyHolder). */
export interface KeyHolder { rekey(): Promise<void>; versionsInUse(): Promise<Set<number>> }

export interface KvChange { tenant: string; scope: KvScope; owner: string; key: string; deleted: boolean }

export interface KvCaller { username: string; isAdmin: boolean }

export interface KvSetInput { key: string; value: string; secret?: boolean; ttlMs?: number; scope?: KvScope; private?: boolean }

export interface RotateProgress { total: number; done: number; keyVersion: number; finished: boolean }

export function checkKey(key: unknown): string {
  if (typeof key !== 'string' || key.length === 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'name a key: 1-256 characters of A-Z a-z 0-9 . _ / -');
  if (key.length > KEY_MAX) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `key is ${key.length} characters: the limit is ${KEY_MAX}`);
  if (!KEY_RE.test(key)) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'a key may hold only A-Z a-z 0-9 . _ / - characters');
  return key;
}

function checkValue(value: unknown): string {
  if (typeof value !== 'string') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'the value must be text');
  const n = Buffer.byteLength(value, 'utf8');
  if (n > VALUE_MAX) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `value is ${n} bytes: the limit is ${VALUE_MAX} bytes (64 KiB)`);
  return value;
}

function checkScope(s: unknown): KvScope {
  if (s === undefined || s === '' || s === 'tenant') return 'tenant';
  if (s === 'user') return 'user';
  throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `scope is tenant or user, not "${String(s).slice(0, 32)}"`);
}

export const kvId = (tenant: string, scope: KvScope, owner: string, key: string) => `${tenant}\u0000${scope}\u0000${owner}\u0000${key}`;
export const kvAad = (d: Pick<KvDoc, 'tenant' | 'scope' | 'owner' | 'key'>) => `trellis-kv/v1\u0000${d.tenant}\u0000${d.scope}\u0000${d.owner}\u0000${d.key}`;

const live = (d: KvDoc, now: number) => d.expiresAt === 0 || d.expiresAt > now;
const visible = (d: KvDoc, who: KvCaller) => (d.scope === 'user' ? d.owner === who.username : !d.private || d.createdBy === who.username || who.isAdmin);

export interface KvStoreOptions {
  now?: () => number;
  onError?: (err: unknown) => void;
  /**
   * Tests only (hub/kv/test-hooks.ts): a rotation stops once this many values are re-encrypted
   * and durable, calls `onRotationPaused`, and waits for close.
   */
  pauseRotationAfter?: number;
  onRotationPaused?: (done: number, total: number) => void;
}

export class KvStore {
  private rotation?: Promise<void>;
  private listeners = new Set<(p: RotateProgress) => void>();
  private lastProgress?: RotateProgress;
  private sweepTimer?: NodeJS.Timeout;
  private closed = false;
  private readonly changeListeners = new Set<(c: KvChange) => void>();
  private readonly keyHolders: KeyHolder[] = [];

  private readonly closedSignal: Promise<void>;
  private signalClosed!: () => void;

  constructor(private readonly store: Store, readonly keyring: Keyring, private readonly opts: KvStoreOptions = {}) {
    this.closedSignal = new Promise((r) => { this.signalClosed = r; });
  }

  private now(): number { return this.opts.now?.() ?? Date.now(); }

  /**
   * Other data encrypted under the master key (webhook secrets, ...): a rotation asks each holder
   * to re-encrypt, and never drops a key version a holder still uses.
   */
  addKeyHolder(h: KeyHolder): void { this.keyHolders.push(h); }

  /** Called after a value is set or deleted (not on re-encryption: the value is the same). */
  onChange(fn: (c: KvChange) => void): () => void {
    this.changeListeners.add(fn);
    return () => this.changeListeners.delete(fn);
  }

  private changed(d: Pick<KvDoc, 'tenant' | 'scope' | 'owner' | 'key'>, deleted: boolean): void {
    for (const fn of this.changeListeners) {
      try { fn({ tenant: d.tenant, scope: d.scope, owner: d.owner, key: d.key, deleted }); } catch (err) { this.opts.onError?.(err); }
    }
  }

  /**
   * Another hub (shared store) set or deleted the value stored under `id`: listeners hear of it
   * as of a local change (agents whose config uses it get it again).
   */
  changedElsewhere(id: string): void {
    const [tenant, scope, owner, key, ...rest] = id.split('\u0000');
    if (rest.length > 0 || key === undefined || (scope !== 'tenant' && scope !== 'user')) return;
    this.changed({ tenant: tenant!, scope, owner: owner!, key }, !this.store.peek<KvDoc>('kv', id));
  }

  /** Periodic sweep of expired values. */
  startSweeper(everyMs = 60_000): void {
    this.sweepTimer = setInterval(() => void this.sweep().catch((e) => this.opts.onError?.(e)), everyMs);
    this.sweepTimer.unref();
  }

  async sweep(): Promise<number> {
    const now = this.now();
    const dead = await this.store.list<KvDoc>('kv', (d) => !live(d, now));
    let n = 0;
    for (const d of dead) {
      const gone = await this.store.update<KvDoc>('kv', d.id, (cur) => (cur && !live(cur, this.now()) ? undefined : cur));
      if (!gone) n++;
    }
    return n;
  }

  private idFor(tenant: string, who: KvCaller, key: string, scope: KvScope): string {
    return kvId(tenant, scope, scope === 'user' ? who.username : '', key);
  }

  /**
   * A `--private` tenant key lives in its creator's own name space (owner = creator), beside
   * the shared key of the same name: another user's `kv set` of that name writes the shared key
   * and learns nothing (no refusal, no different answer), and can never overwrite it. For its
   * creator, their private key shadows a shared one of the same name.
   */
  private privateId(tenant: string, who: KvCaller, key: string): string {
    return kvId(tenant, 'tenant', who.username, key);
  }

  /**
   * Moves `--private` keys written before private keys had their own name space (owner '') to
   * their creator's (re-encrypting secrets: the owner is bound to the ciphertext). Idempotent;
   * run once at hub start.
   */
  async migratePrivateKeys(): Promise<number> {
    const legacy = await this.store.list<KvDoc>('kv', (d) => d.scope === 'tenant' && d.private && d.owner === '' && !!d.createdBy);
    for (const d of legacy) {
      const moved = { ...d, id: kvId(d.tenant, 'tenant', d.createdBy, d.key), owner: d.createdBy };
      if (d.secret) moved.value = this.keyring.encrypt(this.keyring.decrypt(d.value, kvAad(d)), kvAad(moved));
      if (!(await this.store.get<KvDoc>('kv', moved.id))) await this.store.put('kv', moved);
      await this.store.delete('kv', d.id);
    }
    return legacy.length;
  }

  async set(tenant: string, who: KvCaller, input: KvSetInput): Promise<KvDoc> {
    const key = checkKey(input.key);
    const value = checkValue(input.value);
    const scope = checkScope(input.scope);
    if (input.private && scope === 'user') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', '--private applies to tenant scope; a user-scope key is already visible only to its user');
    const ttl = input.ttlMs ?? 0;
    if (!Number.isFinite(ttl) || ttl < 0) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'ttl must be zero (no expiry) or positive');
    const owner = scope === 'user' || input.private ? who.username : '';
    const id = kvId(tenant, scope, owner, key);
    const now = this.now();
    const res = await this.store.update<KvDoc>('kv', id, (cur) => {
      const existing = cur && live(cur, now) ? cur : undefined;
      // Only a private key written before migratePrivateKeys can sit at a shared id.
      if (existing && !visible(existing, who)) throw new TrellisError('TRELLIS_E_PERMISSION_DENIED', `key ${key} cannot be written`);
      const base = { tenant, scope, owner, key };
      // Encrypted here, inside the atomic update: the key version used is the current one at the moment of the write.
      return {
        id, ...base, secret: !!input.secret, value: input.secret ? this.keyring.encrypt(value, kvAad(base)) : value,
        createdBy: existing?.createdBy ?? who.username, private: !!input.private, expiresAt: ttl > 0 ? now + ttl : 0,
        createdAt: existing?.createdAt ?? now, updatedAt: now,
      };
    });
    this.changed(res!, false);
    return res!;
  }

  /** The document (value as stored: ciphertext for secrets), or NOT_FOUND. */
  async getDoc(tenant: string, who: KvCaller, key: string, scope?: KvScope): Promise<KvDoc> {
    checkKey(key);
    const s = checkScope(scope);
    let d: KvDoc | undefined;
    if (s === 'tenant') {
      // One's own private key first (it shadows the shared one), then the shared key; an
      // administrator also reaches another user's private key when no shared one exists.
      const own = await this.store.get<KvDoc>('kv', this.privateId(tenant, who, key));
      if (own && own.private && own.createdBy === who.username && live(own, this.now())) return own;
      d = await this.store.get<KvDoc>('kv', this.idFor(tenant, who, key, s));
      if (!d && who.isAdmin) {
        d = (await this.store.list<KvDoc>('kv', (x) => x.tenant === tenant && x.scope === 'tenant' && x.private && x.key === key))
          .sort((a, b) => (a.createdBy < b.createdBy ? -1 : 1))[0];
      }
    } else {
      d = await this.store.get<KvDoc>('kv', this.idFor(tenant, who, key, s));
    }
    if (!d || !visible(d, who)) throw new TrellisError('TRELLIS_E_NOT_FOUND', `no key ${key} in ${s === 'user' ? 'your user scope' : `tenant ${tenant}`}`);
    if (!live(d, this.now())) {
      void this.store.update<KvDoc>('kv', d.id, (cur) => (cur && !live(cur, this.now()) ? undefined : cur)).catch(() => undefined);
      throw new TrellisError('TRELLIS_E_NOT_FOUND', `no key ${key} in ${s === 'user' ? 'your user scope' : `tenant ${tenant}`} (it expired)`);
    }
    return d;
  }

  /** Opens a secret document. Retries once on a version just dropped by a rotation. */
  async open(d: KvDoc): Promise<string> {
    if (!d.secret) return d.value;
    const v = Keyring.versionOf(d.value);
    if (v !== undefined && !this.keyring.has(v)) {
      const again = await this.store.get<KvDoc>('kv', d.id);
      if (again && again.value !== d.value) d = again;
    }
    return this.keyring.decrypt(d.value, kvAad(d));
  }

  async get(tenant: string, who: KvCaller, key: string, o: { scope?: KvScope; decrypt?: boolean } = {}): Promise<{ doc: KvDoc; value: string }> {
    const doc = await this.getDoc(tenant, who, key, o.scope);
    return { doc, value: o.decrypt ? await this.open(doc) : doc.value };
  }

  async list(tenant: string, who: KvCaller, prefix = ''): Promise<KvDoc[]> {
    if (prefix.length > KEY_MAX) throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `prefix is over ${KEY_MAX} characters`);
    const now = this.now();
    const docs = await this.store.list<KvDoc>('kv', (d) => d.tenant === tenant && d.key.startsWith(prefix) && live(d, now) && visible(d, who));
    return docs.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.scope < b.scope ? -1 : 1));
  }

  async delete(tenant: string, who: KvCaller, key: string, scope?: KvScope): Promise<void> {
    const d = await this.getDoc(tenant, who, key, scope);
    await this.store.delete('kv', d.id);
    this.changed(d, true);
  }

  // ------------------------------------------------------------ rotation

  get rotating(): boolean { return this.rotation !== undefined; }

  /**
   * Adds a new key version, then re-encrypts every secret in the background. `onProgress` sees
   * progress events; the promise resolves when the old versions are gone. A rotation already
   * running is joined rather than started twice.
   */
  async rotate(onProgress?: (p: RotateProgress) => void): Promise<RotateProgress> {
    if (!this.rotation) this.start(true);
    return this.join(onProgress);
  }

  /** Finishes a pending rotation (old versions still on disk); a no-op when there is none. */
  async resume(onProgress?: (p: RotateProgress) => void): Promise<RotateProgress> {
    if (!this.rotation) this.start(false);
    return this.join(onProgress);
  }

  /** Set synchronously, so two callers never both add a version. */
  private start(newVersion: boolean): void {
    this.lastProgress = undefined;
    this.rotation = (async () => {
      if (this.closed) throw new TrellisError('TRELLIS_E_SHUTDOWN', 'the hub is shutting down');
      if (newVersion) await this.keyring.addVersion(); // on disk (fsynced) before anything is re-encrypted
      await this.run();
    })().finally(() => { this.rotation = undefined; });
  }

  private async join(onProgress?: (p: RotateProgress) => void): Promise<RotateProgress> {
    if (onProgress) {
      this.listeners.add(onProgress);
      if (this.lastProgress && !this.lastProgress.finished) onProgress(this.lastProgress);
    }
    try {
      await this.rotation;
      return this.lastProgress!;
    } finally {
      if (onProgress) this.listeners.delete(onProgress);
    }
  }

  private emit(p: RotateProgress): void {
    this.lastProgress = p;
    for (const l of this.listeners) { try { l(p); } catch { /* a listener's failure is its own */ } }
  }

  private async run(): Promise<void> {
    const target = this.keyring.current;
    const stale = (d: KvDoc) => d.secret && (Keyring.versionOf(d.value) ?? target) < target;
    for (;;) {
      const todo = (await this.store.list<KvDoc>('kv', stale)).map((d) => d.id);
      const total = todo.length;
      let done = 0;
      this.emit({ total, done, keyVersion: target, finished: false });
      for (let i = 0; i < todo.length; i += BATCH) {
        if (this.closed) throw new TrellisError('TRELLIS_E_SHUTDOWN', 'the hub is shutting down; the key rotation resumes at next start');
        await Promise.all(todo.slice(i, i + BATCH).map((id) => this.store.update<KvDoc>('kv', id, (cur) => {
          if (!cur || !stale(cur)) return cur; // deleted or rewritten meanwhile: never overwrite a newer write
          if (!live(cur, this.now())) return undefined; // swept
          let plain: string;
          try { plain = this.keyring.decrypt(cur.value, kvAad(cur)); } catch (e) {
            this.opts.onError?.(new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `kv ${cur.tenant}/${cur.scope}/${cur.key}: cannot re-encrypt: ${(e as Error).message}`));
            return cur; // a damaged value stays as it is (and keeps its old version alive)
          }
          return { ...cur, value: this.keyring.encrypt(plain, kvAad(cur)) };
        })));
        done = Math.min(total, i + BATCH);
        this.emit({ total, done, keyVersion: target, finished: false });
        if (this.opts.pauseRotationAfter !== undefined && done >= this.opts.pauseRotationAfter && done < total) {
          this.opts.onRotationPaused?.(done, total);
          await this.closedSignal; // test hook: stays here (both versions in use) until the hub closes
        }
      }
      // Nothing may name a version we drop: scan again, with no await between the scan and the drop.
      const inUse = new Set<number>();
      const left = await this.store.list<KvDoc>('kv', (d) => {
        if (!d.secret) return false;
        const v = Keyring.versionOf(d.value);
        if (v !== undefined && v < target) inUse.add(v);
        return stale(d) && live(d, this.now());
      });
      if (left.length > 0 && left.length < total) continue; // written meanwhile with an old key: once more
      for (const h of this.keyHolders) {
        await h.rekey();
        for (const v of await h.versionsInUse()) if (v < target) inUse.add(v);
      }
      for (const v of this.keyring.versions()) if (v < target && !inUse.has(v)) await this.keyring.dropVersion(v);
      this.emit({ total, done: total, keyVersion: target, finished: true });
      return;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.signalClosed();
    clearInterval(this.sweepTimer);
    await this.rotation?.catch(() => undefined);
  }
}
