"""``neuroscope serve`` flags the README documents, on a real process: ``--sae-dtype``, ``--labels-path`` (and the
labels' ``source`` without it), ``NEUROSCOPE_CACHE`` and ``--host`` with IPv6."""

from __future__ import annotations

import json
import socket

import httpx
import numpy as np
import pytest

from neuroscope.core.sae import encode_reference, load_npz
from neuroscope.server.prompt import render_prompt
from tests.support.process import start_serve
from tests.support.reference import residuals
from tests.support.server import SSEReader

MSG = [{"role": "user", "content": "Tell me about the river and the old mill."}]
CUSTOM_LABELS = {"3": "rivers", "7": "old mills"}


def _chat(base: str, **kw) -> dict:
    body = {"messages": MSG, "max_tokens": 8, "temperature": 0, **kw}
    r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _events(features: str, request_id: str) -> list[dict]:
    reader = SSEReader(f"{features}/v1/features/stream?request_id={request_id}", until_complete=1)
    return [d for e, d in reader.start().wait(30) if e == "feature_activation"]


# ---------------------------------------------------------------------------------------------- one bf16 demo
@pytest.fixture(scope="module")
def bf16_demo(tmp_path_factory):
    """``serve --demo --sae-dtype bfloat16 --labels-path custom.json`` with NEUROSCOPE_CACHE, XDG_CACHE_HOME and
    HOME all pointing at separate temporary directories."""
    tmp = tmp_path_factory.mktemp("bf16-demo")
    labels = tmp / "custom-labels.json"
    labels.write_text(json.dumps(CUSTOM_LABELS))
    env = {"NEUROSCOPE_CACHE": str(tmp / "cache"), "XDG_CACHE_HOME": str(tmp / "xdg"), "HOME": str(tmp / "home")}
    srv = start_serve(tmp, "--demo", "--backend", "torch-cpu", "--sae-dtype", "bfloat16",
                      "--labels-path", str(labels), env=env)
    srv.tmp, srv.labels = tmp, labels
    yield srv
    assert srv.stop() == 0


def test_sae_dtype_bfloat16_reaches_the_backend(bf16_demo):
    srv = bf16_demo
    health = httpx.get(f"{srv.chat}/health", timeout=10).json()
    assert (health["model"], health["backend"], health["sae_dtype"]) == ("neuroscope-demo", "torch-cpu", "bfloat16")
    assert "Gemma Scope (params.npz), jumprelu, bfloat16" in srv.output  # the start-up panel

    # the encode really runs in bf16: activations carry bf16 rounding against the float32 reference (which
    # a float32 SAE matches to ~1e-6, see the conformance tests), yet stay close to it
    r = _chat(srv.chat)
    events = _events(srv.features, r["id"])
    assert len(events) == r["usage"]["completion_tokens"] == 8
    demo = srv.tmp / "cache" / "demo" / "v1"
    from transformers import AutoTokenizer

    prompt = render_prompt(AutoTokenizer.from_pretrained(demo / "model"), MSG)
    assert len(prompt) == r["usage"]["prompt_tokens"]
    seq = prompt + [e["token_id"] for e in events]
    acts = encode_reference(load_npz(demo / "sae" / "params.npz"), residuals(demo / "model", seq, 2))
    served, ref = [], []
    for e in events:
        for f in e["top_features"]:
            served.append(f["activation"])
            ref.append(acts[e["position"], f["index"]])
    served, ref = np.array(served), np.array(ref)
    fired = ref > 0  # a feature within bf16 rounding of its threshold may fire in one and not the other
    assert fired.mean() > 0.9
    rel = np.abs(served[fired] - ref[fired]) / ref[fired]
    assert rel.max() > 5e-4, f"activations match float32 to {rel.max():.1e}: the SAE did not run in bfloat16"
    assert np.median(rel) < 2e-2, f"bf16 activations are off by a median {np.median(rel):.1e}"


