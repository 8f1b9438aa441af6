/** Event intake: de-duplication by id per agent, listener isolation, windows dropped after idle. */
import t from 'tap';
import { EventIntake, type HubEvent } from '../hub/events/index.js';

const ev = (id: string, type = 'core.cpu') => ({ id, type, payloadJson: Buffer.from('{}'), timeMs: 1 });

t.test('an event delivered twice reaches listeners once; bad events are rejected', async (t) => {
  const intake = new EventIntake({ dedupWindow: 100 });
  const seen: string[] = [];
  intake.subscribe((b) => seen.push(...b.map((e) => e.id)));
  intake.ingest('a1', 'default', [ev('e1'), ev('e2')]);
  intake.ingest('a1', 'default', [ev('e2'), ev('e3')]);
  intake.ingest('a2', 'default', [ev('e1')]); // another agent's ids are its own
  intake.ingest('a1', 'default', [ev(''), ev('x'.repeat(65)), { ...ev('big'), payloadJson: Buffer.alloc(64 * 1024 + 1) }]);
  t.same(seen, ['e1', 'e2', 'e3', 'e1']);
  t.equal(intake.duplicates, 1);
  t.equal(intake.rejected, 3);
});

t.test('a throwing listener never breaks ingest or the other listeners', async (t) => {
  const intake = new EventIntake();
  const got: HubEvent[] = [];
  intake.subscribe(() => { throw new Error('boom'); });
  intake.subscribe((b) => got.push(...b));
  t.doesNotThrow(() => intake.ingest('a1', 't', [ev('e1')]));
  t.equal(got.length, 1);
  t.equal(intake.listenerErrors, 1);
});

t.test('the window of an agent detached longer than keepMs is dropped; a reconnected one is kept', async (t) => {
  const intake = new EventIntake({ dedupWindow: 100 });
  const seen: string[] = [];
  intake.subscribe((b) => seen.push(...b.map((e) => e.id)));
  intake.ingest('gone', 't', [ev('g1')]);
  intake.ingest('back', 't', [ev('b1')]);
  intake.detached('gone', 0);
  intake.detached('back', 0);
  intake.attached('back');
  t.equal(intake.sweep(1000, 500), 0, 'not yet');
  t.equal(intake.sweep(1000, 2000), 1, 'the idle agent\'s window is dropped');
  intake.ingest('back', 't', [ev('b1')]);
  t.same(seen, ['g1', 'b1'], 'the reconnected agent still de-duplicates');
});
