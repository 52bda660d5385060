from __future__ import annotations

import pytest

from neuroscope.core import registry
from tests.support.server import RunningServer

BACKENDS = registry.available()


@pytest.fixture(scope="module", params=BACKENDS or [pytest.param(None, marks=pytest.mark.skip("no backend"))])
def server(request, tiny_fixture):
    srv = RunningServer(request.param, tiny_fixture)
    yield srv
    srv.stop()


@pytest.fixture
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.chat}/v1", api_key="unused", max_retries=0, timeout=60)