def test_labels_source_is_the_labels_path(bf16_demo):
    body = httpx.get(f"{bf16_demo.features}/v1/features/labels", timeout=10).json()
    assert body["source"] == str(bf16_demo.labels)
    # the user's two labels win; the demo's example labels (even features) fill in below them, per feature
    assert (body["count"], body["named"]) == (256, 2 + 128)
    assert body["labels"]["3"] == "rivers" and body["labels"]["7"] == "old mills"
    assert body["labels"]["4"] == "random feature 4" and body["labels"]["5"] == "feature_5"
    detail = httpx.get(f"{bf16_demo.features}/v1/features/labels?detail=true", timeout=10).json()
    assert detail["3"] == {"label": "rivers", "source": "labels-path"}
    assert detail["4"] == {"label": "random feature 4", "source": "demo"}
    assert detail["5"] == {"label": "feature_5", "source": "numeric"}
    assert httpx.get(f"{bf16_demo.features}/v1/features/labels?detail=maybe", timeout=10).status_code == 400
    panel = " ".join(bf16_demo.output.split())
    assert "labels 2 labels-path, 128 demo; 126 numeric" in panel
    assert "neuronpedia skipped: not for the built-in demo" in panel
    sources = httpx.get(f"{bf16_demo.features}/v1/features/info", timeout=10).json()["labels"]["sources"]
    assert sources == {"labels-path": 2, "autointerp": 0, "autointerp-legacy": 0, "neuronpedia": 0, "demo": 128,
                       "numeric": 126}


def test_demo_checkpoint_is_built_under_neuroscope_cache(bf16_demo):
    tmp = bf16_demo.tmp
    assert (tmp / "cache" / "demo" / "v1" / "model" / "config.json").is_file()
    assert (tmp / "cache" / "demo" / "v1" / "sae" / "params.npz").is_file()
    # Neuroscope writes nothing of its own elsewhere (libraries may still create their own cache dirs there: older
    # huggingface_hub releases make $XDG_CACHE_HOME/huggingface at import)
    for other in (tmp / "xdg" / "neuroscope", tmp / "home" / ".cache" / "neuroscope"):
        assert not other.exists(), f"the demo was built in {other}, not under NEUROSCOPE_CACHE"


# ---------------------------------------------------------------------------------------------- no labels file
def test_labels_source_without_labels_path_is_the_fallback(tmp_path, tiny_fixture):
    srv = start_serve(tmp_path, "--model", str(tiny_fixture.model_dir), "--sae-local-path", str(tiny_fixture.sae_path),
                      "--sae-layer", str(tiny_fixture.sae_layer), "--backend", "torch-cpu",
                      env={"NEUROSCOPE_CACHE": str(tmp_path / "cache")})
    try:
        body = httpx.get(f"{srv.features}/v1/features/labels", timeout=10).json()
        assert body["source"] == "fallback"
        assert (body["count"], body["named"]) == (256, 0)
        assert body["labels"] == {str(i): f"feature_{i}" for i in range(256)}
        assert httpx.get(f"{srv.chat}/health", timeout=10).json()["sae_dtype"] == "float32"
    finally:
        assert srv.stop() == 0


# ---------------------------------------------------------------------------------------------- IPv6
def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine cannot bind the IPv6 loopback ::1")
def test_host_ipv6_serves_both_ports_on_ipv6_loopback(tmp_path):
    srv = start_serve(tmp_path, "--demo", "--backend", "torch-cpu", "--host", "::1",
                      env={"NEUROSCOPE_CACHE": str(tmp_path / "cache")})
    try:
        assert srv.chat.startswith("http://[::1]:") and srv.features.startswith("http://[::1]:")
        assert f"{srv.chat}/v1/chat/completions" in srv.output  # the panel's URLs are bracketed too
        assert f"{srv.features}/v1/features/stream" in srv.output
        from openai import OpenAI

        client = OpenAI(base_url=f"{srv.chat}/v1", api_key="unused", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="neuroscope-demo", messages=MSG, max_tokens=5, temperature=0)
        assert r.usage.completion_tokens == 5
        events = _events(srv.features, r.id)
        assert "".join(e["token"] for e in events) == r.choices[0].message.content
        for base in (srv.chat, srv.features):  # bound to ::1, not to the IPv4 loopback
            port = int(base.rsplit(":", 1)[1])
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        assert srv.stop() == 0
