"""Feature labels: where a feature's human-readable name comes from.

- ``table`` — a label map (feature index → label) with the numeric ``feature_<i>`` fallback;
- ``chain`` — the label source chain (labels-path → auto-interp → legacy file → Neuronpedia → demo → numeric),
  ``sources`` — reading every source of one served SAE into a chain;
- ``neuronpedia/`` — Neuronpedia: the registry of model / source ids, the per-feature client, the cache, the
  lazy background fetcher, the bulk export;
- ``autointerp/`` — LLM auto-interpretation: the examples pass, labelling requests, detection scoring;
- ``retrying`` — Retry-After and jittered back-off for the HTTP clients; ``aio`` — running a command's coroutine
  from synchronous code.

May import: neuroscope.core, neuroscope.calibration, neuroscope.store, neuroscope.progress, neuroscope.config,
neuroscope.runtime.
"""
