"""The documentation stands alone and its Python is real: every ```python block of README.md and
doc/*.md runs (the blocks of one file in order, in one fresh interpreter, as a reader would paste
them), a block that needs an optional extra says so next to it, and no page points at documents
outside the repository."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "doc").glob("*.md"))
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# modules of the optional extras (pyproject's [project.optional-dependencies])
EXTRA_OF = {"opentracing": "opentracing", "oslo_config": "oslo", "oslo_messaging": "oslo",
            "webob": "oslo", "sqlalchemy": "demo"}


def blocks(page):
    text = page.read_text(encoding="utf-8")
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = "\n".join(text[:m.start()].splitlines()[-6:])
        yield line, m.group(1), before


def test_every_page_is_checked():
    names = {p.name for p in PAGES}
    assert {"README.md", "api.md", "propagation.md", "fork-join.md"} <= names
    assert sum(1 for p in PAGES for _ in blocks(p)) >= 8


@pytest.mark.parametrize("page", [p for p in PAGES if any(blocks(p))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_python_snippets_run(page, tmp_path):
    parts = []
    for line, code, before in blocks(page):
        needed = {EXTRA_OF[m] for m in re.findall(r"^\s*(?:from|import)\s+(\w+)", code, re.M)
                  if m in EXTRA_OF}
        for extra in needed:
            assert f"bu_osprofiler[{extra}]" in before, (
                f"{page.name}:{line}: this block needs the '{extra}' extra; say so just above it "
                f"(pip install 'bu_osprofiler[{extra}]')")
        parts.append(f"# ---- {page.name}:{line}\n{code}")
    script = tmp_path / "snippets.py"
    script.write_text("\n".join(parts), encoding="utf-8")
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "xdg"), JAEGER_SERVICE_NAME="docs")
    r = subprocess.run([sys.executable, "-X", "faulthandler", str(script)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, f"{page.name}: the snippets fail:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def test_no_references_outside_the_repository():
    bad = re.compile(r"DESIGN(\.md)?\s*§|§\s*\d|\.\./shared|/work/|\bspecs/")
    for page in PAGES:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            assert not bad.search(line), f"{page.name}:{n}: {line.strip()}"
    # relative links point at files that exist
    for page in PAGES:
        for target in re.findall(r"\]\((?!https?:|#|mailto:)([^)#\s]+)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
