// Loaded first, before any other script: records every JavaScript error of the page in
// window.fallowErrors and shows it, so a broken page is never silently broken (the
// browser tests read window.fallowErrors).
(function () {
  "use strict";
  var errors = (window.fallowErrors = window.fallowErrors || []);
  function record(message) {
    errors.push(String(message));
    var box = document.getElementById("js-errors");
    if (box) {
      box.hidden = false;
      box.textContent = "JavaScript error: " + errors.join(" | ");
    }
  }
  window.addEventListener("error", function (e) {
    record((e.message || "error") + (e.filename ? " at " + e.filename + ":" + e.lineno : ""));
  });
  window.addEventListener("unhandledrejection", function (e) {
    record("unhandled rejection: " + (e.reason && e.reason.message ? e.reason.message : e.reason));
  });
  var original = console.error;
  console.error = function () {
    record(Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  document.addEventListener("DOMContentLoaded", function () {
    if (errors.length) record("(earlier errors)");
  });
})();
