/**
 * Authentication backends: a small interface and an explicit list. Backends are tried in the
 * configured order: the first that knows the user decides; one that is unavailable (directory
 * down) is skipped with an error logged, so the local admin can still log in.
 */
import type { Store } from '../store/index.js';
import { verifyPassword, dummyPasswordHash, inlineKdf, type Kdf } from './passwords.js';
import type { UserDoc } from './users.js';

export type BackendResult =
  | { kind: 'ok'; username: string; groups?: string[] }
  | { kind: 'unknown-user' }
  | { kind: 'bad-password' }
  | { kind: 'unavailable'; message: string };

export interface AuthBackend {
  readonly name: string;
  authenticate(username: string, password: string): Promise<BackendResult>;
  close?(): Promise<void>;
}

/** Local users: scrypt hashes in the store. Unknown users cost one dummy KDF run. */
export class LocalBackend implements AuthBackend {
  readonly name = 'local';
  constructor(private readonly store: Store, private readonly kdf: Kdf = inlineKdf) {}

  async authenticate(username: string, password: string): Promise<BackendResult> {
    const user = await this.store.get<UserDoc>('users', username);
    const local = user && (user.source ?? 'local') === 'local' && user.passwordHash;
    const ok = await verifyPassword(password, local ? user.passwordHash : await dummyPasswordHash(), this.kdf);
    if (!local) return { kind: 'unknown-user' };
    return ok ? { kind: 'ok', username } : { kind: 'bad-password' };
  }
}
