"""The serving core: the backend boundary and everything that runs on the generation thread.

- ``protocol`` — the boundary: what a backend provides (``load``, ``prefill``, one fixed-shape ``decode_step``,
  ``to_host``, ``corpus_pass``), the records it returns, steering and feature-filter inputs;
- ``decode`` — the one per-token state machine every backend runs under; ``records`` — host records → ``Step``;
- ``engine`` — the generation thread (jobs in, text deltas and feature events out): ``jobs`` — what it is given
  and gives back, ``stream`` — one job's host side per step; ``text`` — incremental detokenization and stop
  strings; ``feature_hub`` — the broadcast of feature events to subscribers;
- ``steering`` — steering specs from request bodies and the command line;
- ``sae`` — SAE weights (Gemma Scope ``params.npz``) and the numpy reference encoder; ``checkpoint`` — a model
  checkpoint on disk; ``hub_cache`` — models and SAEs in the Hugging Face cache (list, pull);
  ``releases`` — the known SAE releases per model and each model's default SAE (``neuroscope/data``);
  ``fixtures`` — the small offline Gemma-2 checkpoints (the demo model, tests, benchmarks);
- ``registry`` — backends by name, imported lazily; ``loading`` — load failures as one line.

May import: neuroscope.store, neuroscope.progress. Never mlx or torch (those live in ``backends``).
"""
