/**
 * AdminSnapshots: create, list, download and delete the hub's snapshots (hub/snapshots).
 * Administrators only (the method table); every call but List is audited, naming the snapshot,
 * never the passphrase.
 */
import type * as grpc from '@grpc/grpc-js';
import { v1 } from '../../common/proto.js';
import { TrellisError } from '../../common/errors.js';
import { serverStream, unary, type WrapDeps } from './wrap.js';
import { checkString } from '../validate.js';
import { checkPassphrase } from '../snapshots/format.js';
import { checkSnapshotId, MAX_NOTE, type SnapshotInfo, type Snapshots } from '../snapshots/index.js';
import type * as T from '../../common/proto-gen/trellis/v1/index.js';

const S = '/trellis.v1';
/** Bytes of snapshot per download message (well under the admin port's message limit). */
export const DOWNLOAD_CHUNK = 256 * 1024;

function wire(i: SnapshotInfo): T.SnapshotInfo {
  return { id: i.id, createdAtMs: i.createdAtMs, sizeBytes: i.sizeBytes, createdBy: i.createdBy, note: i.note, sha256: i.sha256, documents: i.documents, segments: i.segments };
}

export function addSnapshotServices(server: grpc.Server, snapshots: Snapshots, deps: WrapDeps): void {
  server.addService(v1.AdminSnapshots.service, {
    CreateSnapshot: unary<T.CreateSnapshotRequest__Output, T.SnapshotInfo>(deps, `${S}.AdminSnapshots/CreateSnapshot`, async (req, ctx) => {
      const note = checkString(req.note, 'note', MAX_NOTE);
      if (typeof req.passphrase !== 'string') throw new TrellisError('TRELLIS_E_INVALID_ARGUMENT', 'passphrase must be a string');
      checkPassphrase(req.passphrase);
      const info = await snapshots.create({ passphrase: req.passphrase, createdBy: ctx.principal!.username, note });
      ctx.target = `snapshot:${info.id}`;
      ctx.detail = `bytes=${info.sizeBytes} documents=${info.documents} segments=${info.segments} sha256=${info.sha256.slice(0, 16)}`;
      return wire(info);
    }),
    ListSnapshots: unary<T.ListSnapshotsRequest__Output, T.ListSnapshotsResponse>(deps, `${S}.AdminSnapshots/ListSnapshots`, async () => {
      return { snapshots: (await snapshots.list()).map(wire) };
    }),
    DownloadSnapshot: serverStream<T.DownloadSnapshotRequest__Output, T.SnapshotChunk>(deps, `${S}.AdminSnapshots/DownloadSnapshot`, async (req, ctx, write, drained) => {
      const id = checkSnapshotId(req.id);
      ctx.target = `snapshot:${id}`;
      const { info, fh } = await snapshots.open(id);
      try {
        let sent = 0;
        let first = true;
        while (!ctx.signal.aborted) {
          const buf = Buffer.allocUnsafe(DOWNLOAD_CHUNK);
          const { bytesRead } = await fh.read(buf, 0, buf.length, sent);
          if (bytesRead === 0 && !first) break;
          // The listing's size is what the client checks against: never send past it.
          const take = Math.min(bytesRead, info.sizeBytes - sent);
          const ok = write({ info: first ? wire(info) : null, data: buf.subarray(0, take) });
          first = false;
          sent += take;
          if (sent >= info.sizeBytes) break;
          if (!ok) await drained();
        }
        ctx.detail = `bytes=${sent}`;
      } finally {
        await fh.close();
      }
    }),
    DeleteSnapshot: unary<T.DeleteSnapshotRequest__Output, T.SnapshotInfo>(deps, `${S}.AdminSnapshots/DeleteSnapshot`, async (req, ctx) => {
      const id = checkSnapshotId(req.id);
      ctx.target = `snapshot:${id}`;
      const info = await snapshots.delete(id);
      return info ? wire(info) : { id };
    }),
  });
}
