/**
 * The agent's side of the contract only: trellis/v1/agent_channel.proto (which imports no other
 * file), loaded with the same options as common/proto.ts, so the messages are encoded the same.
 * `trellis agent run` needs nothing else; loading every admin service costs each agent ~5 MB.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { ProtoGrpcType as ChannelProto } from './proto-gen/agent_channel.js';
import { LOADER_OPTIONS } from './proto-files.js';

export const CHANNEL_PROTO_FILE = 'trellis/v1/agent_channel.proto';

export const channelV1 = (grpc.loadPackageDefinition(protoLoader.loadSync([CHANNEL_PROTO_FILE], LOADER_OPTIONS)) as unknown as ChannelProto).trellis.v1;
