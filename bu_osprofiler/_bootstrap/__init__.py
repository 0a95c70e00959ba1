"""Directory put first on PYTHONPATH by bu-osprofiler-run (holds its sitecustomize)."""
