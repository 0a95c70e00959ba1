/* bu-osprofiler trace list: the operation list follows the chosen service without a submit. */
(function () {
  "use strict";
  var form = document.getElementById("filters");
  if (!form) { return; }
  var svc = form.elements.service;
  var op = form.elements.operation;
  function fill(names) {
    var keep = op.value;
    while (op.options.length > 1) { op.remove(1); }
    names.forEach(function (n) {
      var o = document.createElement("option");
      o.value = n;
      o.textContent = n;
      op.appendChild(o);
    });
    op.value = names.indexOf(keep) >= 0 ? keep : "";
  }
  svc.addEventListener("change", function () {
    if (!svc.value) { fill([]); return; }
    op.disabled = true;
    fetch("/api/services/" + encodeURIComponent(svc.value) + "/operations",
          {headers: {"Accept": "application/json"}})
      .then(function (r) { return r.json(); })
      .then(function (doc) { fill(doc.data || []); })
      .catch(function () { fill([]); })
      .then(function () { op.disabled = false; document.body.setAttribute("data-ops", svc.value); });
  });
})();
