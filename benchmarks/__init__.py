"""Neuroscope's benchmark suite: per-token SAE latency and instrumented decode speed across backends.

Run ``python -m benchmarks --help`` (or ``just bench`` / ``just bench-full``). Every run prints rich tables and
writes one JSON record under ``benchmarks/results/``; see ``benchmarks/README.md`` for how to read them.
"""

SCHEMA = "neuroscope-bench/1"
