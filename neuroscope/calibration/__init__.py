"""The data half's first pass: a text corpus through the model and SAE, and what serving makes of it.

- ``corpus`` — the corpus (WikiText from the hub as one ``.txt`` per sample, or any folder of ``.txt``),
  ``wikitext`` — WikiText rows → samples;
- ``corpus_pass`` — samples → token ids → padded batches → a backend's ``corpus_pass``;
  ``driver`` — the one checkpointed loop around it (resume, batches, progress with ETA, atomic checkpoints) that
  ``calibrate run`` and the labelling examples pass both drive with their own accumulator;
- ``stats`` — calibration statistics (per-feature firing rate, mean, max, …) and their file;
  ``run`` — ``calibrate run``;
- ``filters`` — the serve-time feature filters built from those statistics (a mask and a ranking scale applied
  on the device before top-k).

May import: neuroscope.core, neuroscope.store, neuroscope.progress, neuroscope.config, neuroscope.runtime.
"""
