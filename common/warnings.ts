/**
 * grpc-js passes an IP target as the TLS server name and Node warns about it (DEP0123) on
 * every connection to a hub addressed by IP. The certificate is still checked against the IP
 * SAN, so the warning is noise: drop that one code, keep every other warning.
 */
export function silenceIpServernameWarning(): void {
  const emit = process.emitWarning as ((...a: unknown[]) => void) & { trellisFiltered?: boolean };
  if (emit.trellisFiltered) return;
  const filtered = function (this: unknown, warning: unknown, ...rest: unknown[]) {
    const code = typeof rest[0] === 'object' ? (rest[0] as { code?: string } | null)?.code : rest[1];
    if (code === 'DEP0123') return;
    return emit.call(process, warning, ...rest);
  } as typeof emit;
  filtered.trellisFiltered = true;
  process.emitWarning = filtered as typeof process.emitWarning;
}
