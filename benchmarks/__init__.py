"""Benchmarks of lightning-rwc (run with ``python -m benchmarks.run``)."""
