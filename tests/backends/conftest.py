"""Every backend available here, loaded once per test module on the tiny checkpoint (a module sets ``K`` for its
top-k). Modules that need something else define their own ``loaded``."""

from __future__ import annotations

import pytest

from neuroscope import registry
from tests.support.reference import load_backend

BACKENDS = registry.available()


@pytest.fixture(scope="module", params=BACKENDS or [pytest.param(None, marks=pytest.mark.skip("no backend"))])
def loaded(request, tiny_fixture):
    backend, info, sae = load_backend(request.param, tiny_fixture, top_k=getattr(request.module, "K", 8))
    yield backend, info, sae
    backend.close()
