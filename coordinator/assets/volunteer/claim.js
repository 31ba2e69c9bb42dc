// Placeholder until the wt-holder branch lands claim.js (it replaces this file): the
// coordinator embeds every module the page imports, so the file must exist to build.
export {};
