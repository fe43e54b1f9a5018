"""ttnet benchmarks: ``make bench`` (``python benchmarks/run.py``)."""
