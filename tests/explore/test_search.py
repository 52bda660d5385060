"""Search over a label chain: BM25 order, prefixes, numbers, FTS syntax as plain words, and a rebuilt index
when a label arrives while serving."""

from __future__ import annotations

import pytest

from neuroscope.explore.search import FeatureSearch, SearchError, match_expression
from neuroscope.labels.chain import Layer, LabelChain
from neuroscope.labels.neuronpedia.cache import Answer


def _chain():
    labels = {1: ("python code indentation", None), 2: ("python snakes in the jungle", 0.8),
              3: ("code comments", 0.6), 4: ("python python python code", None)}
    return LabelChain(50, [Layer("labels-path", "x.json", labels), Layer("neuronpedia", "np", {})])


def test_bm25_ranks_more_matched_words_first():
    s = FeatureSearch(_chain())
    ids = [h.index for h in s.search("python code")]
    assert set(ids) == {1, 2, 3, 4} and ids.index(2) > ids.index(1) and ids.index(3) > ids.index(1)


def test_prefix_and_number():
    s = FeatureSearch(_chain())
    assert [h.index for h in s.search("jung")] == [2]
    assert [h.index for h in s.search("#3")][:1] == [3]
    assert s.search("49")[0].label == "feature_49"
    assert s.search("50") == []  # out of range, and no label holds the word


def test_fts_syntax_is_quoted():
    assert match_expression('a" OR b') == '"a" OR "or" OR "b" *'
    s = FeatureSearch(_chain())
    assert s.search('NEAR(python, code)') and s.search('"') == [] and s.search("*") == []


def test_index_rebuilt_when_a_label_arrives():
    chain = _chain()
    s = FeatureSearch(chain)
    assert s.search("volcano") == []
    chain.add_neuronpedia(Answer(index=9, label="volcanic eruptions", score=0.5))
    hits = s.search("volcan")
    assert [(h.index, h.source, h.score) for h in hits] == [(9, "neuronpedia", 0.5)]


@pytest.mark.parametrize("q,limit,param", [(None, 5, "q"), ("", 5, "q"), ("a" * 501, 5, "q"), ("a", 0, "limit"),
                                           ("a", 101, "limit"), ("a", "x", "limit")])
def test_refused(q, limit, param):
    with pytest.raises(SearchError) as exc:
        FeatureSearch(_chain()).search(q, limit)
    assert exc.value.param == param


def test_descriptions_are_searched_and_shown_on_the_page():
    from neuroscope.explore.page import Explorer

    described = Layer("autointerp", "labels.jsonl", {5: ("bridges", 0.9)},
                      descriptions={5: "suspension bridges such as the Golden Gate"})
    chain = LabelChain(50, [described, Layer("labels-path", "x.json", {1: ("golden retrievers", None)})])
    hits = FeatureSearch(chain).search("golden gate")
    assert [h.index for h in hits] == [5, 1]  # both words match 5 (one in its description), one matches 1
    assert Explorer.for_namespace(chain, None, None).page(5, None)["description"] == \
        "suspension bridges such as the Golden Gate"
    assert Explorer.for_namespace(chain, None, None).page(1, None)["description"] is None
