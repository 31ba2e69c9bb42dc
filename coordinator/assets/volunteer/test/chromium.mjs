// Headless Chromium for the volunteer tests and tools: one place that starts it on a page
// with a throwaway profile and stops it for good. Chromium runs as a process group of its
// own, so stopping kills its helpers too (killing only the browser process left renderers
// writing into the profile while it was being removed); the profile's removal is best
// effort, since a leftover temporary directory is no test failure.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

/** Starts `chromium` on `url`; returns `stop()`, which resolves once it has exited. */
export function launch(chromium, url, extraArgs = []) {
  const profile = mkdtempSync(join(tmpdir(), 'fallow-chromium-'));
  const browser = spawn(
    chromium,
    [
      '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', ...extraArgs,
      `--user-data-dir=${profile}`, url,
    ],
    { stdio: 'ignore', detached: true },
  );
  const exited = new Promise((r) => browser.once('exit', r));
  return {
    async stop() {
      try {
        process.kill(-browser.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
      await exited;
      try {
        rmSync(profile, { recursive: true, force: true, maxRetries: 5 });
      } catch {
        // A helper that outlived the group's kill still held a file: leave it.
      }
    },
  };
}

/** The Chromium to test in: $CHROMIUM, else the first of the usual names on the PATH. */
export function findChromium() {
  return (
    process.env.CHROMIUM ??
    ['chromium', 'chromium-browser', 'google-chrome'].find(
      (c) => spawnSync('sh', ['-c', `command -v ${c}`]).status === 0,
    )
  );
}

/**
 * Serves a test page on 127.0.0.1, opens it in `chromium`, and resolves with the JSON
 * bodies the page POSTs to `/result`: once `posts` have come, or one carries `error`, or
 * after `timeoutMs` with `{ error }` added (so a page that never answers fails its test
 * instead of holding the suite). `files(path)` answers `[contentType, body]` for `/` and
 * every file the page loads, or null for a 404; `headers` go on every answer (e.g. COOP
 * and COEP for a cross-origin isolated page). Chromium and the server are stopped before
 * it resolves.
 */
export async function runInTab(chromium, files, { headers = {}, posts = 1, timeoutMs = 50_000 } = {}) {
  const results = [];
  let finish;
  const finished = new Promise((resolve) => (finish = resolve));
  const add = (r) => {
    results.push(r);
    if (results.length >= posts || r?.error) finish();
  };
  const server = createServer((req, res) => {
    const send = (status, type, body) => {
      res.writeHead(status, { 'content-type': type, ...headers });
      res.end(body);
    };
    if (req.url === '/result' && req.method === 'POST') {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        send(200, 'text/plain', 'ok');
        try {
          add(JSON.parse(body));
        } catch {
          add({ error: `the page posted something that is not JSON: ${body.slice(0, 200)}` });
        }
      });
      return;
    }
    const answer = files(req.url);
    if (answer) send(200, answer[0], answer[1]);
    else send(404, 'text/plain', 'not found');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const browser = launch(chromium, `http://127.0.0.1:${server.address().port}/`);
  const timer = setTimeout(() => add({ error: `no answer from the tab in ${timeoutMs / 1000} s` }), timeoutMs);
  try {
    await finished;
    return results;
  } finally {
    clearTimeout(timer);
    await browser.stop();
    server.close();
  }
}
