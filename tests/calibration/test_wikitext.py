"""WikiText rows → samples: artefacts undone, titles and headings dropped, one article per sample, sizes bounded."""

from __future__ import annotations

import pytest

from neuroscope.calibration.wikitext import SampleOptions, articles, fix_artefacts, heading_level, samples
from tests.support import wikitext_data as wt


@pytest.mark.parametrize("raw, fixed", [
    ("a tactical role @-@ playing video game", "a tactical role-playing video game"),
    ("drew 4 @,@ 500 visitors", "drew 4,500 visitors"),
    ("a height of 3 @.@ 5 metres", "a height of 3.5 metres"),
    ("real @-@ time , 1 @,@ 000 @,@ 000 and 0 @.@ 25", "real-time , 1,000,000 and 0.25"),
    ("no artefacts here : a @ b , e-mail@host", "no artefacts here : a @ b , e-mail@host"),
])
def test_artefacts_are_undone(raw, fixed):
    assert fix_artefacts(raw) == fixed


@pytest.mark.parametrize("line, level", [
    (" = Valkyria Chronicles III = \n", 1),
    (" = = Gameplay = = \n", 2),
    (" = = = Works = = = \n", 3),
    (" = Gambia women 's national football team = \n", 1),
    (" The = sign is used in equations . \n", 0),
    (" = = unbalanced = \n", 0),
    ("", 0),
])
def test_heading_levels(line, level):
    assert heading_level(line) == level


def _all_samples(rows=None, options=SampleOptions()):
    return [text for _, text in samples(wt.rows() if rows is None else rows, options)]


def test_titles_headings_and_empty_rows_are_dropped():
    out = _all_samples()
    for text in out:
        for line in text.split("\n"):
            assert heading_level(line) == 0, line
            assert line == "" or line == line.strip()
        assert "\n\n\n" not in text
    joined = "\n".join(out)
    for title, _, sections in wt.ARTICLES:
        assert f"= {title} =" not in joined
        for heading, _ in sections:
            if heading:
                assert f"= {heading} =" not in joined


def test_no_sample_mixes_two_articles_and_every_paragraph_is_kept_in_order():
    expected = wt.expected_paragraphs()
    by_article: dict[str, list[str]] = {}
    for text in _all_samples():
        owners = {m for m in wt.MARKERS if f"{m} p" in text or (m == "Valkyria" and "Senjō" in text)}
        assert len(owners) == 1, (owners, text[:80])
        by_article.setdefault(owners.pop(), []).append(text)
    # the one-line article is shorter than a sample may be: dropped; every other article is complete, in order
    assert "Gambia" not in by_article
    for marker, texts in by_article.items():
        assert " ".join(" ".join(texts).split()) == " ".join(" ".join(expected[marker]).split()), marker


def test_samples_join_paragraphs_up_to_the_target_and_never_beyond_the_maximum():
    options = SampleOptions()
    out = _all_samples()
    assert all(options.min_chars <= len(t) <= options.max_chars for t in out)
    # several paragraphs per sample, and most samples reach the target (the rest end an article)
    assert sum("\n\n" in t for t in out) >= len(out) // 2
    assert sum(len(t) >= options.target_chars for t in out) >= len(out) // 2


def test_a_paragraph_longer_than_a_sample_is_split_at_sentence_ends():
    long = wt.expected_paragraphs()[wt.LONG_PARAGRAPH_OF][1]
    assert len(long) > SampleOptions().max_chars
    pieces = [t for t in _all_samples() if f"{wt.LONG_PARAGRAPH_OF} p1 " in t]
    assert len(pieces) >= 2
    for piece in pieces[:-1]:
        assert piece.endswith(" ."), piece[-40:]  # WikiText writes a sentence end as " ."


def test_small_options_are_honoured():
    opts = SampleOptions(target_chars=300, max_chars=400, min_chars=50)
    out = _all_samples(options=opts)
    assert all(50 <= len(t) <= 400 for t in out)
    assert len(out) > len(_all_samples())


def test_articles_split_at_top_level_titles_only():
    rows = [" = A = \n", "", " one \n", " = = S = = \n", " two \n", " = B = \n", " three \n", ""]
    assert list(articles(rows)) == [["one", "two"], ["three"]]
    # text before the first title is an article of its own; None rows count as empty
    assert list(articles([" lead \n", None, " = T = \n", " body \n"])) == [["lead"], ["body"]]


def test_same_rows_same_samples():
    """The samples depend on the rows alone, not on how they arrive (a list, or a stream read once)."""
    listed = list(samples(list(wt.rows()), SampleOptions()))
    streamed = list(samples((row for row in wt.rows()), SampleOptions()))
    assert listed and streamed == listed
