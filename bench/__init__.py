"""Benchmarks: ``python -m bench`` (``make bench``).  Every figure is measured
against its alternatives in the same run and printed as a ratio."""
