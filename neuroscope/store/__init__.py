"""Where Neuroscope keeps its files and how it writes them.

- ``paths`` — every path under the cache (``NEUROSCOPE_CACHE``) and the namespaces of models / SAEs;
- ``atomic`` — files that appear whole or not at all; ``jsonl`` — JSON Lines appended durably, read tolerantly;
- ``trash`` and ``clean`` — the reversible ``clean`` (and ``pull``'s replaced files): moved, never deleted;
- ``hf`` — Hugging Face hub access (reachability, failures as one line);
- ``datarepo`` — ``push`` / ``pull`` of calibration and labels through a dataset repo, with a manifest.

May import: neuroscope.progress. Nothing else in neuroscope: every other part stands on this one.
"""
