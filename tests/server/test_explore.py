"""The feature explorer through a real server: a feature's page (neighbours and logits equal to numpy from the
checkpoint's files), search (a planted label first), inspect (equal to the stream's prompt events), every 4xx,
and the queue (device work waits behind generations, 429 past --max-queue)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from neuroscope.core import registry
from neuroscope.core.sae import load_npz
from neuroscope.labels.chain import Layer, LabelChain
from tests.support import explore as ref
from tests.support.server import RunningServer, SSEReader

BACKENDS = registry.available()
PLANTED = {7: ("Golden Gate Bridge in San Francisco", 0.9), 3: ("bridges over rivers", None),
           12: ("golden retriever dogs", 0.4), 20: ("the colour gold in jewellery", 0.7)}


def _chain(fx) -> LabelChain:
    d_sae = load_npz(fx.sae_path).d_sae
    return LabelChain(d_sae, [Layer("labels-path", "planted.json", dict(PLANTED))])


@pytest.fixture(scope="module", params=BACKENDS or [pytest.param(None, marks=pytest.mark.skip("no backend"))])
def srv(request, tiny_fixture):
    s = RunningServer(request.param, tiny_fixture, labels=_chain(tiny_fixture))
    yield s
    s.stop()


def _get(srv, path, **params):
    return httpx.get(f"{srv.features}{path}", params=params, timeout=60)


def _error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"]
    if param is not None:
        assert err["param"] == param
    return err


# ------------------------------------------------------------------------------------------------ the page
@pytest.mark.parametrize("index", [7, 0])
def test_page_neighbours_and_logits_equal_numpy(srv, tiny_fixture, index):
    unembed, scale, W_dec = ref.checkpoint_tensors(tiny_fixture)
    page = _get(srv, f"/v1/features/{index}").json()
    assert page["index"] == index
    ids, cos = ref.neighbours(W_dec, index)
    assert [n["index"] for n in page["neighbours"]] == ids
    np.testing.assert_allclose([n["cosine"] for n in page["neighbours"]], cos, rtol=1e-4, atol=1e-5)
    assert [n["label"] for n in page["neighbours"]] == [PLANTED.get(i, (f"feature_{i}",))[0] for i in ids]
    pos, pos_v, neg, neg_v = ref.logits(unembed, scale, W_dec, index)
    assert [t["token_id"] for t in page["logits"]["positive"]] == pos
    assert [t["token_id"] for t in page["logits"]["negative"]] == neg
    np.testing.assert_allclose([t["value"] for t in page["logits"]["positive"]], pos_v, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([t["value"] for t in page["logits"]["negative"]], neg_v, rtol=1e-4, atol=1e-5)
    tok = srv.info.tokenizer
    assert [t["token"] for t in page["logits"]["positive"]] == [tok.decode([i], skip_special_tokens=False)
                                                                 for i in pos]
    assert _get(srv, f"/v1/features/{index}").json() == page  # the second time from the cache, the same


def test_page_label_source_score(srv):
    page = _get(srv, "/v1/features/7").json()
    assert (page["label"], page["source"], page["score"]) == ("Golden Gate Bridge in San Francisco", "labels-path", 0.9)
    assert page["stats"] is None and page["density"] is None and page["examples"] == []  # no calibration, no run
    page = _get(srv, "/v1/features/5").json()
    assert (page["label"], page["source"], page["score"]) == ("feature_5", "numeric", None)


@pytest.mark.parametrize("raw,status", [("abc", 400), ("-1", 400), ("1.5", 400), ("%23x", 400), ("99999999", 404)])
def test_page_bad_index(srv, raw, status):
    err = _error(_get(srv, f"/v1/features/{raw}"), status, "index")
    assert ("does not exist" in err["message"]) == (status == 404)


def test_page_last_index_and_hash_form(srv):
    d_sae = len(httpx.get(f"{srv.features}/v1/features/labels").json()["labels"])
    assert _get(srv, f"/v1/features/{d_sae - 1}").json()["index"] == d_sae - 1
    _error(_get(srv, f"/v1/features/{d_sae}"), 404, "index")
    assert _get(srv, "/v1/features/%2312").json()["index"] == 12


# ------------------------------------------------------------------------------------------------ search
def test_search_finds_the_planted_label_first(srv):
    r = _get(srv, "/v1/features/search", q="golden gate").json()
    assert r["query"] == "golden gate"
    assert r["results"][0]["index"] == 7
    assert r["results"][0] == {"index": 7, "label": PLANTED[7][0], "source": "labels-path", "score": 0.9, "rank": 1}
    assert [h["index"] for h in r["results"]] == [7, 12]  # "golden" alone matches less well; "gold" is another word
    assert [h["rank"] for h in r["results"]] == [1, 2]


def test_search_prefix_on_the_last_word(srv):
    assert [h["index"] for h in _get(srv, "/v1/features/search", q="Golden Ga").json()["results"]][:1] == [7]
    assert {h["index"] for h in _get(srv, "/v1/features/search", q="bridg").json()["results"]} == {3, 7}
    assert {h["index"] for h in _get(srv, "/v1/features/search", q="gold").json()["results"]} == {7, 12, 20}
    assert _get(srv, "/v1/features/search", q="zebra").json()["results"] == []


def test_search_a_number_first(srv):
    for q in ("12", "#12", "# 12"):
        res = _get(srv, "/v1/features/search", q=q).json()["results"]
        assert res[0]["index"] == 12 and res[0]["label"] == PLANTED[12][0]
    assert _get(srv, "/v1/features/search", q="#99999999").json()["results"] == []


def test_search_limit(srv):
    assert len(_get(srv, "/v1/features/search", q="golden", limit=1).json()["results"]) == 1


def test_search_quotes_and_operators_are_words(srv):
    for q in ('"', 'golden" OR "x', "NEAR(golden gate)", "*", "gold AND -"):
        assert _get(srv, "/v1/features/search", q=q).status_code == 200


@pytest.mark.parametrize("params,param", [({}, "q"), ({"q": ""}, "q"), ({"q": "   "}, "q"), ({"q": "x" * 501}, "q"),
                                          ({"q": "a", "limit": "0"}, "limit"), ({"q": "a", "limit": "101"}, "limit"),
                                          ({"q": "a", "limit": "ten"}, "limit")])
def test_search_bad_input(srv, params, param):
    _error(_get(srv, "/v1/features/search", **params), 400, param)


# ------------------------------------------------------------------------------------------------ inspect
def _inspect(srv, body):
    return httpx.post(f"{srv.features}/v1/features/inspect", json=body, timeout=60)


def test_inspect_equals_the_streams_prompt_events(srv):
    text = "The bridge over the bay glows golden at dusk."
    reader = SSEReader(f"{srv.features}/v1/features/stream?include_prompt=true", until_complete=1).start()
    srv.wait_subscribers(1)
    r = httpx.post(f"{srv.chat}/v1/completions", json={"prompt": text, "max_tokens": 1, "temperature": 0}, timeout=60)
    assert r.status_code == 200
    events = [d for e, d in reader.wait() if e == "feature_activation" and d["prompt"]]
    got = _inspect(srv, {"text": text}).json()
    assert len(got["tokens"]) == len(events) > 2
    for t, ev in zip(got["tokens"], events):
        for key in ("position", "token", "token_id", "l0", "special", "top_features"):
            assert t[key] == ev[key], key
    assert got["tokens"][0]["bos"] and got["tokens"][0]["special"]
    # the summary: features by their largest activation anywhere (BOS excluded), ties by index
    stats = {}
    for t in got["tokens"][1:]:
        for f in t["top_features"]:
            m, s, c = stats.get(f["index"], (0.0, 0.0, 0))
            stats[f["index"]] = (max(m, f["activation"]), s + f["activation"], c + 1)
    want = sorted(stats, key=lambda i: (-stats[i][0], i))[:20]
    assert [f["index"] for f in got["summary"]] == want
    for f in got["summary"]:
        assert f["count"] == stats[f["index"]][2]
        assert f["max"] == pytest.approx(stats[f["index"]][0], abs=1e-5)
        assert f["sum"] == pytest.approx(stats[f["index"]][1], abs=1e-4)


def test_inspect_messages_and_top_k(srv):
    msgs = [{"role": "user", "content": "hello there"}]
    got = _inspect(srv, {"messages": msgs, "top_k": 2}).json()
    assert all(len(t["top_features"]) <= 2 for t in got["tokens"])
    assert any(t["special"] and not t["bos"] for t in got["tokens"])  # <start_of_turn> etc. marked
    full = _inspect(srv, {"messages": msgs}).json()
    assert [t["top_features"][:2] for t in full["tokens"]] == [t["top_features"] for t in got["tokens"]]
    assert any(len(t["top_features"]) > 2 for t in full["tokens"])


@pytest.mark.parametrize("body,param", [
    ({}, None), ({"text": "a", "messages": [{"role": "user", "content": "a"}]}, "text"), ({"text": ""}, "text"),
    ({"text": 3}, "text"), ({"messages": []}, "messages"), ({"messages": [{"role": "robot", "content": "x"}]},
                                                           "messages[0].role"),
    ({"text": "a", "top_k": 0}, "top_k"), ({"text": "a", "top_k": 9}, "top_k"), ({"text": "a", "top_k": True}, "top_k"),
    ({"text": "a", "temperature": 1}, "temperature"), ([1, 2], None),
])
def test_inspect_bad_input(srv, body, param):
    _error(_inspect(srv, body), 400, param)


def test_inspect_longer_than_the_context(srv):
    ctx = srv.info.context_length
    _error(_inspect(srv, {"text": "word " * (ctx + 10)}), 400, "text")
    r = httpx.post(f"{srv.features}/v1/features/inspect", content=b"not json", timeout=10,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = httpx.post(f"{srv.features}/v1/features/inspect", content=b"text=a", timeout=10,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    assert httpx.get(f"{srv.features}/v1/features/inspect", timeout=10).status_code == 405


# ------------------------------------------------------------------------------------------------ the queue
def test_device_work_queues_behind_generation_and_past_max_queue_is_429(tiny_fixture):
    gate = threading.Event()
    srv = RunningServer("torch-cpu", tiny_fixture, gate=gate, max_queue=1)
    pool = ThreadPoolExecutor(4)
    try:
        chat = pool.submit(httpx.post, f"{srv.chat}/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        deadline = time.monotonic() + 20
        while not srv.backend.entered.is_set():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        srv.backend.entered.clear()
        page = pool.submit(_get, srv, "/v1/features/4")  # waits behind the running generation
        while httpx.get(f"{srv.chat}/health").json()["queued"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert not page.done()
        _error(_inspect(srv, {"text": "hello"}), 429)
        assert _get(srv, "/v1/features/5").status_code == 429
        assert _get(srv, "/v1/features/search", q="x").status_code == 200  # search needs no device
        gate.set()
        assert chat.result(60).status_code == 200
        assert page.result(60).json()["index"] == 4
        assert _inspect(srv, {"text": "hello"}).status_code == 200
    finally:
        gate.set()
        pool.shutdown()
        srv.stop()


def test_shutdown_answers_queued_explorer_requests_with_503(tiny_fixture):
    gate = threading.Event()
    srv = RunningServer("torch-cpu", tiny_fixture, gate=gate, max_tokens=900)
    pool = ThreadPoolExecutor(4)
    try:
        running = pool.submit(httpx.post, f"{srv.chat}/v1/chat/completions", timeout=60,
                              json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 900})
        deadline = time.monotonic() + 20
        while not srv.backend.entered.is_set():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        page = pool.submit(_get, srv, "/v1/features/9")
        inspected = pool.submit(_inspect, srv, {"text": "hello"})
        while httpx.get(f"{srv.chat}/health").json()["queued"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        time.sleep(0.3)
        gate.set()
        stopper.join(30)
        for f in (page, inspected):
            err = _error(f.result(30), 503)
            assert err["code"] == "server_shutting_down"
        assert running.result(30).status_code == 503
    finally:
        gate.set()
        pool.shutdown()


class LoggedBackend:
    """The real backend, each batch step slowed a little and logged with the feature pages' device work."""

    def __init__(self, backend):
        self._backend, self.log = backend, []

    def batch_step(self):
        self.log.append("step")
        time.sleep(0.02)
        return self._backend.batch_step()

    def feature_effects(self, *args, **kwargs):
        self.log.append("effects")
        return self._backend.feature_effects(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def test_under_batching_device_work_runs_between_two_steps_of_a_running_generation(tiny_fixture):
    srv = RunningServer("torch-cpu", tiny_fixture, max_batch=4, max_tokens=200)
    engine = srv.server.engine
    engine.backend = engine.scheduler.backend = logged = LoggedBackend(srv.backend)
    pool = ThreadPoolExecutor(2)
    try:
        chat = pool.submit(httpx.post, f"{srv.chat}/v1/chat/completions", timeout=120,
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
                                 "temperature": 0, "logit_bias": {str(srv.info.eos_token_ids[0]): -100}})
        deadline = time.monotonic() + 60
        while logged.log.count("step") < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        page = _get(srv, "/v1/features/4")
        assert page.status_code == 200 and page.json()["neighbours"]
        reply = chat.result(120).json()
        assert reply["usage"]["completion_tokens"] == 200
        at = logged.log.index("effects")
        assert logged.log.count("effects") == 1 and 3 <= at < len(logged.log) - 1  # steps before and after it
    finally:
        pool.shutdown()
        srv.stop()
