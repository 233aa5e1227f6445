"""CPU-scale experiments behind docs/RESULTS.md (``python -m dsod.experiments``)."""
