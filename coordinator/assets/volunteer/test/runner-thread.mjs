// runner.js in a node worker thread, as a Web Worker runs it in a browser (pool.test.mjs).
import { parentPort } from 'node:worker_threads';
import { handle } from '../runner.js';

parentPort.on('message', (data) => handle(data, (m, transfer) => parentPort.postMessage(m, transfer)));
