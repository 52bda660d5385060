"""Which features fire on a text: the prompt path of serving without generation.

:func:`run` is called on the generation thread (through ``Engine.call``): the backend's own ``prefill`` with
prompt features (the same capture, encode, filter and top-k as every served prompt; its first sampled token
is dropped), then each position's features labelled as the feature stream's prompt events give them.
:func:`summary` ranks the features that fired anywhere in the text (BOS excluded) by their largest activation.
"""

from __future__ import annotations

from typing import Any

from neuroscope.core.protocol import GenerationParams
from neuroscope.core.records import prompt_step
from neuroscope.core.text import Detokenizer

SUMMARY = 20


def run(backend, tok, labels, ids: list[int], top_k: int, *, feature_filter=None,
        special_ids: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Every position of ``ids``: its token, L0 and top ``top_k`` features (labels, and under a calibrated filter
    ``surprise`` and ``filtered_count``, as the stream's events), and the summary. ``feature_filter`` is the
    ``ActiveFilter`` in force (already set on the backend), ``special_ids`` the ids marked ``special``."""
    if not ids:
        raise ValueError("nothing to inspect")
    params = GenerationParams(max_tokens=1, prompt_features=True)
    pre = backend.prefill(list(ids), params)
    rows = backend.to_host(pre.prompt_records)
    if len(rows) != len(ids):
        raise RuntimeError(f"backend returned {len(rows)} prompt records for {len(ids)} tokens")
    flt = feature_filter
    surprise = flt.surprise if flt is not None else None
    detok = Detokenizer(tok, skip_special_tokens=False)
    bos = getattr(tok, "bos_token_id", None)
    tokens, stats = [], {}
    for j, tid in enumerate(ids):
        step = prompt_step(tid, rows[j], position=j)
        fids = step.feature_ids.tolist()
        labels.observe(fids)
        feats = []
        for i, v in zip(fids, step.feature_values.tolist()):
            f = {"index": i, "label": labels[i], "activation": round(v, 6)}
            if surprise is not None:
                f["surprise"] = round(v * float(surprise[i]), 6)
            feats.append(f)
            if not (j == 0 and tid == bos):
                m, s, c = stats.get(i, (0.0, 0.0, 0))
                stats[i] = (max(m, v), s + v, c + 1)
        entry = {"position": j, "token": detok.add(tid), "token_id": tid, "special": tid in special_ids,
                 "bos": j == 0 and tid == bos, "l0": step.l0, "top_features": feats[:top_k]}
        if surprise is not None:
            entry["filtered_count"] = step.filtered
        tokens.append(entry)
    return {"tokens": tokens, "summary": summary(stats, labels)}


def summary(stats: dict[int, tuple[float, float, int]], labels, n: int = SUMMARY) -> list[dict[str, Any]]:
    """The ``n`` features with the largest activation (ties by lower index), each with its sum and count over
    the positions where it was among the top-k."""
    ranked = sorted(stats.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]
    return [{"index": i, "label": labels[i], "max": round(m, 6), "sum": round(s, 6), "count": c}
            for i, (m, s, c) in ranked]
