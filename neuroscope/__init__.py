"""Neuroscope: an SAE-instrumented LLM inference server.

The package is laid out as the system is (docs/architecture.md has the data flow):

- ``core/`` — the backend boundary (``protocol``) and what runs on the generation thread: decode loop, engine,
  records, text, steering specs, SAE weights, checkpoints, the backend registry, the demo fixtures;
- ``server/`` — the chat port and the features port on one event loop, and ``serve()``;
- ``calibration/`` — the data half's corpus pass: corpus, the checkpointed pass driver, statistics, filters;
- ``labels/`` — the label chain and its sources: Neuronpedia, auto-interpretation;
- ``store/`` — the cache's paths, atomic files, JSONL, trash / clean, hub access, the dataset repo;
- ``cli/`` — the ``neuroscope`` command line, one module per command group;
- ``config`` (what to serve), ``runtime`` (loading it: backend, model, SAE, filter, labels), ``progress``
  (rich progress for long jobs); ``data/`` (registries shipped as JSON) and ``viewer/`` (the live page).

The implementations (torch, MLX) live in the top-level ``backends`` package, imported lazily by name.
"""

__version__ = "0.1.0"
