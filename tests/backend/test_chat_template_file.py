"""A checkpoint whose chat template is only in ``chat_template.jinja`` (as newer transformers save it, and as many
hub repos ship it) chats with every transformers release the project accepts, the oldest included (.ci/run runs
this folder at the floor too)."""

from __future__ import annotations

import json
import os

import pytest

from neuroscope.core import checkpoint
from neuroscope.core.fixtures import GEMMA_CHAT_TEMPLATE
from neuroscope.server.prompt import render_prompt


@pytest.fixture(scope="module")
def jinja_only(tiny_fixture, tmp_path_factory):
    """The tiny checkpoint with the template in chat_template.jinja alone (not in tokenizer_config.json)."""
    out = tmp_path_factory.mktemp("jinja-only")
    for f in tiny_fixture.model_dir.iterdir():
        if f.name != "tokenizer_config.json":
            os.symlink(f, out / f.name)
    config = json.loads((tiny_fixture.model_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    assert (out / "chat_template.jinja").read_text() == GEMMA_CHAT_TEMPLATE
    return out


def test_the_template_file_is_read_when_the_tokenizer_has_none(jinja_only, tiny_fixture):
    tokenizer = checkpoint.load_tokenizer(jinja_only)
    assert tokenizer.chat_template == GEMMA_CHAT_TEMPLATE
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "again"}]
    assert render_prompt(tokenizer, messages) == render_prompt(checkpoint.load_tokenizer(tiny_fixture.model_dir),
                                                               messages)

