"""Search features by the words of their labels: SQLite FTS5 (standard library) with BM25 ranking.

The index holds every feature a source names (the ``feature_<i>`` fallback is not indexed: a number finds a
feature by index instead). It is rebuilt when the label chain changes (a Neuronpedia answer arriving while
serving). The query's words are matched as whole tokens, the last one as a prefix (results as you type); a
document matching more of them ranks higher (BM25). ``123`` or ``#123`` puts that feature first.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

MAX_QUERY = 500
MAX_LIMIT = 100
_WORD = re.compile(r"\w+", re.UNICODE)
_INDEX = re.compile(r"#?\s*(\d+)")


class SearchError(ValueError):
    """A query the search refuses (user-facing; ``param`` names the field)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Hit:
    index: int
    label: str
    source: str
    score: float | None
    rank: int  # 1-based position in the results

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "source": self.source, "score": self.score,
                "rank": self.rank}


def check(q: str | None, limit: int | str | None) -> tuple[str, int]:
    """Validate a query and limit as the HTTP route and the CLI take them."""
    if q is None or not q.strip():
        raise SearchError("the query (q) is empty: give the words to look for, or a feature number", "q")
    if len(q) > MAX_QUERY:
        raise SearchError(f"the query (q) is {len(q)} characters long; at most {MAX_QUERY}", "q")
    if limit is None:
        return q.strip(), 20
    try:
        n = int(limit)
    except (TypeError, ValueError):
        raise SearchError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}", "limit") from None
    if not 1 <= n <= MAX_LIMIT:
        raise SearchError(f"limit must be from 1 to {MAX_LIMIT}, got {n}", "limit")
    return q.strip(), n


def match_expression(q: str) -> str | None:
    """The FTS5 MATCH expression for ``q``: its words, each quoted (no FTS syntax gets through), OR-ed so that
    BM25 ranks documents by how many and how rare the matched words are, the last one a prefix."""
    words = _WORD.findall(q.lower())
    if not words:
        return None
    quoted = ['"' + w.replace('"', '""') + '"' for w in words]
    quoted[-1] += " *"
    return " OR ".join(quoted)


class FeatureSearch:
    """An in-memory FTS5 index over a label chain (anything with ``d_sae``, ``entry(i)``, ``version`` and the
    named features in ``_entries``), safe to query from any thread."""

    def __init__(self, labels):
        self.labels = labels
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute("CREATE VIRTUAL TABLE docs USING fts5(label, description, tokenize='unicode61')")
        self._version: object = None

    def _fresh(self) -> None:
        version = getattr(self.labels, "version", 0), len(getattr(self.labels, "_entries", ()))
        if version == self._version:
            return
        entries = dict(getattr(self.labels, "_entries", {}))
        with self._db:
            self._db.execute("DELETE FROM docs")
            self._db.executemany("INSERT INTO docs(rowid, label, description) VALUES (?, ?, ?)",
                                 ((i, e.label, e.description or "") for i, e in entries.items()))
        self._version = version

    def search(self, q: str, limit: int = 20) -> list[Hit]:
        q, limit = check(q, limit)
        first: list[int] = []
        m = _INDEX.fullmatch(q)
        if m is not None and int(m.group(1)) < self.labels.d_sae:
            first.append(int(m.group(1)))
        expr = match_expression(q)
        found: list[int] = []
        if expr is not None:
            with self._lock:
                self._fresh()
                rows = self._db.execute("SELECT rowid FROM docs WHERE docs MATCH ? ORDER BY bm25(docs), rowid "
                                        "LIMIT ?", (expr, limit + len(first))).fetchall()
            found = [r[0] for r in rows]
        ids = first + [i for i in found if i not in first]
        hits = []
        for rank, i in enumerate(ids[:limit], 1):
            e = self.labels.entry(i)
            hits.append(Hit(i, e.label, e.source, e.score, rank))
        return hits
