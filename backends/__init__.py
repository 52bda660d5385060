"""Backend implementations, imported lazily by name through :mod:`neuroscope.registry`."""
