"""Neuronpedia's explanations of a served SAE: ``registry`` (which model / source ids hold them), ``client``
(the per-feature API, asked politely), ``cache`` (one JSON line per feature asked), ``lazy`` (labels of the
features that appear in the stream, fetched in the background) and ``bulk`` (``labels fetch --source
neuronpedia``: the public export, with the API as fallback)."""
