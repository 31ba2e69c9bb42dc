// Placeholder until the wt-holder branch lands loop.js (it replaces this file): the
// coordinator embeds every module the page imports, so the file must exist to build, and
// volunteer.js imports BrowserWorker from it.
export class BrowserWorker {
  constructor() {
    throw new Error('this coordinator was built without the browser worker loop (loop.js)');
  }
}
