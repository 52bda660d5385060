"""Neuroscope: an SAE-instrumented LLM inference server."""

__version__ = "0.1.0"
