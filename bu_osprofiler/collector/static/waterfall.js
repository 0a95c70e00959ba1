/* bu-osprofiler trace waterfall: draws the trace embedded in #bu-data (Jaeger JSON plus the
 * server's analysis: row order, critical path, fork/join edges). No dependencies, no network. */
(function () {
  "use strict";

  var errors = 0;
  window.addEventListener("error", function () {
    errors += 1;
    document.body.setAttribute("data-errors", String(errors));
  });

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }

  function fmtDur(us) {
    if (us < 1000) { return Math.round(us) + "µs"; }
    if (us < 1e6) { return (us < 1e5 ? (us / 1000).toPrecision(3) : Math.round(us / 1000)) + "ms"; }
    return (us / 1e6).toPrecision(3) + "s";
  }

  function tagValue(span, key) {
    var tags = span.tags || [];
    for (var i = 0; i < tags.length; i++) {
      if (tags[i].key === key) { return tags[i].value; }
    }
    return undefined;
  }

  function isTrue(v) { return v === true || v === "true"; }

  var data = JSON.parse(document.getElementById("bu-data").textContent);
  var trace = data.trace;
  var view = data.view;
  var spans = {};
  var procs = trace.processes || {};
  var t0 = Infinity;
  var t1 = -Infinity;
  (trace.spans || []).forEach(function (s) {
    spans[s.spanID] = s;
    t0 = Math.min(t0, s.startTime);
    t1 = Math.max(t1, s.startTime + s.duration);
  });
  var total = Math.max(t1 - t0, 1);

  function service(s) {
    var p = procs[s.processID];
    return p ? p.serviceName : "?";
  }

  function pct(t) { return ((t - t0) / total * 100).toFixed(4) + "%"; }

  /* colours: one per service; a palette without red first (red means error), then hues spread
   * by the golden angle */
  var PALETTE = ["#4e79a7", "#59a14f", "#f28e2b", "#76b7b2", "#b07aa1", "#edc948", "#9c755f",
                 "#ff9da7", "#bab0ac"];
  var services = [];
  (trace.spans || []).forEach(function (s) {
    var n = service(s);
    if (services.indexOf(n) < 0) { services.push(n); }
  });
  services.sort();
  var colour = {};
  services.forEach(function (n, i) {
    colour[n] = i < PALETTE.length ? PALETTE[i] : "hsl(" + Math.round((200 + i * 137.508) % 360) + ",55%,55%)";
  });

  var critical = {};
  view.critical.forEach(function (id) { critical[id] = true; });
  var joins = {};
  var forks = {};
  view.edges.forEach(function (e) {
    if (e[2] === "join") { joins[e[1]] = true; }
    if (e[2] === "fork") { forks[e[1]] = true; }
  });

  /* ---------------------------------------------------------------- summary and legend */
  var nerr = 0;
  (trace.spans || []).forEach(function (s) { if (isTrue(tagValue(s, "error"))) { nerr += 1; } });
  var summary = document.getElementById("summary");
  function fact(label, value) {
    var s = el("span", null, label + " ");
    s.appendChild(el("b", null, value));
    summary.appendChild(s);
  }
  fact("Trace", trace.traceID);
  fact("Start", new Date(t0 / 1000).toISOString().replace("T", " ").replace("Z", " UTC"));
  fact("Duration", fmtDur(total));
  fact("Spans", (trace.spans || []).length);
  fact("Services", services.length);
  fact("Errors", nerr);
  var cpLabel = el("label");
  var cpBox = el("input");
  cpBox.type = "checkbox";
  cpBox.checked = true;
  cpBox.id = "show-cp";
  cpLabel.appendChild(cpBox);
  cpLabel.appendChild(document.createTextNode(" critical path (" + view.critical.length + " spans)"));
  summary.appendChild(cpLabel);

  var legend = document.getElementById("legend");
  services.forEach(function (n) {
    var item = el("span", "legend-item");
    var sw = el("span", "swatch");
    sw.style.background = colour[n];
    item.appendChild(sw);
    item.appendChild(document.createTextNode(n));
    legend.appendChild(item);
  });

  /* ---------------------------------------------------------------- waterfall */
  var wf = document.getElementById("waterfall");
  wf.classList.add("show-cp");
  cpBox.addEventListener("change", function () { wf.classList.toggle("show-cp", cpBox.checked); });

  var axis = el("div", "axis");
  axis.appendChild(el("div", "label", "Service: operation"));
  var ticks = el("div", "ticks");
  [0, 0.25, 0.5, 0.75, 1].forEach(function (f) {
    var tk = el("span", "tick", fmtDur(total * f));
    tk.style.left = (f * 100) + "%";
    ticks.appendChild(tk);
  });
  axis.appendChild(ticks);
  wf.appendChild(axis);

  var rowsBox = el("div", "rows");
  wf.appendChild(rowsBox);
  var rowIndex = {};
  var segsBySpan = {};
  view.segments.forEach(function (g) { (segsBySpan[g[0]] = segsBySpan[g[0]] || []).push(g); });
  var selected = null;

  view.rows.forEach(function (r, i) {
    var s = spans[r[0]];
    if (!s) { return; }
    rowIndex[s.spanID] = i;
    var row = el("div", "span-row");
    row.setAttribute("data-span-id", s.spanID);
    row.setAttribute("role", "button");
    if (critical[s.spanID]) { row.classList.add("critical"); }
    var err = isTrue(tagValue(s, "error"));
    if (err) { row.classList.add("error"); }

    var label = el("div", "label");
    label.style.paddingLeft = (8 + r[1] * 14) + "px";
    var sw = el("span", "swatch");
    sw.style.background = colour[service(s)];
    label.appendChild(sw);
    label.appendChild(el("span", "svc", service(s) + ": "));
    label.appendChild(el("span", "op", s.operationName));
    if (forks[s.spanID] || isTrue(tagValue(s, "fork"))) { label.appendChild(el("span", "mark fork", "fork")); }
    if (joins[s.spanID]) { label.appendChild(el("span", "mark join", "join")); }
    if (err) { label.appendChild(el("span", "mark err", "error")); }
    logMarks(s, row, label);
    label.title = service(s) + ": " + s.operationName + " (" + fmtDur(s.duration) + ")";
    row.appendChild(label);

    var lane = el("div", "lane");
    var bar = el("div", "bar");
    bar.style.left = pct(s.startTime);
    bar.style.width = (s.duration / total * 100).toFixed(4) + "%";
    bar.style.background = colour[service(s)];
    lane.appendChild(bar);
    (segsBySpan[s.spanID] || []).forEach(function (g) {
      var seg = el("div", "cpseg");
      seg.style.left = pct(g[1]);
      seg.style.width = ((g[2] - g[1]) / total * 100).toFixed(4) + "%";
      lane.appendChild(seg);
    });
    var dur = el("span", "dur", fmtDur(s.duration));
    var endFrac = (s.startTime + s.duration - t0) / total;
    if (endFrac > 0.85) {  /* no room after the bar: write inside it, at its end */
      dur.classList.add("inside");
      dur.style.right = ((1 - endFrac) * 100).toFixed(4) + "%";
    } else {
      dur.style.left = (endFrac * 100).toFixed(4) + "%";
    }
    lane.appendChild(dur);
    logTicks(s, lane);
    row.appendChild(lane);
    row.addEventListener("click", function () { showDetails(s, row); });
    rowsBox.appendChild(row);
  });

  /* fork / join / follows-from edges, drawn over the lanes */
  var SVGNS = "http://www.w3.org/2000/svg";
  var rowH = 24;
  var svg = document.createElementNS(SVGNS, "svg");
  svg.setAttribute("class", "edges");
  svg.setAttribute("height", String(view.rows.length * rowH));
  view.edges.forEach(function (e) {
    var a = spans[e[0]];
    var b = spans[e[1]];
    if (!a || !b || e[2] === "child_of" || rowIndex[a.spanID] === undefined ||
        rowIndex[b.spanID] === undefined) { return; }
    var ya = rowIndex[a.spanID] * rowH + rowH / 2;
    var yb = rowIndex[b.spanID] * rowH + rowH / 2;
    var line = document.createElementNS(SVGNS, "line");
    var xa;
    var xb;
    if (e[2] === "fork") { xa = pct(b.startTime); xb = xa; }
    else if (e[2] === "join") { xa = pct(a.startTime + a.duration); xb = pct(b.startTime + b.duration); }
    else { xa = pct(a.startTime + a.duration); xb = pct(b.startTime); }
    line.setAttribute("x1", xa);
    line.setAttribute("x2", xb);
    line.setAttribute("y1", String(ya));
    line.setAttribute("y2", String(yb));
    line.setAttribute("class", e[2]);
    svg.appendChild(line);
  });
  rowsBox.appendChild(svg);

  /* ---------------------------------------------------------------- span logs
   * Log records (bu_osprofiler.logging: event=log, level, logger, message, exception.*) and error
   * logs: rows whose span logged a warning or an error get a mark, the lane a tick per log, the
   * details panel one line per log (level, logger, message; the exception and stack below). */
  function logFields(lg) {
    var f = {};
    (lg.fields || []).forEach(function (t) { f[t.key] = t.value; });
    return f;
  }

  /* 0 plain, 1 warning, 2 error (function declarations only here: the rows above use them) */
  function logSeverity(f) {
    if (f.event === "error") { return 2; }
    switch (String(f.level || "").toUpperCase()) {
      case "WARNING": case "WARN": return 1;
      case "ERROR": case "CRITICAL": case "FATAL": case "EXCEPTION": return 2;
      default: return 0;
    }
  }

  function logMarks(s, row, label) {
    var worst = 0, n = 0;
    (s.logs || []).forEach(function (lg) {
      var sev = logSeverity(logFields(lg));
      if (sev) { n += 1; worst = Math.max(worst, sev); }
    });
    if (!worst) { return; }
    var kind = worst === 2 ? "errors" : "warnings";
    row.classList.add("log-" + kind);
    var m = el("span", "mark log-" + kind, (worst === 2 ? "log error" : "log warning") +
               (n > 1 ? " \u00d7" + n : ""));
    m.title = n + " log record" + (n > 1 ? "s" : "") + " at WARNING or above";
    label.appendChild(m);
  }

  function logTicks(s, lane) {
    (s.logs || []).forEach(function (lg) {
      var t = el("div", "logtick sev" + logSeverity(logFields(lg)));
      t.style.left = pct(lg.timestamp);
      lane.appendChild(t);
    });
  }

  function logSection(s) {
    var box = el("div", "logs");
    box.appendChild(el("h3", null, "Logs (" + s.logs.length + ")"));
    s.logs.forEach(function (lg) {
      var f = logFields(lg);
      var line = el("div", "logline sev" + logSeverity(f));
      line.appendChild(el("span", "logtime", "+" + fmtDur(lg.timestamp - s.startTime)));
      if (f.level !== undefined) { line.appendChild(el("span", "loglevel", String(f.level))); }
      if (f.logger !== undefined) { line.appendChild(el("span", "loglogger", String(f.logger))); }
      var msg = f.message !== undefined ? f.message : (f.event !== undefined ? f.event : "");
      line.appendChild(el("span", "logmsg", String(msg)));
      box.appendChild(line);
      var etype = f["exception.type"] || f["error.kind"];
      if (etype) {
        var emsg = f["exception.message"];
        box.appendChild(el("div", "logexc", etype + (emsg ? ": " + emsg : "")));
      }
      var stack = f["exception.stacktrace"] || f.stack;
      if (stack) { box.appendChild(el("pre", "logstack", String(stack))); }
      var shown = {event: 1, level: 1, logger: 1, message: 1, stack: 1, "exception.type": 1,
                   "exception.message": 1, "exception.stacktrace": 1, "error.kind": 1};
      var rest = (lg.fields || []).filter(function (t) { return !shown[t.key]; });
      if (rest.length) { box.appendChild(kvTable(tagsOf(rest))); }
    });
    return box;
  }

  /* ---------------------------------------------------------------- details */
  var details = document.getElementById("details");

  function kvTable(items) {
    var t = el("table");
    items.forEach(function (kv) {
      var tr = el("tr");
      tr.appendChild(el("td", null, kv[0]));
      var td = el("td");
      if (kv[1] instanceof Node) { td.appendChild(kv[1]); } else { td.textContent = String(kv[1]); }
      tr.appendChild(td);
      t.appendChild(tr);
    });
    return t;
  }

  function tagsOf(list) {
    return (list || []).map(function (t) {
      var v = t.value;
      if (typeof v === "object" && v !== null) { v = JSON.stringify(v); }
      return [t.key, v];
    });
  }

  function showDetails(s, row) {
    if (selected) { selected.classList.remove("selected"); }
    selected = row;
    row.classList.add("selected");
    details.textContent = "";
    var close = el("button", "close", "close");
    close.addEventListener("click", function () {
      details.hidden = true;
      row.classList.remove("selected");
    });
    details.appendChild(close);
    details.appendChild(el("h2", null, service(s) + ": " + s.operationName));
    details.appendChild(kvTable([
      ["span id", s.spanID],
      ["start", "+" + fmtDur(s.startTime - t0)],
      ["duration", fmtDur(s.duration)],
      ["critical path", critical[s.spanID] ? "yes" : "no"]
    ]));
    if ((s.references || []).length) {
      details.appendChild(el("h3", null, "References"));
      details.appendChild(kvTable(s.references.map(function (r) {
        var target = spans[r.spanID];
        var txt = r.spanID + (target ? " (" + service(target) + ": " + target.operationName + ")" : " (not in this trace)");
        var a = el(target ? "a" : "span", null, txt);
        if (target) {
          a.href = "#";
          a.addEventListener("click", function (ev) {
            ev.preventDefault();
            var other = rowsBox.querySelector('[data-span-id="' + r.spanID + '"]');
            if (other) { other.scrollIntoView({block: "center"}); showDetails(target, other); }
          });
        }
        return [r.refType, a];
      })));
    }
    details.appendChild(el("h3", null, "Tags"));
    details.appendChild(kvTable(tagsOf(s.tags)));
    if ((s.logs || []).length) {
      details.appendChild(logSection(s));
    }
    var p = procs[s.processID];
    if (p && (p.tags || []).length) {
      details.appendChild(el("h3", null, "Process"));
      details.appendChild(kvTable(tagsOf(p.tags)));
    }
    details.hidden = false;
  }

  /* a link may name a span to open: /trace/ID#span=<16 hex digits> */
  var wanted = /^#span=([0-9a-f]{16})$/.exec(window.location.hash);
  if (wanted && spans[wanted[1]]) {
    var wantedRow = rowsBox.querySelector('[data-span-id="' + wanted[1] + '"]');
    if (wantedRow) { showDetails(spans[wanted[1]], wantedRow); }
  }

  document.body.setAttribute("data-rendered", String(rowsBox.querySelectorAll(".span-row").length));
})();
