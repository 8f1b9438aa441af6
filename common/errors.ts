/**
 * Every error Trellis reports carries a stable code from this one list. The README's
 * troubleshooting table is generated from the same descriptions, so keep them actionable.
 */
export const ERROR_CODES = {
  TRELLIS_E_INTERNAL: 'an internal error; the hub log has the details under the request id',
  TRELLIS_E_INVALID_ARGUMENT: 'a request or a file had a bad value; the message names it',
  TRELLIS_E_CONFIG: 'the configuration is invalid; the message names the key and the file',
  TRELLIS_E_NOT_FOUND: 'the named object does not exist',
  TRELLIS_E_ALREADY_EXISTS: 'an object with that name already exists',
  TRELLIS_E_UNAUTHENTICATED: 'no valid credentials: run `trellis login` again',
  TRELLIS_E_PERMISSION_DENIED: 'the caller lacks the permission the call needs',
  TRELLIS_E_TOKEN_INVALID: 'the join token is malformed, unknown or revoked',
  TRELLIS_E_TOKEN_EXPIRED: 'the join token expired; create a new one with `trellis tokens create`',
  TRELLIS_E_TOKEN_USED_UP: 'the join token has no uses left; create a new one with `trellis tokens create`',
  TRELLIS_E_CA_PIN_MISMATCH: 'the hub presented a CA that does not match the fingerprint in the token',
  TRELLIS_E_CSR_INVALID: 'the certificate signing request is malformed or its signature does not verify',
  TRELLIS_E_CERT_INVALID: 'a certificate or key is malformed, expired or does not match',
  TRELLIS_E_CERT_REVOKED: 'the agent certificate was revoked; re-enroll the agent with a new join token',
  TRELLIS_E_CERT_EXPIRED: 'the agent certificate expired; re-enroll with `trellis agent enroll --force`',
  TRELLIS_E_CA_NO_KEY: 'the hub has no CA key (operator-supplied CA); issue agent certificates yourself',
  TRELLIS_E_ALREADY_ENROLLED: 'the data directory already holds an identity; pass --force to replace it',
  TRELLIS_E_AGENT_OFFLINE: 'the target agent is not connected',
  TRELLIS_E_UNAVAILABLE: 'the hub cannot be reached; check the address and that `trellis hub run` is up',
  TRELLIS_E_DNS: 'the hub\'s host name does not resolve (DNS); check its spelling or use an address its certificate holds',
  TRELLIS_E_WRONG_PORT: 'the address is the hub\'s agent port where the admin port is expected (CLI, enroll) or the reverse (agent run); `trellis hub run` prints both ports',
  TRELLIS_E_CA_MISMATCH: 'the hub presents a certificate from a CA that the given CA file, fingerprint or TRELLIS_CA does not hold; nothing was sent',
  TRELLIS_E_CERT_NAME: 'the hub\'s certificate does not name the address dialed; use a name it holds or add one with `trellis certs issue-hub --name`',
  TRELLIS_E_TOO_LARGE: 'a message or value is over its size limit',
  TRELLIS_E_TIMEOUT: 'the operation did not finish in time',
  TRELLIS_E_SHUTDOWN: 'the daemon is shutting down',
  TRELLIS_E_PACK_INVALID: 'a pack file is invalid; the message names the file, the line and the field',
  TRELLIS_E_IN_USE: 'the object is still used (enabled rules call actions of the pack); the message names them: disable or change them, or pass --force where offered',
  TRELLIS_E_RULE_INVALID: 'a rule is invalid; the message names the field',
  TRELLIS_E_SECRET_INVALID: 'a sealed secret or ciphertext does not open (tampered, or for another agent, tenant or key)',
  TRELLIS_E_AGENT_BUSY: 'the agent is at its concurrency limit; the execution waits or was refused',
  TRELLIS_E_RATE_LIMITED: 'too many requests of this kind in a short time (renewals, failed logins from your address, unauthenticated calls or logins in progress); wait and retry (the message says how long)',
  TRELLIS_E_CA_ROTATED: 'the hub\'s CA was rotated and this side still trusts (or holds a certificate from) the old one: re-enroll the agent (`trellis agent enroll --force` with a new token) or log in again with the new CA',
  TRELLIS_E_ROTATION: 'the CA rotation is not in a state that allows this step (none running, one already running, or agents still on the old CA); the message says what to do',
  TRELLIS_E_UNIMPLEMENTED: 'this operation is part of the contract but not built in this release',
  TRELLIS_E_SSH: 'an SSH connection, login or remote command of `trellis agents install` failed; the message names the host and why',
  TRELLIS_E_SSH_HOST_KEY: 'a server\'s SSH host key is not in known_hosts (add it, or pass --accept-new-host-keys) or has changed (check it; nothing was sent)',
  TRELLIS_E_HOST_NOT_READY: 'a managed server lacks what the agent needs (Node >= 20 on PATH, tar, root or passwordless sudo); the message says what',
  TRELLIS_E_SNAPSHOT_INVALID: 'a snapshot does not open: wrong passphrase, or the file is damaged, truncated or tampered with; nothing was restored',
  TRELLIS_E_LOCKED: 'another process holds the hub data directory (DATA/hub.lock); the message names it (pid, host, start time): stop it first',
  TRELLIS_E_MAINTENANCE: 'the hub is in maintenance mode: only administrators may call it and no new executions start; the message is the operator\'s; see `trellis maintenance status`',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class TrellisError extends Error {
  override name = 'TrellisError';
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

/** True when err, or any error in its cause chain, is a TrellisError (with the given code). */
export function isTrellisError(err: unknown, code?: ErrorCode): err is TrellisError {
  for (let e: unknown = err, depth = 0; e && depth < 10; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof TrellisError && (code === undefined || e.code === code)) return true;
  }
  return false;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
