for (const b of document.querySelectorAll("button[data-rule]")) {
  b.addEventListener("click", async () => {
    const r = await fetch("/api/tracepoints/rules", {method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({rules: [JSON.parse(b.dataset.rule)]})});
    if (!r.ok) { alert((await r.json()).error); return; }
    setTimeout(() => location.reload(), 1200);
  });
}
