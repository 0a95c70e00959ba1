/* bu-osprofiler trace view: draws the trace embedded in #bu-data (Jaeger JSON plus the server's
 * analysis: row order, critical path, fork/join edges) as a waterfall and as a graph (DAG).
 * No dependencies, no network. Text from the trace only ever goes through textContent. */
(function () {
  "use strict";

  var errors = 0;
  window.addEventListener("error", function () {
    errors += 1;
    document.body.setAttribute("data-errors", String(errors));
  });

  var SVGNS = "http://www.w3.org/2000/svg";
  var NARROW = window.matchMedia("(max-width: 900px)");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }

  function svgEl(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    return e;
  }

  function fmtDur(us) {
    if (!isFinite(us)) { return String(us); }
    if (us < 0) { return "-" + fmtDur(-us); }
    if (us < 999.5) { return Math.round(us) + "µs"; }
    if (us < 999500) { return (us < 99950 ? (us / 1000).toPrecision(3) : Math.round(us / 1000)) + "ms"; }
    if (us < 1e11) { return (us / 1e6).toPrecision(3) + "s"; }
    return (us / 3.6e9).toPrecision(3) + "h";
  }

  function fmtDate(us) {
    var d = new Date(us / 1000);
    if (!isFinite(d.getTime())) { return "out of range (" + us + " µs)"; }
    return d.toISOString().replace("T", " ").replace("Z", " UTC");
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
    if (isFinite(s.startTime) && isFinite(s.duration)) {
      t0 = Math.min(t0, s.startTime);
      t1 = Math.max(t1, s.startTime + s.duration);
    }
  });
  if (!isFinite(t0)) { t0 = 0; t1 = 1; }
  var total = Math.max(t1 - t0, 1);

  function service(s) {
    var p = procs[s.processID];
    return p ? String(p.serviceName) : "?";
  }

  function kindOf(s) {
    var k = tagValue(s, "span.kind");
    return (k === "client" || k === "server" || k === "producer" || k === "consumer") ? k : "";
  }

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

  /* the display tree (rows in depth-first order with depths) */
  var order = [];
  var depth = {};
  var parentRow = {};
  var kids = {};
  var stack = [];
  view.rows.forEach(function (r) {
    if (!spans[r[0]]) { return; }
    var id = r[0];
    var d = r[1];
    while (stack.length > d) { stack.pop(); }
    parentRow[id] = stack.length ? stack[stack.length - 1] : null;
    if (parentRow[id]) { (kids[parentRow[id]] = kids[parentRow[id]] || []).push(id); }
    stack.push(id);
    depth[id] = d;
    order.push(id);
  });

  /* self time: the span's duration minus the union of its children's time inside it */
  var selfTime = {};
  order.forEach(function (id) {
    var s = spans[id];
    var a = s.startTime;
    var b = s.startTime + s.duration;
    var iv = (kids[id] || []).map(function (k) {
      var c = spans[k];
      return [Math.max(a, c.startTime), Math.min(b, c.startTime + c.duration)];
    }).filter(function (x) { return x[1] > x[0]; }).sort(function (x, y) { return x[0] - y[0]; });
    var covered = 0;
    var end = -Infinity;
    iv.forEach(function (x) {
      if (x[0] > end) { covered += x[1] - x[0]; end = x[1]; }
      else if (x[1] > end) { covered += x[1] - end; end = x[1]; }
    });
    selfTime[id] = Math.max(0, s.duration - covered);
  });

  /* ---------------------------------------------------------------- summary, tabs, legend */
  var nerr = 0;
  (trace.spans || []).forEach(function (s) { if (isTrue(tagValue(s, "error"))) { nerr += 1; } });
  var summary = document.getElementById("summary");
  function fact(label, value) {
    var s = el("span", "fact", label + " ");
    s.appendChild(el("b", null, value));
    summary.appendChild(s);
  }
  fact("Trace", trace.traceID);
  fact("Start", fmtDate(t0));
  fact("Duration", fmtDur(t1 - t0));
  fact("Spans", (trace.spans || []).length);
  fact("Services", services.length);
  fact("Errors", nerr);
  var cpLabel = el("label", "cp-toggle");
  var cpBox = el("input");
  cpBox.type = "checkbox";
  cpBox.checked = data.showCriticalPath !== false;
  cpBox.id = "show-cp";
  cpLabel.appendChild(cpBox);
  cpLabel.appendChild(document.createTextNode(" critical path (" + view.critical.length + " spans)"));
  summary.appendChild(cpLabel);

  var toolbar = document.getElementById("toolbar");
  var tabs = toolbar.querySelector(".tabs");
  var tabW = el("button", "tab", "Waterfall");
  var tabG = el("button", "tab", "Graph");
  tabW.id = "tab-waterfall";
  tabG.id = "tab-dag";
  tabs.appendChild(tabW);
  tabs.appendChild(tabG);
  var find = el("input");
  find.id = "find";
  find.type = "search";
  find.placeholder = "find in trace";
  find.setAttribute("aria-label", "find spans in this trace");
  var findCount = el("span", "find-count");
  findCount.id = "find-count";
  var btnCollapse = el("button", null, "Collapse all");
  btnCollapse.id = "collapse-all";
  var btnExpand = el("button", null, "Expand all");
  btnExpand.id = "expand-all";
  var btnReset = el("button", null, "Reset zoom");
  btnReset.id = "reset-zoom";
  btnReset.hidden = true;
  var tools = el("div", "tools");
  [find, findCount, btnCollapse, btnExpand, btnReset].forEach(function (x) { tools.appendChild(x); });
  toolbar.insertBefore(tools, document.getElementById("legend"));

  var legend = document.getElementById("legend");
  services.forEach(function (n) {
    var item = el("span", "legend-item");
    var sw = el("span", "swatch");
    sw.style.background = colour[n];
    item.appendChild(sw);
    item.appendChild(document.createTextNode(n));
    legend.appendChild(item);
  });

  /* ---------------------------------------------------------------- colours */
  function rgb(css) {
    var m = /rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)/.exec(css);
    return m ? [+m[1], +m[2], +m[3]] : [255, 255, 255];
  }
  function luminance(c) {
    var v = c.map(function (x) {
      x /= 255;
      return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
  }
  function mixWhite(c, f) {
    return "rgb(" + c.map(function (x) { return Math.round(x + (255 - x) * f); }).join(",") + ")";
  }

  /* ---------------------------------------------------------------- waterfall */
  var wf = document.getElementById("waterfall");
  var axis = el("div", "axis");
  axis.appendChild(el("div", "label", "Service: operation"));
  var ticks = el("div", "ticks");
  axis.appendChild(ticks);
  wf.appendChild(axis);

  var rowsBox = el("div", "rows");
  wf.appendChild(rowsBox);
  var rowOf = {};
  var barOf = {};
  var durOf = {};
  var segsBySpan = {};
  view.segments.forEach(function (g) { (segsBySpan[g[0]] = segsBySpan[g[0]] || []).push(g); });
  var collapsed = {};
  var selected = null;
  var vs = 0;   /* zoom window: fractions of the trace */
  var ve = 1;

  function frac(t) { return ((t - t0) / total - vs) / (ve - vs); }

  order.forEach(function (id) {
    var s = spans[id];
    var row = el("div", "span-row");
    row.setAttribute("data-span-id", id);
    rowOf[id] = row;
    if (critical[id]) { row.classList.add("critical"); }
    var err = isTrue(tagValue(s, "error"));
    if (err) { row.classList.add("error"); }

    var label = el("div", "label");
    label.style.paddingLeft = (4 + depth[id] * 14) + "px";
    var tog = el("button", "toggle", kids[id] ? "▾" : "");
    tog.setAttribute("aria-label", kids[id] ? "collapse" : "");
    if (!kids[id]) { tog.disabled = true; tog.classList.add("leaf"); }
    tog.addEventListener("click", function (ev) {
      ev.stopPropagation();
      setCollapsed(id, !collapsed[id]);
    });
    label.appendChild(tog);
    var sw = el("span", "swatch");
    sw.style.background = colour[service(s)];
    label.appendChild(sw);
    var name = el("span", "name");
    name.appendChild(el("span", "svc", service(s) + ": "));
    name.appendChild(el("span", "op", s.operationName));
    label.appendChild(name);
    var marks = el("span", "marks");
    var k = kindOf(s);
    if (k) { marks.appendChild(el("span", "mark kind " + k, k)); }
    if (forks[id] || isTrue(tagValue(s, "fork"))) { marks.appendChild(el("span", "mark fork", "fork")); }
    if (joins[id]) { marks.appendChild(el("span", "mark join", "join")); }
    if (err) { marks.appendChild(el("span", "mark err", "error")); }
    if (kids[id]) { marks.appendChild(el("span", "mark count", String(kids[id].length))); }
    logMarks(s, row, marks);
    label.appendChild(marks);
    label.title = service(s) + ": " + s.operationName + " — " + fmtDur(s.duration) +
      ", self " + fmtDur(selfTime[id]);
    row.appendChild(label);

    var lane = el("div", "lane");
    var bar = el("div", "bar");
    barOf[id] = bar;
    lane.appendChild(bar);
    (segsBySpan[id] || []).forEach(function (g) {
      var seg = el("div", "cpseg");
      seg.setAttribute("data-a", g[1]);
      seg.setAttribute("data-b", g[2]);
      lane.appendChild(seg);
    });
    var dur = el("span", "dur", fmtDur(s.duration));
    durOf[id] = dur;
    lane.appendChild(dur);
    logTicks(s, bar);
    row.appendChild(lane);
    row.addEventListener("click", function () { showDetails(id); });
    rowsBox.appendChild(row);
  });

  var edgeSvg = svgEl("svg", {"class": "edges", "aria-hidden": "true"});
  rowsBox.appendChild(edgeSvg);

  function cpOn() { return cpBox.checked; }

  function visible(id) {
    for (var p = parentRow[id]; p; p = parentRow[p]) {
      if (collapsed[p]) { return false; }
    }
    return true;
  }

  function setCollapsed(id, value) {
    if (!kids[id]) { return; }
    collapsed[id] = value;
    var tog = rowOf[id].querySelector(".toggle");
    tog.textContent = value ? "▸" : "▾";
    tog.setAttribute("aria-label", value ? "expand" : "collapse");
    rowOf[id].classList.toggle("collapsed", value);
    order.forEach(function (o) { rowOf[o].hidden = !visible(o); });
    layout();
  }

  function revealRow(id) {
    for (var p = parentRow[id]; p; p = parentRow[p]) {
      if (collapsed[p]) { setCollapsed(p, false); }
    }
  }

  function drawTicks() {
    ticks.textContent = "";
    [0, 0.25, 0.5, 0.75, 1].forEach(function (f) {
      var tk = el("span", "tick", fmtDur(total * (vs + f * (ve - vs))));
      tk.style.left = (f * 100) + "%";
      ticks.appendChild(tk);
    });
  }

  /* Bars, critical-path segments and duration labels at the current zoom and width. A duration
   * goes after its bar, else before it, else inside it in a colour that contrasts with the bar;
   * every label has an opaque background and is drawn above the fork/join lines. */
  var lightOf = {};
  function barColour(id) {
    var svc = service(spans[id]);
    if (!cpOn() || critical[id]) { return colour[svc]; }
    if (!lightOf[svc]) {
      var probe = el("span");
      probe.style.color = colour[svc];
      document.body.appendChild(probe);
      lightOf[svc] = mixWhite(rgb(getComputedStyle(probe).color), 0.55);
      document.body.removeChild(probe);
    }
    return lightOf[svc];
  }

  function placeBars() {
    var shown = order.filter(function (id) { return !rowOf[id].hidden; });
    /* writes first, then every read, then the positions: one layout pass, not one per row */
    shown.forEach(function (id) {
      var s = spans[id];
      var bar = barOf[id];
      bar.style.background = barColour(id);
      var a = frac(s.startTime);
      var b = frac(s.startTime + s.duration);
      bar.style.left = (a * 100).toFixed(4) + "%";
      bar.style.width = (Math.max(0, b - a) * 100).toFixed(4) + "%";
      rowOf[id].querySelectorAll(".cpseg").forEach(function (seg) {
        var sa = frac(+seg.getAttribute("data-a"));
        var sb = frac(+seg.getAttribute("data-b"));
        seg.style.left = (sa * 100).toFixed(4) + "%";
        seg.style.width = (Math.max(0, sb - sa) * 100).toFixed(4) + "%";
      });
      var dur = durOf[id];
      dur.className = "dur";
      dur.style.color = "";
      dur.style.background = "";
      dur.hidden = false;
    });
    var measured = shown.map(function (id) {
      var dur = durOf[id];
      return [dur.parentNode.clientWidth, dur.offsetWidth, getComputedStyle(barOf[id]).backgroundColor];
    });
    shown.forEach(function (id, i) {
      var s = spans[id];
      var dur = durOf[id];
      var w = measured[i][0];
      var tw = measured[i][1];
      var bl = Math.max(0, frac(s.startTime) * w);
      var br = Math.min(w, Math.max(frac(s.startTime + s.duration) * w, bl + 2));
      if (frac(s.startTime + s.duration) < 0 || frac(s.startTime) > 1) { dur.hidden = true; return; }
      var left;
      if (br + 2 + tw <= w) { left = br + 2; dur.classList.add("after"); }
      else if (bl - 2 - tw >= 0) { left = bl - 2 - tw; dur.classList.add("before"); }
      else {
        left = Math.max(0, Math.min(br, w) - tw - 2);
        var bg = measured[i][2];
        dur.classList.add("inside");
        dur.style.background = bg;
        dur.style.color = luminance(rgb(bg)) > 0.179 ? "#000000" : "#ffffff";  /* >= 4.58:1 either way */
      }
      dur.style.left = left + "px";
    });
  }

  function drawEdges() {
    while (edgeSvg.firstChild) { edgeSvg.removeChild(edgeSvg.firstChild); }
    var box = rowsBox.getBoundingClientRect();
    edgeSvg.setAttribute("width", String(rowsBox.clientWidth));
    edgeSvg.setAttribute("height", String(rowsBox.scrollHeight));
    view.edges.forEach(function (e) {
      var a = spans[e[0]];
      var b = spans[e[1]];
      if (!a || !b || e[2] === "child_of" || !rowOf[e[0]] || !rowOf[e[1]] ||
          rowOf[e[0]].hidden || rowOf[e[1]].hidden) { return; }
      var la = rowOf[e[0]].querySelector(".lane").getBoundingClientRect();
      var lb = rowOf[e[1]].querySelector(".lane").getBoundingClientRect();
      var ta;
      var tb;
      if (e[2] === "fork") { ta = b.startTime; tb = ta; }
      else if (e[2] === "join") { ta = a.startTime + a.duration; tb = b.startTime + b.duration; }
      else { ta = a.startTime + a.duration; tb = b.startTime; }
      var fa = frac(ta);
      var fb = frac(tb);
      if ((fa < 0 && fb < 0) || (fa > 1 && fb > 1)) { return; }
      var clamp = function (f) { return Math.min(1, Math.max(0, f)); };
      edgeSvg.appendChild(svgEl("line", {
        x1: la.left - box.left + clamp(fa) * la.width, y1: la.top - box.top + la.height / 2,
        x2: lb.left - box.left + clamp(fb) * lb.width, y2: lb.top - box.top + lb.height / 2,
        "class": e[2], "data-from": e[0], "data-to": e[1]}));
    });
  }

  /* wide screens: the label column is as wide as the longest label needs (34% to 60% of the
   * waterfall); narrow screens put each label on its own line above the bar */
  function sizeLabels() {
    if (NARROW.matches || wf.hidden) { wf.style.removeProperty("--labelw"); return; }
    var need = 0;
    wf.classList.add("measuring");  /* natural (one-line) widths; names wrap only past 60% */
    order.forEach(function (id) {
      var row = rowOf[id];
      if (row.hidden) { return; }
      var label = row.firstChild;
      var n = parseFloat(label.style.paddingLeft) + 6 + label.querySelector(".toggle").offsetWidth +
        label.querySelector(".swatch").offsetWidth + 4 + label.querySelector(".name").scrollWidth +
        label.querySelector(".marks").offsetWidth + 2;
      need = Math.max(need, n);
    });
    wf.classList.remove("measuring");
    var W = wf.clientWidth;
    wf.style.setProperty("--labelw", Math.round(Math.min(W * 0.6, Math.max(W * 0.34, 280, need))) + "px");
  }

  function layout() {
    wf.classList.toggle("show-cp", cpOn());
    sizeLabels();
    drawTicks();
    placeBars();
    drawEdges();
    drawMinimapWindow();
    document.body.setAttribute("data-layout", String((+document.body.getAttribute("data-layout") || 0) + 1));
  }

  cpBox.addEventListener("change", function () { layout(); drawDag(); });
  btnCollapse.addEventListener("click", function () {
    order.forEach(function (id) { if (kids[id] && parentRow[id]) { collapsed[id] = true; } });
    order.forEach(function (id) {
      if (kids[id]) { setCollapsed(id, !!collapsed[id]); }
    });
  });
  btnExpand.addEventListener("click", function () {
    order.forEach(function (id) { collapsed[id] = false; });
    order.forEach(function (id) { if (kids[id]) { setCollapsed(id, false); } });
  });

  /* ---------------------------------------------------------------- search in the trace */
  function matches(s, q) {
    var hay = [service(s), s.operationName, s.spanID];
    (s.tags || []).forEach(function (t) { hay.push(t.key, typeof t.value === "object" ? JSON.stringify(t.value) : t.value); });
    (s.logs || []).forEach(function (lg) {
      (lg.fields || []).forEach(function (t) { hay.push(t.key, t.value); });
    });
    var p = procs[s.processID];
    ((p && p.tags) || []).forEach(function (t) { hay.push(t.key, t.value); });
    return hay.some(function (h) { return String(h).toLowerCase().indexOf(q) >= 0; });
  }
  var hits = [];
  var hitAt = -1;
  function runFind() {
    var q = find.value.trim().toLowerCase();
    hits = [];
    hitAt = -1;
    order.forEach(function (id) {
      var m = q !== "" && matches(spans[id], q);
      rowOf[id].classList.toggle("match", m);
      rowOf[id].classList.toggle("nomatch", q !== "" && !m);
      if (m) { hits.push(id); revealRow(id); }
    });
    findCount.textContent = q ? hits.length + " match" + (hits.length === 1 ? "" : "es") : "";
    wf.classList.toggle("finding", q !== "");
    layout();
    drawDag();
  }
  find.addEventListener("input", runFind);
  find.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && hits.length) {
      ev.preventDefault();
      hitAt = (hitAt + (ev.shiftKey ? hits.length - 1 : 1)) % hits.length;
      findCount.textContent = (hitAt + 1) + " of " + hits.length;
      showDetails(hits[hitAt]);
      rowOf[hits[hitAt]].scrollIntoView({block: "center"});
    }
  });

  /* ---------------------------------------------------------------- minimap and zoom */
  var mini = document.getElementById("minimap");
  var miniWin = el("div", "window");
  var miniSel = el("div", "selecting");
  miniSel.hidden = true;
  (function () {
    var n = order.length;
    var step = Math.max(1, Math.ceil(n / 400));
    for (var i = 0; i < n; i += step) {
      var s = spans[order[i]];
      var m = el("div", "mini-bar");
      m.style.left = (((s.startTime - t0) / total) * 100).toFixed(4) + "%";
      m.style.width = Math.max(0.2, s.duration / total * 100).toFixed(4) + "%";
      m.style.top = (2 + (i / Math.max(1, n)) * 36).toFixed(2) + "px";
      m.style.background = colour[service(s)];
      mini.appendChild(m);
    }
  })();
  mini.appendChild(miniWin);
  mini.appendChild(miniSel);

  function drawMinimapWindow() {
    miniWin.style.left = (vs * 100) + "%";
    miniWin.style.width = ((ve - vs) * 100) + "%";
    btnReset.hidden = vs === 0 && ve === 1;
  }

  function zoom(a, b) {
    a = Math.max(0, Math.min(1, a));
    b = Math.max(0, Math.min(1, b));
    if (b - a < 1e-6) { return; }
    vs = a;
    ve = b;
    document.body.setAttribute("data-zoom", vs.toFixed(4) + "-" + ve.toFixed(4));
    layout();
  }
  btnReset.addEventListener("click", function () { zoom(0, 1); });
  var dragFrom = null;
  function miniFrac(ev) {
    var r = mini.getBoundingClientRect();
    return Math.max(0, Math.min(1, (ev.clientX - r.left) / r.width));
  }
  mini.addEventListener("mousedown", function (ev) {
    dragFrom = miniFrac(ev);
    ev.preventDefault();
  });
  window.addEventListener("mousemove", function (ev) {
    if (dragFrom === null) { return; }
    var f = miniFrac(ev);
    miniSel.hidden = false;
    miniSel.style.left = (Math.min(f, dragFrom) * 100) + "%";
    miniSel.style.width = (Math.abs(f - dragFrom) * 100) + "%";
  });
  window.addEventListener("mouseup", function (ev) {
    if (dragFrom === null) { return; }
    var f = miniFrac(ev);
    var r = mini.getBoundingClientRect();
    miniSel.hidden = true;
    if (Math.abs(f - dragFrom) * r.width > 3) { zoom(Math.min(f, dragFrom), Math.max(f, dragFrom)); }
    else { /* a click: move the window there */
      var w = ve - vs;
      var a = Math.max(0, Math.min(1 - w, f - w / 2));
      zoom(a, a + w);
    }
    dragFrom = null;
  });
  mini.addEventListener("dblclick", function () { zoom(0, 1); });

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

  /* ticks inside the bar, placed in the span's own time: they follow the bar when zooming */
  function logTicks(s, bar) {
    (s.logs || []).forEach(function (lg) {
      var t = el("div", "logtick sev" + logSeverity(logFields(lg)));
      var f = s.duration > 0 ? (lg.timestamp - s.startTime) / s.duration : 0;
      t.style.left = (Math.min(1, Math.max(0, f)) * 100).toFixed(4) + "%";
      bar.appendChild(t);
    });
  }

  function logSection(s) {
    var box = el("div", "logs");
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
  var main = document.getElementById("main");
  var details = document.getElementById("details");
  var splitter = document.getElementById("splitter");

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

  /* the details panel: at the side on wide screens (resizable), under the row on narrow ones */
  function placeDetails() {
    if (details.hidden) { splitter.hidden = true; return; }
    if (NARROW.matches && selected && rowOf[selected] && document.getElementById("waterfall").offsetParent) {
      rowOf[selected].insertAdjacentElement("afterend", details);
      details.classList.add("inline");
      splitter.hidden = true;
    } else {
      main.appendChild(details);
      details.classList.remove("inline");
      splitter.hidden = false;
    }
  }

  function detailsSection(title, content) {
    details.appendChild(el("h3", null, title));
    details.appendChild(content);
  }

  function showDetails(id) {
    var s = spans[id];
    if (selected && rowOf[selected]) { rowOf[selected].classList.remove("selected"); }
    document.querySelectorAll("#dag .node.selected").forEach(function (n) { n.classList.remove("selected"); });
    selected = id;
    rowOf[id].classList.add("selected");
    var dn = document.querySelector('#dag .node[data-span-id="' + id + '"]');
    if (dn) { dn.classList.add("selected"); }
    details.textContent = "";
    details.setAttribute("data-span-id", id);
    var close = el("button", "close", "close");
    close.addEventListener("click", function () {
      details.hidden = true;
      rowOf[id].classList.remove("selected");
      selected = null;
      placeDetails();
      layout();
    });
    details.appendChild(close);
    details.appendChild(el("h2", null, service(s) + ": " + s.operationName));
    details.appendChild(kvTable([
      ["span id", s.spanID],
      ["service", service(s)],
      ["kind", kindOf(s) || "-"],
      ["start", "+" + fmtDur(s.startTime - t0)],
      ["duration", fmtDur(s.duration)],
      ["self time", fmtDur(selfTime[id])],
      ["critical path", critical[id] ? "yes" : "no"]
    ]));
    if ((s.references || []).length) {
      detailsSection("References", kvTable(s.references.map(function (r) {
        var target = spans[r.spanID];
        var txt = r.spanID + (target ? " (" + service(target) + ": " + target.operationName + ")" : " (not in this trace)");
        var a = el(target ? "a" : "span", null, txt);
        if (target) {
          a.href = "#span=" + r.spanID;
          a.addEventListener("click", function (ev) {
            ev.preventDefault();
            revealRow(r.spanID);
            showDetails(r.spanID);
            rowOf[r.spanID].scrollIntoView({block: "center"});
          });
        }
        return [r.refType, a];
      })));
    }
    detailsSection("Tags", kvTable(tagsOf(s.tags)));
    if ((s.logs || []).length) {
      detailsSection("Logs (" + s.logs.length + ")", logSection(s));
    }
    var p = procs[s.processID];
    if (p && (p.tags || []).length) { detailsSection("Process", kvTable(tagsOf(p.tags))); }
    details.hidden = false;
    placeDetails();
    layout();
  }

  var dragSplit = false;
  var grab = 0;  /* where on the divider it was grabbed: the panel edge follows that point */
  splitter.addEventListener("mousedown", function (ev) {
    dragSplit = true;
    grab = main.getBoundingClientRect().right - ev.clientX - details.offsetWidth;
    ev.preventDefault();
  });
  window.addEventListener("mousemove", function (ev) {
    if (!dragSplit) { return; }
    var r = main.getBoundingClientRect();
    var w = Math.max(240, Math.min(r.width * 0.7, r.right - ev.clientX - grab));
    main.style.setProperty("--details", w + "px");
  });
  window.addEventListener("mouseup", function () {
    if (dragSplit) { dragSplit = false; layout(); }
  });

  /* ---------------------------------------------------------------- graph (DAG) view */
  var dag = document.getElementById("dag");
  var NODE_W = 210;
  var NODE_H = 46;
  var GAP_X = 22;
  var GAP_Y = 40;

  /* node texts that do not fit their box end in "…" (the tooltip has them whole); measured, so
   * only while the graph is shown */
  function fitDagTexts() {
    if (dag.hidden) { return; }
    dag.querySelectorAll(".node text").forEach(function (t) {
      var room = NODE_W - 18;
      var full = t.textContent;
      if (t.getComputedTextLength() <= room) { return; }
      var lo = 0;
      var hi = full.length;
      while (lo < hi) {  /* the longest prefix that fits with the ellipsis */
        var mid = Math.ceil((lo + hi) / 2);
        t.textContent = full.slice(0, mid) + "…";
        if (t.getComputedTextLength() <= room) { lo = mid; } else { hi = mid - 1; }
      }
      t.textContent = full.slice(0, lo) + "…";
    });
  }

  function drawDag() {
    dag.textContent = "";
    if (!order.length) { return; }
    /* layer = longest path from a root over every edge (CHILD_OF, fork, FOLLOWS_FROM, join) */
    var layer = {};
    order.forEach(function (id) { layer[id] = 0; });
    var edges = view.edges.filter(function (e) { return spans[e[0]] && spans[e[1]] && e[0] !== e[1]; });
    for (var pass = 0; pass < order.length; pass++) {
      var changed = false;
      edges.forEach(function (e) {
        if (layer[e[1]] < layer[e[0]] + 1 && layer[e[0]] + 1 < order.length) {
          layer[e[1]] = layer[e[0]] + 1;
          changed = true;
        }
      });
      if (!changed) { break; }
    }
    var cols = [];
    order.forEach(function (id) { (cols[layer[id]] = cols[layer[id]] || []).push(id); });
    /* within a column, order nodes by the mean position of their predecessors (fewer crossings),
     * ties by the waterfall order */
    var preds = {};
    edges.forEach(function (e) { (preds[e[1]] = preds[e[1]] || []).push(e[0]); });
    var slot = {};
    var rank = {};
    order.forEach(function (id, i) { rank[id] = i; });
    var pos = {};
    var maxRows = 0;
    cols.forEach(function (col, x) {
      col = col || [];
      var key = {};
      col.forEach(function (id) {
        var p = (preds[id] || []).filter(function (q) { return slot[q] !== undefined; });
        key[id] = p.length ? p.reduce(function (a, q) { return a + slot[q]; }, 0) / p.length : rank[id];
      });
      col.sort(function (a, b) { return (key[a] - key[b]) || (rank[a] - rank[b]); });
      col.forEach(function (id, y) {
        slot[id] = y;
        pos[id] = [y * (NODE_W + GAP_X) + 8, x * (NODE_H + GAP_Y) + 8];  /* layers top down */
      });
      maxRows = Math.max(maxRows, col.length);
    });
    var W = maxRows * (NODE_W + GAP_X) + 16;
    var H = cols.length * (NODE_H + GAP_Y) + 16;
    var svg = svgEl("svg", {width: W, height: H, "class": "dag", role: "img",
                            "aria-label": "spans as a graph: fork, join and follows-from edges"});
    var defs = svgEl("defs");
    ["child_of", "fork", "join", "follows_from", "cp"].forEach(function (k) {
      var m = svgEl("marker", {id: "arrow-" + k, viewBox: "0 0 8 8", refX: 8, refY: 4,
                               markerWidth: 8, markerHeight: 8, markerUnits: "userSpaceOnUse", orient: "auto"});
      m.appendChild(svgEl("path", {d: "M0,0 L8,4 L0,8 z", "class": "arrow " + k}));
      defs.appendChild(m);
    });
    svg.appendChild(defs);
    var showCp = cpOn();
    edges.forEach(function (e) {
      var a = pos[e[0]];
      var b = pos[e[1]];
      var x1 = a[0] + NODE_W / 2;
      var y1 = a[1] + NODE_H;
      var x2 = b[0] + NODE_W / 2;
      var y2 = b[1];
      var mid = (y1 + y2) / 2;
      var cp = showCp && critical[e[0]] && critical[e[1]] && e[2] !== "fork";
      var k = cp ? "cp" : e[2];
      svg.appendChild(svgEl("path", {
        d: "M" + x1 + "," + y1 + " C" + x1 + "," + mid + " " + x2 + "," + mid + " " + x2 + "," + y2,
        "class": "edge " + e[2] + (cp ? " cp" : ""), "marker-end": "url(#arrow-" + k + ")",
        "data-from": e[0], "data-to": e[1]}));
    });
    order.forEach(function (id) {
      var s = spans[id];
      var g = svgEl("g", {"class": "node" + (showCp && critical[id] ? " critical" : "") +
                          (isTrue(tagValue(s, "error")) ? " error" : "") +
                          (rowOf[id].classList.contains("match") ? " match" : "") +
                          (id === selected ? " selected" : ""),
                          transform: "translate(" + pos[id][0] + "," + pos[id][1] + ")",
                          "data-span-id": id, tabindex: 0});
      var title = svgEl("title");
      title.textContent = service(s) + ": " + s.operationName + " — " + fmtDur(s.duration) +
        " (self " + fmtDur(selfTime[id]) + ")";
      g.appendChild(title);
      g.appendChild(svgEl("rect", {"class": "box", width: NODE_W, height: NODE_H, rx: 4}));
      g.appendChild(svgEl("rect", {"class": "stripe", width: 5, height: NODE_H, rx: 2,
                                   fill: colour[service(s)]}));
      var op = svgEl("text", {"class": "op", x: 12, y: 18});
      op.textContent = s.operationName;
      op.setAttribute("data-full", s.operationName);
      g.appendChild(op);
      var sub = svgEl("text", {"class": "sub", x: 12, y: 36});
      var k = kindOf(s);
      sub.textContent = service(s) + " · " + fmtDur(s.duration) + (k ? " · " + k : "") +
        (joins[id] ? " · join" : forks[id] ? " · fork" : "");
      g.appendChild(sub);
      g.addEventListener("click", function () { showDetails(id); });
      svg.appendChild(g);
    });
    dag.appendChild(svg);
    fitDagTexts();
  }

  function showTab(which) {
    var isDag = which === "dag";
    document.getElementById("waterfall").hidden = isDag;
    dag.hidden = !isDag;
    mini.hidden = isDag;
    tabW.classList.toggle("active", !isDag);
    tabG.classList.toggle("active", isDag);
    tabW.setAttribute("aria-selected", String(!isDag));
    tabG.setAttribute("aria-selected", String(isDag));
    document.body.setAttribute("data-view", isDag ? "dag" : "waterfall");
    placeDetails();
    if (!isDag) { layout(); } else { fitDagTexts(); }
  }
  tabW.addEventListener("click", function () { showTab("waterfall"); });
  tabG.addEventListener("click", function () { showTab("dag"); });

  /* ---------------------------------------------------------------- start */
  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () { placeDetails(); layout(); }, 50);
  });
  NARROW.addEventListener("change", function () { placeDetails(); layout(); });

  drawDag();
  showTab(/(^|[#&])view=dag(&|$)/.test(window.location.hash) ? "dag" : "waterfall");
  /* a link may name a span to open: /trace/ID#span=<16 hex digits> */
  var wanted = /(^#|&)span=([0-9a-f]{16})(&|$)/.exec(window.location.hash);
  if (wanted && spans[wanted[2]] && rowOf[wanted[2]]) {
    revealRow(wanted[2]);
    showDetails(wanted[2]);
  }
  layout();
  document.body.setAttribute("data-rendered", String(rowsBox.querySelectorAll(".span-row").length));
})();
