"""Package data: small registries kept as data, not code."""
