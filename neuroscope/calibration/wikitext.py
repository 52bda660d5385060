"""WikiText rows → corpus samples (pure text, no I/O).

WikiText has one paragraph per row, a leading space and a trailing newline on each, empty rows between them,
article titles as `` = Title = `` and section headings as `` = = Section = = `` (deeper levels add ``=``), and
three tokenizer artefacts: `` @-@ ``, `` @,@ ``, `` @.@ `` for a ``-``, ``,`` or ``.`` inside a word or number.
A sample joins consecutive paragraphs of one article up to a target length; a new top-level title starts a new
article, headings and empty rows are dropped, and the artefacts are undone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_ARTEFACT = re.compile(r" ?@([-,.])@ ?")
_HEADING = re.compile(r"^((?:= )+)(\S.*?)((?: =)+)$")
PARAGRAPH_SEP = "\n\n"


@dataclass(frozen=True, slots=True)
class SampleOptions:
    target_chars: int = 1500  # stop adding paragraphs once a sample is this long
    max_chars: int = 2000  # never go beyond (a longer paragraph is split at a sentence end)
    min_chars: int = 200  # drop shorter leftovers (an article's last few lines)

    def as_dict(self) -> dict:
        return {"target_chars": self.target_chars, "max_chars": self.max_chars, "min_chars": self.min_chars}


def fix_artefacts(text: str) -> str:
    """``role @-@ playing`` → ``role-playing``, ``1 @,@ 000`` → ``1,000``, ``2 @.@ 5`` → ``2.5``."""
    return _ARTEFACT.sub(r"\1", text)


def heading_level(line: str) -> int:
    """1 for an article title (`` = Title = ``), 2+ for section headings, 0 for anything else."""
    m = _HEADING.match(line.strip())
    if not m:
        return 0
    left, right = m.group(1).count("="), m.group(3).count("=")
    return left if left == right else 0


def articles(rows: Iterable[str | None]) -> Iterator[list[str]]:
    """Paragraphs (artefacts fixed) grouped by article; rows before the first title form an article too."""
    current: list[str] = []
    for row in rows:
        line = (row or "").strip()
        if not line:
            continue
        level = heading_level(line)
        if level == 1:
            if current:
                yield current
            current = []
        elif level == 0:
            current.append(fix_artefacts(line))
    if current:
        yield current


def _split_long(paragraph: str, max_chars: int) -> Iterator[str]:
    """Pieces of at most ``max_chars``: cut after the last sentence end that fits, else at a space."""
    while len(paragraph) > max_chars:
        cut = paragraph.rfind(". ", 0, max_chars) + 1  # keep the period
        if cut < max_chars // 2:
            cut = paragraph.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars  # one "word" longer than a sample
        yield paragraph[:cut].strip()
        paragraph = paragraph[cut:].strip()
    if paragraph:
        yield paragraph


def article_samples(paragraphs: list[str], options: SampleOptions) -> Iterator[str]:
    buf: list[str] = []
    size = 0  # len(PARAGRAPH_SEP.join(buf))
    for paragraph in paragraphs:
        for piece in _split_long(paragraph, options.max_chars):
            if buf and size + len(PARAGRAPH_SEP) + len(piece) > options.max_chars:
                yield PARAGRAPH_SEP.join(buf)
                buf, size = [], 0
            size += len(piece) + (len(PARAGRAPH_SEP) if buf else 0)
            buf.append(piece)
            if size >= options.target_chars:
                yield PARAGRAPH_SEP.join(buf)
                buf, size = [], 0
    if buf:
        yield PARAGRAPH_SEP.join(buf)


def samples(rows: Iterable[str | None], options: SampleOptions = SampleOptions()) -> Iterator[tuple[int, str]]:
    """``(article number, sample text)`` for every sample, in order; samples under ``min_chars`` are dropped."""
    for number, paragraphs in enumerate(articles(rows)):
        for text in article_samples(paragraphs, options):
            if len(text) >= options.min_chars:
                yield number, text
