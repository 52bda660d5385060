"""Incremental detokenization and stop-string matching (pure Python, used by the generation thread).

Both run once per generated token and cost time linear in the text: the detokenizer decodes a window of a
bounded number of tokens, the stop matcher looks at each new character once.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"
# tokens a character may take to complete: a UTF-8 sequence is at most 4 bytes, each token gives at least one
LOOKAHEAD = 4


class Detokenizer:
    """Turns token ids into text deltas whose concatenation is the decoded text.

    Byte-level tokenizers can split one character over several tokens; a delta is held back while the decoded
    tail is an incomplete UTF-8 sequence (ends in U+FFFD) and released with the token that completes it. Text
    is held back for at most ``LOOKAHEAD`` tokens: bytes that have not made a character by then cannot (or are
    a literal U+FFFD) and are released as U+FFFD, and decoding starts afresh after them.
    """

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the decode window (gives context for leading spaces)
        self._read = 0  # ids before this are already emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self.ids)
            return delta
        if len(self.ids) - self._read >= LOOKAHEAD:
            # nothing completed within the look-ahead: release what the window decodes to, U+FFFD included
            return self.flush()
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete sequence decodes to U+FFFD)."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text) :]


class _Stop:
    """One stop string as a Knuth-Morris-Pratt automaton: ``matched`` is the length of the longest prefix of the
    stop that the text seen so far ends with."""

    def __init__(self, stop: str):
        self.stop = stop
        self.fail = [0] * len(stop)  # fail[i]: longest proper border of stop[: i + 1]
        k = 0
        for i in range(1, len(stop)):
            while k and stop[i] != stop[k]:
                k = self.fail[k - 1]
            if stop[i] == stop[k]:
                k += 1
            self.fail[i] = k
        self.matched = 0

    def step(self, ch: str) -> bool:
        """Take one more character; True when the text now ends with the whole stop."""
        stop, k = self.stop, self.matched
        while k and ch != stop[k]:
            k = self.fail[k - 1]
        if ch == stop[k]:
            k += 1
        if k == len(stop):
            self.matched = self.fail[k - 1]
            return True
        self.matched = k
        return False


class StopMatcher:
    """Releases text up to (not including) the first stop string; holds back a tail that may start one.

    Each character is looked at once per stop (an automaton per stop string), and only the held-back tail is
    kept, so a request's stop matching costs time linear in its text whatever the stop strings' length.
    """

    def __init__(self, stops: list[str]):
        self._stops = [_Stop(s) for s in stops if s]
        self._pending = ""  # text not yet released: at most the longest stop's length, between calls
        self.stopped = False

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        base = len(self._pending)
        self._pending += delta
        first: int | None = None  # where the earliest complete stop in this delta starts (in _pending)
        for st in self._stops:
            for i, ch in enumerate(delta):
                if st.step(ch):
                    start = base + i + 1 - len(st.stop)
                    first = start if first is None else min(first, start)
                    break
        if first is not None:
            self.stopped = True
            out, self._pending = self._pending[: max(first, 0)], ""
            return out
        hold = max(st.matched for st in self._stops)
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def finish(self) -> str:
        if self.stopped:
            return ""
        out, self._pending = self._pending, ""
        return out
