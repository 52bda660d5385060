"""The host-side record a backend copies once per token, and the EOS ids every backend stops on."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from neuroscope.protocol import Step


def unpack_step(
    tid: int, rec: np.ndarray, k: int, *, position: int, prompt: bool = False, finish: str | None = None,
    capture: bool = True,
) -> Step:
    """``rec`` is ``[l0, k ids, k values]`` (float32; ids exact below 2**24). Features that did not fire are
    dropped, so a step carries fewer than k features when fewer fired."""
    if not capture:
        empty = np.zeros(0, dtype=np.int64)
        return Step(int(tid), empty, empty.astype(np.float32), 0, position, prompt, finish)
    l0 = int(rec[0])
    ids = rec[1 : 1 + k].astype(np.int64)
    vals = rec[1 + k : 1 + 2 * k].astype(np.float32)
    keep = vals > 0
    return Step(int(tid), ids[keep], vals[keep], l0, position, prompt, finish)


def eos_ids(sources: Iterable[Any], tokenizer: Any) -> list[int]:
    """Every EOS id named by ``sources`` (ints or lists of ints, e.g. config and generation_config values), the
    tokenizer's EOS, and ``<end_of_turn>`` (Gemma's end of a chat turn) when the vocabulary has it."""
    out: set[int] = set()
    for e in sources:
        if isinstance(e, int):
            out.add(e)
        elif e:
            out.update(int(x) for x in e)
    if tokenizer.eos_token_id is not None:
        out.add(int(tokenizer.eos_token_id))
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        out.add(eot)
    return sorted(out)
