"""The per-feature Neuronpedia client against a loopback fake: the top-scored explanation, 429 + Retry-After,
5xx, timeouts and malformed bodies retried with back-off, give-up, 404 as "none", the API key header, and an
unreachable server: one warning, then the breaker."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from neuroscope.labels.neuronpedia.client import ClientSettings, NeuronpediaClient, Unreachable, best_explanation
from neuroscope.labels.neuronpedia.registry import NeuronpediaIds
from tests.support.net import closed_port
from tests.support.neuronpedia_fake import FakeNeuronpedia, explanation

IDS = NeuronpediaIds("gemma-2-2b", "20-gemmascope-res-16k", 16384)
FAST = dict(timeout_s=0.5, backoff_s=0.01, tries=3, concurrency=4)


@pytest.fixture
def fake():
    f = FakeNeuronpedia()
    yield f
    f.stop()


def ask(settings: ClientSettings, *indices: int, **kw):
    async def main():
        async with aiohttp.ClientSession() as session:
            client = NeuronpediaClient(IDS, settings, session, **kw)
            answers = await asyncio.gather(*(client.feature(i) for i in indices))
            return client, answers

    return asyncio.run(main())


def test_label_is_the_top_scored_explanation(fake):
    fake.features[7] = [explanation("dates", 0.4), explanation("calendar dates and years", 0.1, 0.9),
                        explanation("unscored")]
    fake.features[8] = [explanation("only unscored"), explanation("second unscored")]
    fake.features[9] = []
    client, (a7, a8, a9, a10) = ask(ClientSettings(base_url=fake.url, **FAST), 7, 8, 9, 10)
    assert (a7.label, a7.score) == ("calendar dates and years", 0.9)
    assert (a8.label, a8.score) == ("only unscored", None)
    assert a9.label is None and a10.label is None  # no explanation, and a 404: Neuronpedia has none
    assert a7.fetched_at.endswith("Z") and client.state == "ok" and client.answered == 4


def test_best_explanation_ignores_junk():
    assert best_explanation([{"description": ""}, "x", {"description": " a ", "scores": [{"value": "NaN"}]}]) == ("a", None)
    assert best_explanation(None) is None


def test_429_waits_for_retry_after(fake):
    fake.features[3] = [explanation("three", 0.8)]
    fake.faults[3] = ["429"]
    fake.retry_after = "1"
    _, (a,) = ask(ClientSettings(base_url=fake.url, **FAST), 3)
    assert a.label == "three"
    first, second = fake.feature_requests(3)
    assert second.at - first.at >= 0.9, "Retry-After: 1 was not honoured"


def test_5xx_timeouts_and_garbage_are_retried(fake):
    fake.features[1] = [explanation("one", 0.5)]
    fake.faults[1] = ["500", "hang"]
    fake.features[2] = [explanation("two", 0.5)]
    fake.faults[2] = ["garbage"]
    _, (a1, a2) = ask(ClientSettings(base_url=fake.url, **FAST), 1, 2)
    assert a1.label == "one" and len(fake.feature_requests(1)) == 3
    assert a2.label == "two" and len(fake.feature_requests(2)) == 2


def test_gives_up_after_a_few_tries(fake):
    fake.features[5] = [explanation("five", 0.5)]
    fake.faults[5] = ["500"] * 10
    client, (a,) = ask(ClientSettings(base_url=fake.url, **FAST), 5)
    assert a is None and client.gave_up == 1
    assert len(fake.feature_requests(5)) == FAST["tries"]


def test_api_key_is_sent_and_never_logged(fake, caplog):
    fake.features[4] = [explanation("four", 0.5)]
    caplog.set_level(logging.DEBUG)
    ask(ClientSettings(base_url=fake.url, api_key="sk-secret-np", **FAST), 4, 99)
    assert all(s.headers.get("x-api-key") == "sk-secret-np" for s in fake.feature_requests())
    assert "sk-secret-np" not in caplog.text
    assert "sk-secret-np" not in repr(ClientSettings(api_key="sk-secret-np"))


def test_from_env(monkeypatch):
    monkeypatch.setenv("NEURONPEDIA_URL", "http://127.0.0.1:1/")
    monkeypatch.setenv("NEURONPEDIA_API_KEY", "k")
    s = ClientSettings.from_env(tries=2)
    assert (s.base_url, s.api_key, s.tries) == ("http://127.0.0.1:1", "k", 2)
    monkeypatch.delenv("NEURONPEDIA_URL")
    assert ClientSettings.from_env().base_url == "https://www.neuronpedia.org"


def test_unreachable_warns_once_and_pauses(caplog):
    caplog.set_level(logging.WARNING, logger="neuroscope.neuronpedia")
    settings = ClientSettings(base_url=f"http://127.0.0.1:{closed_port()}", breaker_failures=3,
                              breaker_pause_s=60, **FAST)

    async def main():
        async with aiohttp.ClientSession() as session:
            client = NeuronpediaClient(IDS, settings, session)
            tasks = [asyncio.create_task(client.feature(i)) for i in range(6)]
            for _ in range(200):  # until the breaker opens
                if client.state == "unreachable":
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            done = [t.done() for t in tasks]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return client, done

    client, done = asyncio.run(main())
    assert client.state == "unreachable" and "ConnectorError" in client.last_error
    assert not any(done), "features wait for the breaker instead of failing"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()


def test_unreachable_can_stop_the_caller():
    settings = ClientSettings(base_url=f"http://127.0.0.1:{closed_port()}", **FAST)
    with pytest.raises(Unreachable, match="unreachable"):
        ask(settings, 1, stop_when_unreachable=True)
