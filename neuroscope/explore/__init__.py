"""The feature explorer: find a feature by words, see what it is, inspect any text.

- ``search`` — full-text search over the label chain (SQLite FTS5, BM25, the last word as a prefix, a number or
  ``#123`` first), rebuilt when the labels change;
- ``page`` — one feature's page: its label, calibration statistics, examples, decoder-cosine neighbours and
  direct logit effects (those two computed by the backend, on the device), cached per feature;
- ``inspect`` — which features fire on a text: a prefill only, every prompt position's features as the feature
  stream gives them, and a summary;
- ``weights`` — the unembedding and final norm read alone from a checkpoint (for the page without the model).

May import: neuroscope.core, neuroscope.calibration, neuroscope.labels, neuroscope.store, neuroscope.config,
neuroscope.runtime.
"""
