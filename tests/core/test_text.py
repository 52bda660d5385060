"""Incremental detokenization (with a real byte-level tokenizer) and stop-string matching."""

from __future__ import annotations

import pytest

from neuroscope.core.text import LOOKAHEAD, REPLACEMENT, Detokenizer, StopMatcher

TEXTS = [
    "The cat sat on the mat. Numbers: 3.14159 and 42!",
    "héllo — 日本語 😀",
    "Bonjour, ¿qué tal? 🎉🎉 naïve café — ok",
    "  leading spaces\nand\ttabs  ",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_fixture):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_fixture.model_dir)


def stream(tokenizer, ids):
    detok = Detokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids]
    return deltas, detok.flush()


def test_multibyte_text_is_split_over_several_tokens(tokenizer):
    # the premise of the multi-byte tests: the emoji needs more than one byte-level token
    ids = tokenizer.encode("😀", add_special_tokens=False)
    assert len(ids) > 1
    assert REPLACEMENT in tokenizer.decode(ids[:1])


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_the_decoded_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas, tail = stream(tokenizer, ids)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    assert full == text  # sanity: the tokenizer round-trips
    assert "".join(deltas) == full
    assert tail == ""


@pytest.mark.parametrize("text", TEXTS)
def test_no_delta_holds_a_partial_character(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas, _ = stream(tokenizer, ids)
    assert all(REPLACEMENT not in d for d in deltas)
    # text arrives as it is completed, not all at the end
    assert sum(1 for d in deltas if d) > 1


def test_the_character_is_released_with_the_token_that_completes_it(tokenizer):
    ids = tokenizer.encode("a😀", add_special_tokens=False)
    deltas, _ = stream(tokenizer, ids)
    assert deltas[-1].endswith("😀")
    assert all(d == "" for d in deltas[1:-1])  # the emoji's leading bytes give nothing yet


def test_special_tokens_are_skipped(tokenizer):
    sot = tokenizer.convert_tokens_to_ids("<start_of_turn>")
    ids = tokenizer.encode("hello", add_special_tokens=False) + [sot, tokenizer.eos_token_id]
    ids += tokenizer.encode(" world", add_special_tokens=False)
    deltas, tail = stream(tokenizer, ids)
    assert "".join(deltas) + tail == "hello world"


def test_flush_releases_the_held_tail(tokenizer):
    ids = tokenizer.encode("ok😀", add_special_tokens=False)
    detok = Detokenizer(tokenizer)
    out = "".join(detok.add(i) for i in ids[:-1])  # stop one token short of the emoji
    assert out == "ok"
    tail = detok.flush()
    assert tail != "" and REPLACEMENT in tail  # the incomplete bytes come out (as U+FFFD), not lost
    assert detok.flush() == ""  # nothing is released twice


def test_flush_after_complete_text_is_empty_and_stream_continues(tokenizer):
    detok = Detokenizer(tokenizer)
    first = "".join(detok.add(i) for i in tokenizer.encode("one", add_special_tokens=False))
    assert detok.flush() == ""
    second = "".join(detok.add(i) for i in tokenizer.encode(" two", add_special_tokens=False))
    assert first + second == "one two"


# ---------------------------------------------------------------------------------------------- stops
def feed_all(matcher: StopMatcher, deltas):
    return [matcher.feed(d) for d in deltas]


def test_no_stops_passes_everything_through():
    m = StopMatcher([])
    assert feed_all(m, ["ab", "c"]) == ["ab", "c"]
    assert m.finish() == "" and not m.stopped


def test_stop_string_spanning_several_deltas():
    m = StopMatcher(["END"])
    out = feed_all(m, ["hello E", "N", "D and more"])
    assert "".join(out) == "hello "
    assert m.stopped
    assert m.feed("later") == "" and m.finish() == ""


def test_a_possible_prefix_is_held_then_released():
    m = StopMatcher(["END"])
    assert m.feed("abc E") == "abc "  # "E" may start the stop string
    assert m.feed("N") == ""  # "EN" still may
    assert m.feed("x") == "ENx"  # it did not: released, nothing lost
    assert not m.stopped
    assert m.finish() == ""


def test_finish_releases_held_text():
    m = StopMatcher(["END"])
    assert m.feed("the EN") == "the "
    assert m.finish() == "EN"


def test_earliest_stop_wins():
    m = StopMatcher(["world", "lo"])
    out = feed_all(m, ["hel", "lo world"])
    assert "".join(out) == "hel"
    assert m.stopped


def test_earliest_stop_wins_in_one_delta_regardless_of_list_order():
    for stops in (["C", "B"], ["B", "C"]):
        m = StopMatcher(stops)
        assert m.feed("aBcC") == "a"


def test_text_after_the_stop_is_never_released():
    m = StopMatcher(["\n\n"])
    out = feed_all(m, ["line one\n", "\nsecret", " more secret"])
    assert "".join(out) == "line one"
    assert m.finish() == ""
    assert "secret" not in "".join(out)


def test_stop_at_the_very_start():
    m = StopMatcher(["STOP"])
    assert m.feed("STOP now") == ""
    assert m.stopped


def test_empty_stop_strings_are_ignored():
    m = StopMatcher(["", "x"])
    assert m.feed("abc") == "abc"
    assert m.feed("yxz") == "y" and m.stopped


def test_overlapping_prefixes_of_several_stops():
    m = StopMatcher(["abcd", "bce"])
    assert m.feed("zab") == "z"
    assert m.feed("c") == ""  # "abc" could still be "abcd", "bc" could be "bce"
    assert m.feed("e tail") == "a"  # "bce" matched at index 2: "za" in all
    assert m.stopped


# ---------------------------------------------------------------------------------------------- bounded look-ahead
class CountingTokenizer:
    """The real tokenizer, counting the ids it is asked to decode (the detokenizer's work)."""

    def __init__(self, tok):
        self.tok, self.decoded = tok, 0

    def decode(self, ids, **kw):
        self.decoded += len(ids)
        return self.tok.decode(ids, **kw)


def lone_byte(tokenizer) -> int:
    """The token of the lead byte of a three-byte character ("€" is E2 82 AC): alone, it can never complete."""
    ids = tokenizer.encode("€", add_special_tokens=False)
    assert len(ids) == 3 and tokenizer.decode(ids[:1]) == REPLACEMENT
    return ids[0]


def test_lone_bytes_never_stall_the_stream(tokenizer):
    # e.g. forced by logit_bias: every token is a lead byte no continuation follows
    tid = lone_byte(tokenizer)
    detok = Detokenizer(tokenizer)
    deltas = [detok.add(tid) for _ in range(40)]
    # text comes out within the look-ahead, not all at the end
    for i in range(0, 40, LOOKAHEAD):
        assert "".join(deltas[i : i + LOOKAHEAD]), f"nothing released for tokens {i}..{i + LOOKAHEAD - 1}"
    text = "".join(deltas) + detok.flush()
    assert set(text) == {REPLACEMENT} and len(text) == 40  # each byte that cannot complete is one U+FFFD


def test_text_after_a_lone_byte_is_released_with_its_token(tokenizer):
    tid = lone_byte(tokenizer)
    ids = tokenizer.encode("ok", add_special_tokens=False) + [tid] * 5 + tokenizer.encode(" done 😀",
                                                                                         add_special_tokens=False)
    detok = Detokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids]
    assert "".join(deltas) + detok.flush() == "ok" + REPLACEMENT * 5 + " done 😀"
    assert deltas[-1].endswith("😀")  # a character split over byte tokens still waits for its last byte


