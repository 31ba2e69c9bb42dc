// runner.js in a node worker thread, as a Web Worker runs it in a browser (pool.test.mjs).
// `node --test` also loads this file on its own (no parent port): then it does nothing.
import { parentPort } from 'node:worker_threads';
import { handle } from '../runner.js';

if (parentPort) parentPort.on('message', (data) => handle(data, (m, transfer) => parentPort.postMessage(m, transfer)));
