/**
 * The agent's side of the contract only: trellis/v1/agent_channel.proto (which imports no other
 * file), so `trellis agent run` loads nothing else (every admin service costs each agent ~5 MB).
 *
 * Built on protobufjs directly, not @grpc/proto-loader: proto-loader also loads protobufjs'
 * descriptor extension (google/protobuf/descriptor.proto as reflection, for the file descriptors
 * grpc reflection would serve), ~0.9 MB of heap an agent keeps for its whole life and never uses.
 * The method definitions are the ones proto-loader makes (same serializer, same toObject options
 * from LOADER_OPTIONS), so the messages are the ones common/proto.ts encodes and decodes.
 * Two differences of protobufjs 8 (ours) from 7 (proto-loader's): it leaves out proto3 default
 * values (the same message, fewer bytes), and it refuses a string that is not UTF-8 (7 decodes
 * it with U+FFFD): the stream fails and the agent reconnects. test/agent-idle.test.ts compares
 * both on every frame type and on mutated frames.
 */
import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { join } from 'node:path';
import type { ProtoGrpcType as ChannelProto } from './proto-gen/agent_channel.js';
import { LOADER_OPTIONS, PROTO_DIR } from './proto-files.js';

export const CHANNEL_PROTO_FILE = 'trellis/v1/agent_channel.proto';
const SERVICE = 'trellis.v1.AgentChannel';

/** The channel's .proto, parsed and resolved (field names in camelCase, as proto-loader's keepCase: false). */
export function loadChannelRoot(): protobuf.Root {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => join(PROTO_DIR, target);
  root.loadSync(CHANNEL_PROTO_FILE, { keepCase: LOADER_OPTIONS.keepCase ?? false });
  root.resolveAll();
  return root;
}

/** proto-loader's serializer: an object through fromObject, then encode. */
function serializer(type: protobuf.Type): (arg: object) => Buffer {
  return (arg) => {
    if (Array.isArray(arg)) throw new Error(`Failed to serialize message: expected object with ${type.name} structure, got array instead`);
    return type.encode(type.fromObject(arg)).finish() as Buffer;
  };
}

/** proto-loader's deserializer: decode, then toObject with the loader options (longs as numbers, enums as strings, defaults, oneofs). */
function deserializer(type: protobuf.Type): (buf: Buffer) => object {
  const options = LOADER_OPTIONS as protobuf.IConversionOptions;
  return (buf) => type.toObject(type.decode(buf), options);
}

function serviceDefinition(root: protobuf.Root): grpc.ServiceDefinition {
  const service = root.lookupService(SERVICE);
  const def: Record<string, grpc.MethodDefinition<object, object>> = {};
  for (const m of service.methodsArray) {
    const req = m.resolvedRequestType!;
    const res = m.resolvedResponseType!;
    def[m.name] = {
      path: `/${SERVICE}/${m.name}`,
      requestStream: !!m.requestStream,
      responseStream: !!m.responseStream,
      requestSerialize: serializer(req),
      requestDeserialize: deserializer(req),
      responseSerialize: serializer(res),
      responseDeserialize: deserializer(res),
      originalName: m.name.charAt(0).toLowerCase() + m.name.slice(1),
    };
  }
  return def;
}

export const channelV1 = {
  AgentChannel: grpc.makeGenericClientConstructor(serviceDefinition(loadChannelRoot()), 'AgentChannel'),
} as unknown as Pick<ChannelProto['trellis']['v1'], 'AgentChannel'>;
