"""Fixtures of the data-tool tests (store, models / sae): the fake hub pointed at, with a hub cache under tmp_path
(the Neuroscope cache is tests/conftest.py's ``cache``). A test folder's conftest imports the ones it uses."""

from __future__ import annotations

import pytest

from neuroscope.store.hf import hub_reachable
from tests.support.fake_hub import FakeHub, point_in_process

WRITE_TOKEN = "hf_write_token_for_tests"
READ_TOKEN = "hf_read_token_for_tests"


@pytest.fixture
def hub(tmp_path, monkeypatch, cache):
    fake = FakeHub(tokens={WRITE_TOKEN: ("alice", "write"), READ_TOKEN: ("alice", "read")})
    fake.start()
    point_in_process(monkeypatch, fake.endpoint, tmp_path / "hf")
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))  # not the machine's
    yield fake
    fake.stop()
    hub_reachable.cache_clear()
