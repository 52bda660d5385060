"""Fixtures of the CLI tests."""

from __future__ import annotations

import pytest

from neuroscope.cli import serve as cli
from neuroscope.config import ServeConfig


@pytest.fixture
def captured(monkeypatch) -> list[ServeConfig]:
    """``serve`` replaced by a recorder: the CLI is tested without starting a server."""
    configs: list[ServeConfig] = []
    monkeypatch.setattr(cli, "serve", lambda config: configs.append(config) or 0)
    return configs
