"""logit_bias, presence / frequency penalties and logprobs through the real server and the ``openai`` client, on
every backend: chat and completions, stream and not, against a numpy reference over transformers' logits."""

from __future__ import annotations

import numpy as np
import pytest

from neuroscope.server.prompt import render_prompt
from tests.support.sampling import next_token_logits

N = 6
TOL = 1e-4
HI = [{"role": "user", "content": "The river bends around the old mill."}]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def _reference(model_dir, prompt_ids, n, bias=(), presence=0.0, frequency=0.0):
    """Greedy under OpenAI's rule, the whole sequence recomputed per token: (ids, per-step log_softmax rows)."""
    ids: list[int] = []
    rows = []
    for _ in range(n):
        raw = next_token_logits(model_dir, prompt_ids, ids + [0])[-1].copy()
        for t, b in bias:
            raw[t] += b
        count = np.bincount(np.array(ids, dtype=np.int64), minlength=raw.size).astype(np.float64)
        raw -= frequency * count + presence * (count > 0)
        row = _log_softmax(raw)
        ids.append(int(row.argmax()))
        rows.append(row)
    return ids, rows


def _text(tok, i):
    return tok.decode([i])


def _check_chat_content(content, tok, ids, rows, n_top):
    assert len(content) == len(ids)
    for c, tid, row in zip(content, ids, rows):
        assert c.token == _text(tok, tid)
        assert c.logprob == pytest.approx(row[tid], abs=TOL)
        assert c.bytes == list(c.token.encode("utf-8"))
        assert len(c.top_logprobs) == n_top
        np.testing.assert_allclose([t.logprob for t in c.top_logprobs], np.sort(row)[::-1][:n_top], atol=TOL)
        top_ids = np.argsort(-row)[:n_top]
        assert [t.token for t in c.top_logprobs] == [_text(tok, int(i)) for i in top_ids]


def test_chat_logprobs_match_the_reference(server, openai_client, tiny_fixture):
    tok = server.info.tokenizer
    prompt = render_prompt(tok, HI)
    ids, rows = _reference(tiny_fixture.model_dir, prompt, N)
    r = openai_client.chat.completions.create(model=server.model_id, messages=HI, max_tokens=N, temperature=0,
                                              logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    _check_chat_content(content, tok, ids, rows, 3)
    assert r.choices[0].message.content == tok.decode(ids)
    # streamed: the same entries, spread over the chunks
    streamed = []
    for ch in openai_client.chat.completions.create(model=server.model_id, messages=HI, max_tokens=N, temperature=0,
                                                    logprobs=True, top_logprobs=3, stream=True):
        if ch.choices and ch.choices[0].logprobs is not None:
            streamed.extend(ch.choices[0].logprobs.content or [])
    _check_chat_content(streamed, tok, ids, rows, 3)
    # off by default
    plain = openai_client.chat.completions.create(model=server.model_id, messages=HI, max_tokens=N, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completions_logprobs_match_the_reference(server, openai_client, tiny_fixture):
    tok = server.info.tokenizer
    prompt = tok.encode("Once upon a time there was a")
    ids, rows = _reference(tiny_fixture.model_dir, prompt, N)
    for stream in (False, True):
        kw = dict(model=server.model_id, prompt=prompt, max_tokens=N, temperature=0, logprobs=2)
        if stream:
            tokens, lps, tops, offsets, text = [], [], [], [], ""
            for ch in openai_client.completions.create(stream=True, **kw):
                c = ch.choices[0]
                text += c.text
                if c.logprobs is not None:
                    tokens += c.logprobs.tokens
                    lps += c.logprobs.token_logprobs
                    tops += c.logprobs.top_logprobs
                    offsets += c.logprobs.text_offset
        else:
            c = openai_client.completions.create(**kw).choices[0]
            text = c.text
            tokens, lps, tops, offsets = (c.logprobs.tokens, c.logprobs.token_logprobs, c.logprobs.top_logprobs,
                                          c.logprobs.text_offset)
        assert tokens == [_text(tok, i) for i in ids]
        np.testing.assert_allclose(lps, [row[i] for i, row in zip(ids, rows)], atol=TOL)
        for top, row in zip(tops, rows):
            assert len(top) <= 2
            for t, lp in top.items():
                assert lp == pytest.approx(max(row[j] for j in np.argsort(-row)[:2] if _text(tok, int(j)) == t),
                                           abs=TOL)
        assert offsets[0] == 0 and offsets == sorted(offsets) and len(offsets) == N
        assert text == tok.decode(ids)


def test_logit_bias_forces_and_bans_through_the_api(server, openai_client, tiny_fixture):
    forced = 123
    r = openai_client.completions.create(model=server.model_id, prompt=[5, 6, 7], max_tokens=N, temperature=0,
                                         logit_bias={str(forced): 100}, logprobs=0)
    assert r.choices[0].logprobs.tokens == [_text(server.info.tokenizer, forced)] * N
    tok = server.info.tokenizer
    prompt = render_prompt(tok, HI)
    greedy, _ = _reference(tiny_fixture.model_dir, prompt, N)
    bias = ((greedy[0], -100.0),)
    ids, rows = _reference(tiny_fixture.model_dir, prompt, N, bias=bias)
    assert greedy[0] not in ids
    banned = openai_client.chat.completions.create(model=server.model_id, messages=HI, max_tokens=N, temperature=0,
                                                   logprobs=True, top_logprobs=2,
                                                   logit_bias={str(greedy[0]): -100})
    _check_chat_content(banned.choices[0].logprobs.content, tok, ids, rows, 2)


@pytest.mark.parametrize("presence,frequency", [(0.0, 2.0), (1.0, 0.5)])
def test_penalties_through_the_api_match_the_reference(server, openai_client, tiny_fixture, presence, frequency):
    tok = server.info.tokenizer
    prompt = render_prompt(tok, HI)
    ids, rows = _reference(tiny_fixture.model_dir, prompt, N, presence=presence, frequency=frequency)
    r = openai_client.chat.completions.create(model=server.model_id, messages=HI, max_tokens=N, temperature=0,
                                              presence_penalty=presence, frequency_penalty=frequency,
                                              logprobs=True, top_logprobs=1)
    _check_chat_content(r.choices[0].logprobs.content, tok, ids, rows, 1)


@pytest.mark.parametrize("body,param", [
    ({"logit_bias": {"5": 101}}, "logit_bias"), ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"presence_penalty": 2.5}, "presence_penalty"), ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
])
def test_validation_errors_name_the_field(server, openai_client, body, param):
    import openai

    with pytest.raises(openai.BadRequestError) as exc:
        openai_client.chat.completions.create(model=server.model_id, messages=HI, max_tokens=1, extra_body=body)
    assert exc.value.body["param"] == param
