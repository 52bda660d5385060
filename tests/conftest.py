"""Shared fixtures: the tiny offline Gemma-2 checkpoint + SAE, built once per test session."""

from __future__ import annotations

import pytest

from neuroscope.core import fixtures


@pytest.fixture(scope="session")
def tiny_fixture(tmp_path_factory) -> fixtures.Fixture:
    return fixtures.build(tmp_path_factory.mktemp("fixture") / "tiny", "tiny")
