"""Neuroscope's benchmark suite: per-token SAE latency, instrumented (and filtered) decode speed and corpus-pass
throughput across backends.

Run ``python -m benchmarks --help`` (or ``just bench`` / ``just bench-full``). Every run prints rich tables and
writes one JSON record under ``benchmarks/results/``; see ``benchmarks/README.md`` for how to read them.
"""

SCHEMA = "neuroscope-bench/2"  # 2: the filtered and steered decode modes, the corpus rows