def test_detokenization_is_linear(tokenizer):
    # lone bytes used to grow the decode window without end: n tokens cost n**2 / 2 decoded ids
    tid = lone_byte(tokenizer)
    counting = CountingTokenizer(tokenizer)
    detok = Detokenizer(counting)
    n = 400
    for _ in range(n):
        detok.add(tid)
    detok.flush()
    assert counting.decoded <= 4 * LOOKAHEAD * n


# ---------------------------------------------------------------------------------------------- linear stops
def profile_events(fn) -> int:
    """How many Python and C function calls ``fn()`` makes (a machine-independent measure of its work)."""
    import sys

    count = 0

    def tally(frame, event, arg):
        nonlocal count
        count += 1

    sys.setprofile(tally)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.parametrize("char", ["a", "z"], ids=["almost-matching", "never-matching"])
def test_stop_matching_work_does_not_grow_with_the_stop_length(char):
    # matching a stop must not try every prefix length of it for every token (quadratic in the stop's length,
    # cubic overall): the work per character must not depend on how long the stop is
    def run(stop_length: int) -> int:
        m = StopMatcher(["a" * (stop_length - 1) + "b"])
        text = [char] * 2000
        return profile_events(lambda: [m.feed(d) for d in text])

    short, long = run(8), run(800)
    assert long < 2 * short, (short, long)


def test_a_long_stop_still_matches_across_deltas():
    stop = "xy" * 300 + "z"
    m = StopMatcher([stop])
    text = "before " + "xy" * 500 + "z after"
    out = [m.feed(text[i : i + 3]) for i in range(0, len(text), 3)]
    assert m.stopped and "".join(out) == "before " + "xy" * 200
