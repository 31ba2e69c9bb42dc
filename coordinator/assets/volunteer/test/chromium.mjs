// Headless Chromium for the volunteer tests and tools: one place that starts it on a page
// with a throwaway profile and stops it for good. Chromium runs as a process group of its
// own, so stopping kills its helpers too (killing only the browser process left renderers
// writing into the profile while it was being removed); the profile's removal is best
// effort, since a leftover temporary directory is no test failure.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
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
