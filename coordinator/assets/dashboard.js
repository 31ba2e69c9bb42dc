// Keeps a server-rendered page live from /api/events (server-sent events). The page is
// complete without this script; it only replaces numbers, bars, charts and the picture
// when a new snapshot arrives. Names from the server are set with textContent, never as
// HTML; only SVG drawn (and escaped) by the server is inserted as markup.
(function () {
  "use strict";

  function get(obj, path) {
    return path.split(".").reduce(function (o, k) {
      return o == null ? undefined : o[k];
    }, obj);
  }

  function int(n) {
    return Number(n || 0).toLocaleString("en-US");
  }

  function duration(s) {
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }

  // As render.rs `outcome_label`: a finished project whose units or reducer failed is not
  // "done".
  var OUTCOMES = {
    done: "done", partial: "done, some units failed", failed: "failed", cancelled: "cancelled"
  };

  function eta(p) {
    if (p.outcome === "paused") return "paused";
    if (p.finished) return OUTCOMES[p.outcome] || "\u2014";
    return p.eta_seconds == null ? "unknown" : duration(p.eta_seconds);
  }

  function format(key, value, data) {
    if (key.slice(-4) === ".eta") return eta(get(data, key.slice(0, -4)));
    if (typeof value === "string") return value;
    if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(1);
    if (key === "percent" || key.slice(-8) === ".percent") return Number(value).toFixed(1);
    return int(value);
  }

  function fill(root, data) {
    root.querySelectorAll("[data-k]").forEach(function (el) {
      var key = el.getAttribute("data-k");
      var value = key.slice(-4) === ".eta" ? 0 : get(data, key);
      if (value === undefined) return;
      el.textContent = format(key, value, data);
    });
  }

  function bar(p) {
    var total = Math.max(p.total, 1);
    var div = document.createElement("div");
    div.className = "bar";
    div.setAttribute("role", "img");
    div.setAttribute("aria-label", p.verified + " verified, " + p.in_progress + " in progress, " + p.failed + " failed of " + p.total);
    [["v", p.verified], ["r", p.in_progress], ["f", p.failed]].forEach(function (part) {
      var span = document.createElement("span");
      span.className = part[0];
      span.style.width = ((100 * part[1]) / total).toFixed(2) + "%";
      div.appendChild(span);
    });
    return div;
  }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    if (text instanceof Node) td.appendChild(text);
    else td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function projectRows(tbody, projects) {
    var rows = document.createDocumentFragment();
    projects.forEach(function (p) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-project", p.id);
      var a = document.createElement("a");
      a.href = "/projects/" + p.id;
      a.textContent = p.name;
      cell(tr, a);
      var progress = cell(tr, bar(p), "wide");
      var small = document.createElement("small");
      var b = document.createElement("b");
      b.setAttribute("data-k", "percent");
      b.textContent = p.percent.toFixed(1);
      small.appendChild(b);
      small.appendChild(document.createTextNode("% \u00b7 " + int(p.verified) + " verified \u00b7 " + int(p.in_progress) + " in progress \u00b7 " + int(p.pending) + " pending \u00b7 " + int(p.failed) + " failed"));
      progress.appendChild(small);
      cell(tr, p.units_per_minute.toFixed(1), "num");
      cell(tr, eta(p), "num");
      rows.appendChild(tr);
    });
    if (projects.length) tbody.replaceChildren(rows);
  }

  function rows(tbody, items, fields) {
    if (!tbody) return;
    var frag = document.createDocumentFragment();
    items.forEach(function (item) {
      var tr = document.createElement("tr");
      fields.forEach(function (f) { cell(tr, String(item[f])); });
      frag.appendChild(tr);
    });
    if (!items.length) {
      var tr = document.createElement("tr");
      cell(tr, "none").colSpan = fields.length;
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
  }

  function overview(data) {
    fill(document, data);
    var tbody = document.getElementById("projects");
    if (tbody) projectRows(tbody, data.projects);
  }

  function charts(data) {
    var t = document.getElementById("chart-throughput");
    if (t) t.innerHTML = data.throughput_svg;
    var w = document.getElementById("chart-workers");
    if (w) w.innerHTML = data.workers_svg;
  }

  var mosaicVersion = null;
  function project(data) {
    fill(document, data);
    var old = document.querySelector("main > .bar");
    if (old) old.replaceWith(bar(data.project));
    var map = document.getElementById("unit-map");
    if (map && data.unit_map_svg) map.innerHTML = data.unit_map_svg;
    rows(document.getElementById("recent-failures"), data.recent_failures, ["unit", "worker", "reason"]);
    rows(document.getElementById("failed-units"), data.failed_units, ["unit", "reason"]);
    var img = document.getElementById("mosaic");
    if (img && data.mosaic && data.mosaic.version !== mosaicVersion) {
      mosaicVersion = data.mosaic.version;
      img.closest("figure").hidden = false;
      img.width = data.mosaic.width;
      img.height = data.mosaic.height;
      img.src = data.mosaic.url;
    }
  }

  function connect() {
    var live = document.body.getAttribute("data-live") || "none";
    if (live === "none" || !window.EventSource) return;
    var indicator = document.getElementById("live");
    var url = "/api/events";
    var name = "overview";
    var handler = overview;
    if (live.indexOf("project:") === 0) {
      url += "?project=" + encodeURIComponent(live.slice(8));
      name = "project";
      handler = project;
    }
    var source = new EventSource(url);
    window.fallowEvents = 0;
    source.addEventListener(name, function (e) {
      handler(JSON.parse(e.data));
      window.fallowEvents += 1;
      indicator.textContent = "live";
      indicator.className = "live on";
    });
    if (name === "overview") {
      source.addEventListener("charts", function (e) {
        charts(JSON.parse(e.data));
      });
    }
    source.onerror = function () {
      indicator.textContent = "reconnecting";
      indicator.className = "live off";
    };
  }

  connect();
})();
