"""A small dataset in WikiText-103-raw's exact shape (parquet, one ``text`` column, one paragraph per row).

Rows look like the real ones: `` = Title = \\n``, ``""``, `` paragraph … \\n``, `` = = Section = = \\n``, with the
tokenizer artefacts `` @-@ ``, `` @,@ ``, `` @.@ `` and spaces around punctuation. Every article's paragraphs
carry its own marker word, so a test can tell which article any sample came from.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

REPO = "Salesforce/wikitext"
CONFIG = "wikitext-103-raw-v1"
SPLIT = "train"
FILES = [f"{CONFIG}/train-00000-of-00002.parquet", f"{CONFIG}/train-00001-of-00002.parquet"]

FIRST_PARAGRAPH = (
    " Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 , lit . Valkyria of the "
    "Battlefield 3 ) , commonly referred to as Valkyria Chronicles III outside Japan , is a tactical role @-@ "
    "playing video game developed by Sega and Media.Vision for the PlayStation Portable . Released in January "
    "2011 in Japan , it is the third game in the Valkyria series . Employing the same fusion of tactical and real "
    "@-@ time gameplay as its predecessors , the story runs parallel to the first game and follows the \" "
    "Nameless \" , a penal military unit serving the nation of Gallia during the Second Europan War who perform "
    "secret black operations and are pitted against the Imperial unit \" Calamaty Raven \" . \n"
)

SENTENCES = [
    "The {m} record shows a cost of 1 @,@ 250 crowns and a height of 3 @.@ 5 metres .",
    "In the {m} account , a long @-@ running dispute about the harbour ended in 1843 .",
    "Local writers describe the {m} estate as \" modest \" , though its library held 12 @,@ 000 volumes .",
    "A {m} survey of 1901 found that the north @-@ east wing had settled by 0 @.@ 4 inches .",
    "The {m} family sold the land in 1920 , and the new owners turned it into a market garden .",
    "According to the {m} papers , the first season drew 4 @,@ 500 visitors in spite of the rain .",
]

# (title, marker, sections); a section is (heading or None, number of paragraphs)
ARTICLES = [
    ("Valkyria Chronicles III", "Valkyria", [(None, 3), ("Gameplay", 4), ("Plot", 3)]),
    ("Tower Building of the Little Rock Arsenal", "Arsenal", [(None, 2), ("Construction", 3)]),
    ("Cicely Mary Barker", "Barker", [(None, 2), ("Early life", 2), ("Art education", 3), ("Legacy", 2)]),
    ("Gambia women 's national football team", "Gambia", [(None, 1)]),  # too short for a sample
    ("Plain maskray", "Maskray", [(None, 2), ("Taxonomy", 3), ("Description", 4)]),
    ("Gregorian Tower", "Gregorian", [(None, 2), ("History", 4)]),
    ("There 's Got to Be a Way", "Carey", [(None, 3), ("Background", 2), ("Reception", 3)]),
    ("Nebraska Highway 88", "Nebraska", [(None, 1), ("Route description", 2)]),
]
MARKERS = [a[1] for a in ARTICLES]
LONG_PARAGRAPH_OF = "Gregorian"  # this article's second paragraph is longer than a sample may be


def _paragraph(marker: str, index: int) -> str:
    if marker.startswith("Gambia"):
        return f" The Gambia team played its first match in 2007 . {marker} note {index} . \n"
    n = 30 if (marker.startswith(LONG_PARAGRAPH_OF) and index == 1) else 3 + (index % 4)
    body = " ".join(SENTENCES[(index + k) % len(SENTENCES)].format(m=f"{marker} p{index}") for k in range(n))
    return f" {body} \n"


def rows(copies: int = 1) -> list[str]:
    """The articles in WikiText's row shape; ``copies`` > 1 repeats them (markers and titles numbered)."""
    out: list[str] = []
    for copy in range(copies):
        for title, marker, sections in ARTICLES:
            if copy:
                title, marker = f"{title} ( {copy} )", f"{marker}{copy}"
            out += [f" = {title} = \n", ""]
            count = 0
            for heading, paragraphs in sections:
                if heading:
                    out += [f" = = {heading} = = \n", ""]
                for _ in range(paragraphs):
                    text = FIRST_PARAGRAPH if (marker == "Valkyria" and count == 0) else _paragraph(marker, count)
                    out += [text, ""]
                    count += 1
            if marker == "Barker":
                out += [" = = = Works = = = \n", "", _paragraph(marker, count), ""]  # a third-level heading
    return out


def parquet_bytes(text_rows: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": pa.array(text_rows, pa.string())}), buf, row_group_size=16)
    return buf.getvalue()


def shards() -> list[bytes]:
    """Two parquet files; the split falls inside an article (as real shards do)."""
    all_rows = rows()
    cut = all_rows.index(" = Cicely Mary Barker = \n") + 9  # a few paragraphs into Barker
    return [parquet_bytes(all_rows[:cut]), parquet_bytes(all_rows[cut:])]


def expected_paragraphs() -> dict[str, list[str]]:
    """Each article's paragraphs as a sample should hold them: artefacts undone, by plain string replacement."""
    out: dict[str, list[str]] = {}
    for _, marker, sections in ARTICLES:
        n = sum(p for _, p in sections) + (1 if marker == "Barker" else 0)
        paragraphs = [FIRST_PARAGRAPH if (marker == "Valkyria" and i == 0) else _paragraph(marker, i) for i in range(n)]
        out[marker] = [p.strip().replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".") for p in paragraphs]
    return out


def big_shards(copies: int = 40) -> list[bytes]:
    """Many articles, most of them in the first shard: a build writes hundreds of samples before the second."""
    all_rows = rows(copies)
    cut = len(all_rows) * 9 // 10
    return [parquet_bytes(all_rows[:cut]), parquet_bytes(all_rows[cut:])]


def add_to(hub, repo: str = REPO, big: bool = False) -> None:
    for name, data in zip(FILES, big_shards() if big else shards()):
        hub.add_file(repo, name, data)
    # another config and split, found only by listing the repo
    hub.add_file(repo, "wikitext-2-raw-v1/test-00000-of-00001.parquet", parquet_bytes(rows()[:40]))
    hub.add_file(repo, "wikitext-2-raw-v1/train-00000-of-00001.parquet", parquet_bytes(rows()))
    hub.add_file(repo, "README.md", b"# wikitext\n")
