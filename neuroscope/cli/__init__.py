"""The ``neuroscope`` command line: the typer app (``serve``: the root, its options, ``serve`` and ``backends``) and one
module per command group — ``corpus``, ``calibrate``, ``labels`` (``fetch``, ``show``) with ``autointerp``
(``labels generate``, ``labels score``), ``features`` (``search``, ``show``, ``inspect``), ``steer``, ``clean``, ``models`` (``models`` and ``sae``),
``push_pull``
— plus ``options``, what several commands take alike. A command parses its options, builds a config and calls one
function of the package below it; errors print as one line with a non-zero exit.

May import: anything in neuroscope (it is the top of the stack); backends only through ``neuroscope.core.registry``.
"""

from neuroscope.cli.serve import app, main

__all__ = ["app", "main"]
