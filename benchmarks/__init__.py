"""ttnet benchmarks: ``make bench`` (``python -m benchmarks``); diagnostics:
``python -m benchmarks.diagnose``. See docs/benchmarks.md."""
