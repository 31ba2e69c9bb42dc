// The volunteer page's own logic (volunteer.js without a DOM): its settings from the query
// and from what the browser remembered, and why it is paused.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { settings, PauseReasons, int, json } from '../volunteer.js';

test('settings: the query, then what was remembered, then the defaults', () => {
  const check = (search, stored, cores, want) => {
    const got = settings(search, stored, cores);
    for (const [k, v] of Object.entries(want)) assert.deepEqual(got[k], v, `${search} ${k}`);
  };
  check('', {}, 8, { start: false, cores: 4, maxCores: 8, share: 50, account: '', team: '', fault: null });
  check('', {}, undefined, { cores: 1, maxCores: 2 });
  check('', {}, 0, { cores: 1, maxCores: 1 });
  check('?start=1&cores=3&account=ada&team=lab&share=70', { account: 'old', cores: 1 }, 8, {
    start: true, cores: 3, share: 70, account: 'ada', team: 'lab',
  });
  check('', { account: 'kept', team: 't', cores: 2, share: 20 }, 8, { account: 'kept', team: 't', cores: 2, share: 20 });
  // Out of range is clamped, nonsense falls back.
  check('?cores=99&share=1', {}, 4, { cores: 4, share: 10 });
  check('?cores=abc&share=&start=yes', {}, 4, { cores: 2, share: 50, start: false });
  check(`?account=${'x'.repeat(80)}`, {}, 4, { account: 'x'.repeat(64) });
  // Only the one test fault is passed through.
  check('?fault=corrupt-output', {}, 4, { fault: 'corrupt-output' });
  check('?fault=steal-keys', {}, 4, { fault: null });
});

test('the page is paused while any reason holds, and says which', () => {
  const p = new PauseReasons();
  assert.equal(p.paused, false);
  assert.equal(p.set('hidden', true), true);
  assert.equal(p.set('battery', true), false, 'already paused');
  assert.equal(p.describe(), 'the tab is hidden, the computer runs on battery');
  assert.equal(p.set('hidden', false), false, 'still on battery');
  assert.equal(p.paused, true);
  assert.equal(p.set('battery', false), true, 'both cleared: resumes');
  assert.equal(p.paused, false);
  assert.equal(p.set('user', false), false);
});

test('numbers and BigInts for the page', () => {
  assert.equal(int(1234567n), '1,234,567');
  assert.equal(int(undefined), '0');
  assert.equal(json({ fuel: 5n }), '{\n "fuel": "5"\n}');
});
