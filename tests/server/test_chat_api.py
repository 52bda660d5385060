"""The chat port with the official `openai` client: non-stream, stream, usage, stop, seed, models."""

from __future__ import annotations

import httpx

MSG = [{"role": "user", "content": "Tell me about the river and the old mill."}]


def test_models_lists_the_served_model(openai_client, server):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == [server.model_id]


def test_non_stream_completion_with_usage(openai_client, server):
    r = openai_client.chat.completions.create(model=server.model_id, messages=MSG, max_tokens=12, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert r.usage.prompt_tokens > 10
    assert choice.message.content


def test_stream_matches_non_stream_and_reports_usage(openai_client, server):
    full = openai_client.chat.completions.create(model=server.model_id, messages=MSG, max_tokens=20, temperature=0)
    stream = openai_client.chat.completions.create(
        model=server.model_id, messages=MSG, max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_stream_wire_format_ends_with_done(server):
    with httpx.stream("POST", f"{server.chat}/v1/chat/completions",
                      json={"messages": MSG, "max_tokens": 3, "stream": True, "temperature": 0}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"].startswith("chatcmpl-")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_max_completion_tokens_and_default_length(openai_client, server):
    r = openai_client.chat.completions.create(model=server.model_id, messages=MSG, max_completion_tokens=5, temperature=0)
    assert r.usage.completion_tokens == 5
    # greedy decoding of this prompt runs past 450 tokens without EOS: the server's default (64 in these tests)
    # is what ends it, exactly
    endless = [{"role": "user", "content": "The cat sat on the mat."}]
    r = openai_client.chat.completions.create(model=server.model_id, messages=endless, temperature=0)
    assert r.usage.completion_tokens == 64 and r.choices[0].finish_reason == "length"


def test_stop_string_cuts_the_text(openai_client, server):
    base = openai_client.chat.completions.create(model=server.model_id, messages=MSG, max_tokens=30, temperature=0)
    text = base.choices[0].message.content
    stop = text[5:8]
    assert len(stop) == 3 and stop.strip(), f"need a usable stop string from {text!r}"
    cut = openai_client.chat.completions.create(
        model=server.model_id, messages=MSG, max_tokens=30, temperature=0, stop=[stop, "zzzz-never"]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.usage.completion_tokens < 30


def test_seed_reproduces_sampled_output(openai_client, server):
    def run(seed):
        return openai_client.chat.completions.create(
            model=server.model_id, messages=MSG, max_tokens=24, temperature=1.0, top_p=0.95, seed=seed
        ).choices[0].message.content

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_system_message_and_multi_turn(openai_client, server):
    r = openai_client.chat.completions.create(
        model=server.model_id,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "Count to three."}]},
        ],
        max_tokens=4,
        temperature=0,
    )
    assert r.usage.completion_tokens == 4
    # every turn is in the prompt (the system text folded into the first user turn), not only the last one
    from neuroscope.server.prompt import render_prompt

    conversation = [{"role": "user", "content": "You are terse.\n\nHi"}, {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "Count to three."}]
    ids = render_prompt(server.info.tokenizer, conversation)
    assert r.usage.prompt_tokens == len(ids)
    last_only = render_prompt(server.info.tokenizer, conversation[-1:])
    assert len(last_only) < len(ids)
    # and the model saw exactly those tokens: the same prompt as raw token ids gives the same text
    raw = httpx.post(f"{server.chat}/v1/completions", json={"prompt": ids, "max_tokens": 4, "temperature": 0},
                     timeout=60).json()
    assert raw["choices"][0]["text"] == r.choices[0].message.content
