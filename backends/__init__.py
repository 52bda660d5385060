"""Backend implementations — torch (``torch_backend`` and its step, model, SAE, sampling and RNG modules) and MLX
(``mlx_backend`` and its model (one per family), SAE, corpus and batch modules) — imported lazily by name through
:mod:`neuroscope.core.registry`, so a Mac without torch and a Linux box without mlx both work.

May import: neuroscope.core, neuroscope.store.
"""
