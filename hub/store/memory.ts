import { MapStore } from './base.js';

/**
 * Keeps everything in process memory and nothing on disk: for tests and throwaway hubs. It
 * follows the same contract as the durable backends (copies, validation, closing), so code
 * tested against it behaves the same on lowdb.
 */
export class MemoryStore extends MapStore {
  constructor() {
    super(new Map());
  }

  protected override async persist(): Promise<void> {}

  protected override async persistAll(): Promise<void> {}
}
