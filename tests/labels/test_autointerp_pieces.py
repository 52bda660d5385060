"""The small pieces of labelling: the --features syntax, JSON-lines files after a torn write, the labeler
backend from the environment, Retry-After, and the checks of structured answers."""

from __future__ import annotations

import email.utils
import json
import time

import pytest

from neuroscope.labels.autointerp import llm, prompts, store
from neuroscope.labels.retrying import retry_after


def test_features_syntax():
    assert store.parse_features(None) is None and store.parse_features(" ") is None
    assert store.parse_features("3,0-2, 7", 10) == [0, 1, 2, 3, 7]
    for bad, words in (("1-x", "'1-x' is not an index"), ("5-2", "'5-2'"), ("-1", "'-1'")):
        with pytest.raises(ValueError, match=words):
            store.parse_features(bad, 10)
    with pytest.raises(ValueError, match="feature 10 is out of range"):
        store.parse_features("8-12", 10)
    assert store.in_subset([5, 1, 3], [3, 5, 9]) == [3, 5]


def test_a_torn_last_line_is_skipped_then_cut_before_appending(tmp_path):
    path = tmp_path / "d" / "labels.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"index": 1}\n{"index": 2}\n{"index": 3, "lab')
    assert store.read_jsonl(path) == [{"index": 1}, {"index": 2}]
    with store.open_append(path) as fh:
        store.append(fh, {"index": 4})
    assert [x["index"] for x in store.read_jsonl(path)] == [1, 2, 4]
    assert path.read_bytes().endswith(b'{"index": 4}\n')
    assert store.read_jsonl(tmp_path / "none.jsonl") == []


def test_the_labeler_backend_from_the_environment():
    p = llm.resolve_provider("auto", {"OPENROUTER_API_KEY": "a", "ANTHROPIC_API_KEY": "b"})
    assert (p.name, p.url, p.headers()["authorization"]) == (
        "openrouter", "https://openrouter.ai/api/v1/chat/completions", "Bearer a")
    p = llm.resolve_provider("auto", {"ANTHROPIC_API_KEY": "b"})
    assert (p.kind, p.url, p.headers()["x-api-key"]) == ("anthropic", "https://api.anthropic.com/v1/messages", "b")
    assert p.headers()["anthropic-version"] == "2023-06-01" and "authorization" not in p.headers()
    p = llm.resolve_provider("openrouter", {"OPENROUTER_API_KEY": "a", "OPENROUTER_BASE_URL": "http://h:1/api/v1/"})
    assert p.url == "http://h:1/api/v1/chat/completions"
    p = llm.resolve_provider("http://localhost:8000/v1", {})
    assert p.kind == "openai" and "authorization" not in p.headers()
    assert llm.resolve_provider("http://localhost:8000/v1", {"LABELER_API_KEY": "k"}).headers()["authorization"] == \
        "Bearer k"
    assert "secret" not in repr(llm.resolve_provider("anthropic", {"ANTHROPIC_API_KEY": "secret"}))
    for backend, env, words in (("auto", {}, "no labeler key"), ("anthropic", {}, "needs ANTHROPIC_API_KEY"),
                                ("openai", {}, "unknown --labeler-backend")):
        with pytest.raises(llm.FatalLLMError, match=words):
            llm.resolve_provider(backend, env)


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after("7") == 7.0 and retry_after("0.5") == 0.5 and retry_after(None) is None
    assert retry_after("soon") is None and retry_after("-3") == 0.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after(later) <= 30


def test_answers_are_checked_against_their_schema():
    assert prompts.check_label({"label": "  dates\nin text ", "description": "Fires on dates."}) == (
        "dates in text", "Fires on dates.")
    for bad in ({"label": ""}, {"label": "x"}, {"label": 3, "description": "d"}, {"label": "x" * 200,
                                                                                   "description": "d"}):
        with pytest.raises(ValueError):
            prompts.check_label(bad)
    check = prompts.check_detection(3)
    assert check({"matches": [1, 0, 1]}) == [1, 0, 1]
    for bad in ({"matches": [1, 0]}, {"matches": [1, 0, 2]}, {"matches": [True, 0, 1]}, {}):
        with pytest.raises(ValueError):
            check(bad)
    body = llm.LLMClient(llm.Provider("openai", "x", "http://h"), "m").body("s", "u", prompts.LABEL_SCHEMA, "n")
    assert json.dumps(body["response_format"]["json_schema"]["schema"]) == json.dumps(prompts.LABEL_SCHEMA)
