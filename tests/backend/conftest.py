"""Every backend available here, loaded once per test module on the tiny checkpoint (a module sets ``K`` for its
top-k). Modules that need something else define their own ``loaded``."""

from __future__ import annotations

import pytest

from neuroscope.core import registry
from neuroscope.core.protocol import ModelSpec
from neuroscope.core.sae import load_npz
from tests.support.reference import load_backend

BACKENDS = registry.available()


@pytest.fixture(scope="module", params=BACKENDS or [pytest.param(None, marks=pytest.mark.skip("no backend"))])
def loaded(request, tiny_fixture):
    backend, info, sae = load_backend(request.param, tiny_fixture, top_k=getattr(request.module, "K", 8))
    yield backend, info, sae
    backend.close()


@pytest.fixture(scope="session")
def compiled_cpu(tiny_fixture):
    """torch-cpu under ``--engine compiled`` on the tiny checkpoint (top-k 8), loaded once per session: its graphs
    compile once (tens of seconds on 2 cores) and every module that checks the compiled engine shares them."""
    if "torch-cpu" not in BACKENDS:
        pytest.skip("torch-cpu is not available here")
    backend = registry.resolve("torch-cpu")()
    backend.engine = "compiled"
    sae = load_npz(tiny_fixture.sae_path)
    info = backend.load(ModelSpec(str(tiny_fixture.model_dir)), sae, tiny_fixture.sae_layer, top_k=8)
    yield backend, info, sae
    backend.close()
