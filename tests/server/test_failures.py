"""A backend that fails mid-generation: the request gets an error, the server keeps serving."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest
from transformers import AutoTokenizer

from neuroscope.core.protocol import ModelInfo, Prefilled
from neuroscope.labels.table import Labels
from neuroscope.server.app import NeuroscopeServer


class FlakyBackend:
    """Decodes a few tokens, then fails on every other request (as a device error would)."""

    name = "flaky"
    capture = True

    def __init__(self):
        self.calls = 0

    def prefill(self, prompt_ids, params):
        self.calls += 1
        state = {"fail": self.calls % 2 == 1, "i": 0}
        return Prefilled(state, self._record(0))

    def decode_step(self, state):
        state["i"] += 1
        if state["fail"] and state["i"] == 3:
            raise RuntimeError("device lost")
        return self._record(state["i"])

    def to_host(self, record):
        return record

    @staticmethod
    def _record(i):  # [token, l0, filtered, 2 ids, 2 values]
        return np.array([40 + i, 2, 0, i % 7, 3, 2.0, 1.0], dtype=np.float32)

    def close(self):
        pass


@pytest.fixture(scope="module")
def flaky_server(tiny_fixture):
    tok = AutoTokenizer.from_pretrained(tiny_fixture.model_dir)
    info = ModelInfo("flaky-model", tok, 4, 64, 512, 1024, "cpu", "float32", eos_token_ids=(1, 5))
    server = NeuroscopeServer(FlakyBackend(), info, Labels(256), layer=2, backend_name="flaky", sae_id="x",
                              port=0, features_port=0)
    state = {}
    ready = threading.Event()

    def run():
        async def main():
            state["loop"], state["stop"] = asyncio.get_running_loop(), asyncio.Event()
            async with server as bound:
                state["bound"] = bound
                ready.set()
                await state["stop"].wait()

        asyncio.run(main())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(30)
    yield f"http://127.0.0.1:{state['bound'].chat_port}"
    state["loop"].call_soon_threadsafe(state["stop"].set)
    t.join(30)


def test_failure_is_a_500_then_the_server_recovers(flaky_server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
    r = httpx.post(f"{flaky_server}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "server_error" and err["code"] == "generation_failed" and "device lost" in err["message"]
    r = httpx.post(f"{flaky_server}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 6


def test_failure_mid_stream_sends_an_error_chunk(flaky_server):
    from openai import APIError, OpenAI

    client = OpenAI(base_url=f"{flaky_server}/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="flaky-model", messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True
    )
    with pytest.raises(APIError, match="device lost"):
        for _ in stream:
            pass
    ok = client.chat.completions.create(model="flaky-model", messages=[{"role": "user", "content": "hi"}], max_tokens=6)
    assert ok.usage.completion_tokens == 6
