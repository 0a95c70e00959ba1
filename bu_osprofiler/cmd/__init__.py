"""Command-line tools: ``bu-osprofiler`` (collector, trace list / show)."""
