import { TrellisError } from '../common/errors.js';

/**
 * Canonical serial form used everywhere in Trellis: lowercase hex, no separators, leading zeros
 * stripped ("0" for zero). Accepts X509Certificate.serialNumber / tls PeerCertificate.serialNumber
 * (uppercase hex, possibly with a leading "0" or "00"), colon- or space-separated openssl output,
 * and an optional 0x prefix.
 */
export function normalizeSerial(hexOrPeer: string): string {
  if (typeof hexOrPeer !== 'string') {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'serial must be a hex string');
  }
  const hex = hexOrPeer.trim().replace(/^0x/i, '').replace(/[:\s]/g, '');
  if (!/^[0-9a-fA-F]+$/.test(hex)) {
    throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', `serial '${hexOrPeer}' is not hexadecimal`);
  }
  return hex.toLowerCase().replace(/^0+(?=.)/, '');
}
