"""Shared fixtures: the tiny offline Gemma-2 checkpoint + SAE, built once per test session, and a temporary
Neuroscope cache for the whole suite, so no test (nor a server or command it starts) writes into the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from neuroscope.core import fixtures
from neuroscope.store import paths

# the cache a command would use outside the tests: no test may write there
USER_CACHE = paths.cache_dir().absolute()
USER_INDUCTOR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
_SUITE_ENV = (paths.CACHE_ENV, "TORCHINDUCTOR_CACHE_DIR")


@pytest.fixture(scope="session", autouse=True)
def suite_cache(tmp_path_factory) -> Path:
    """``$NEUROSCOPE_CACHE`` (and torch inductor's cache under it) in a temporary directory for the whole session;
    subprocesses inherit it. A test that wants a cache of its own still sets ``NEUROSCOPE_CACHE`` itself."""
    cache = tmp_path_factory.mktemp("suite-cache")
    saved = {name: os.environ.get(name) for name in _SUITE_ENV}
    os.environ[paths.CACHE_ENV] = str(cache)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    yield cache
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A Neuroscope cache of the test's own, empty: ``$NEUROSCOPE_CACHE`` is ``tmp_path / "cache"``."""
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_fixture(tmp_path_factory) -> fixtures.Fixture:
    return fixtures.build(tmp_path_factory.mktemp("fixture") / "tiny", "tiny")


@pytest.fixture(scope="session")
def tiny_gemma3_fixture(tmp_path_factory) -> fixtures.Fixture:
    """A tiny Gemma-3 (text) checkpoint: six layers with globals at 2 and 5, a 16-token window, linear RoPE
    scaling on the global layers, q/k norms; its JumpReLU SAE reads block 3."""
    return fixtures.build(tmp_path_factory.mktemp("fixture") / "tiny-gemma3", "tiny-gemma3")
