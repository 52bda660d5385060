"""Under CI (CI=true) every backend the test command installs must really run: a backend that went missing
would otherwise turn its conformance, parity and server tests into skips and the run would still pass."""

from __future__ import annotations

import os

import pytest

from neuroscope.core import registry

INSTALLED_BY_THE_TEST_COMMAND = ("torch-cpu", "mlx")  # torch's CPU wheel and mlx[cpu], see the README


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="checked under CI=true only (CI installs every backend)")
@pytest.mark.parametrize("name", INSTALLED_BY_THE_TEST_COMMAND)
def test_ci_runs_every_backend_it_installs(name):
    assert name in registry.available(), f"{name} is not available, so its tests were skipped: {registry.install_hint(name)}"
