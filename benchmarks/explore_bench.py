"""``python -m benchmarks.explore_bench``: the feature explorer's speed figures.

- **search**: FTS5 BM25 queries (1-3 words, the last one cut short) over ``--labels`` synthetic labels;
- **feature page**: a page the first time (the backend's ``feature_effects`` on the device at d_model x d_sae x
  vocab, random weights, then the page's host part) and when its effects are cached (the host part alone);
- **inspect vs prefill**: ``inspect`` of a 512-token text against a bare prefill of the same tokens on the same
  backend (the tiny fixture's model: a CPU cannot prefill a Gemma-2-2B-shaped model quickly enough to repeat it).

Prints tables; no thresholds. ``--smoke`` runs seconds-long at small shapes (the test suite runs it).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import typer

from neuroscope.core import fixtures, registry
from neuroscope.explore import inspect
from neuroscope.explore.page import Explorer
from neuroscope.explore.search import FeatureSearch
from neuroscope.labels.chain import Layer, LabelChain

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
WORDS = ("golden gate bridge city river water code python function loop variable error french german english "
         "numbers dates years months names people places music songs lyrics sports games scores food cooking "
         "recipes medicine disease doctors law court legal money prices markets science physics chemistry "
         "biology history wars kings religion god church politics elections voting emotion anger love fear "
         "colour red blue green animals dogs cats birds weather rain snow punctuation commas quotes brackets "
         "plural nouns verbs past tense adjectives negation questions lists tables urls html markdown").split()


def pct(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e3
    return {"p50_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)), "n": int(a.size)}


def synthetic_chain(n: int, seed: int = 0) -> LabelChain:
    rng = np.random.default_rng(seed)
    labels = {i: (" ".join(rng.choice(WORDS, size=int(rng.integers(2, 7)))), float(rng.random())) for i in range(n)}
    return LabelChain(n, [Layer("labels-path", "synthetic", labels)])


def bench_search(n_labels: int, queries: int) -> dict[str, Any]:
    chain = synthetic_chain(n_labels)
    s = FeatureSearch(chain)
    t0 = time.perf_counter()
    s.search("warm up")
    build = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    times = []
    for _ in range(queries):
        words = list(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        words[-1] = words[-1][: max(2, int(rng.integers(2, len(words[-1]) + 1)))]
        q = " ".join(words)
        t0 = time.perf_counter()
        s.search(q, 20)
        times.append(time.perf_counter() - t0)
    return {"labels": n_labels, "index_build_ms": build * 1e3, **pct(times)}


class _Tok:
    """Token texts for the page's logits (the random vocabulary has no tokenizer)."""

    def decode(self, ids, skip_special_tokens=False):
        return f"<{ids[0]}>"


def _effects(backend: str, d_model: int, d_sae: int, vocab: int, dtype: str):
    rng = np.random.default_rng(0)
    W_dec = rng.standard_normal((d_sae, d_model), dtype=np.float32)
    norm = rng.standard_normal(d_model, dtype=np.float32) * 0.3
    if backend.startswith("torch"):
        import torch

        from backends.torch_explore import Effects

        device = "cuda" if backend == "torch-cuda" else "cpu"
        unembed = torch.empty((vocab, d_model), dtype=getattr(torch, dtype), device=device)
        for s in range(0, vocab, 32768):  # random rows, written a chunk at a time
            unembed[s:s + 32768] = torch.from_numpy(
                rng.standard_normal((min(32768, vocab - s), d_model), dtype=np.float32) * 0.02).to(unembed)
        eff = Effects(torch.from_numpy(W_dec).to(device), unembed, torch.from_numpy(norm).to(device))
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        return eff, sync
    import mlx.core as mx
    import mlx.nn as nn

    from backends.mlx_explore import Effects

    emb = nn.Embedding(vocab, d_model)
    emb.weight = (mx.random.normal((vocab, d_model)) * 0.02).astype(getattr(mx, dtype))
    mx.eval(emb.weight)
    return Effects(mx.array(W_dec), emb, mx.array(norm)), lambda: None


def bench_page(backend: str, d_model: int, d_sae: int, vocab: int, dtype: str, pages: int) -> dict[str, Any]:
    eff_fn, sync = _effects(backend, d_model, d_sae, vocab, dtype)
    ex = Explorer(synthetic_chain(d_sae), _Tok())
    eff_fn(0, neighbours=10, logits=10)  # the rows' norms, computed once
    sync()
    first, cached = [], []
    for i in range(1, pages + 1):
        t0 = time.perf_counter()
        eff = eff_fn(i, neighbours=10, logits=10)
        ex.keep(i, eff)
        ex.page(i, eff)
        first.append(time.perf_counter() - t0)
    for i in range(1, pages + 1):
        t0 = time.perf_counter()
        ex.page(i, ex.cached(i))
        cached.append(time.perf_counter() - t0)
    return {"backend": backend, "shape": f"{d_model} x {d_sae} x {vocab} ({dtype})",
            "first": pct(first), "cached": pct(cached)}


def bench_inspect(backend_name: str, tokens: int, reps: int, fx) -> dict[str, Any]:
    from neuroscope.core.protocol import GenerationParams, ModelSpec
    from neuroscope.core.sae import load_npz

    backend = registry.resolve(backend_name)()
    sae = load_npz(fx.sae_path)
    info = backend.load(ModelSpec(str(fx.model_dir)), sae, fx.sae_layer, top_k=32)
    rng = np.random.default_rng(2)
    ids = [info.tokenizer.bos_token_id] + [int(t) for t in rng.integers(10, info.vocab_size, tokens - 1)]
    chain = synthetic_chain(sae.d_sae)
    plain = GenerationParams(max_tokens=1)
    bare, insp = [], []
    for _ in range(reps):  # interleaved, so drift hits both alike
        t0 = time.perf_counter()
        backend.to_host(backend.prefill(ids, plain).record)
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        inspect.run(backend, info.tokenizer, chain, ids, 32)
        insp.append(time.perf_counter() - t0)
    backend.close()
    b, i = pct(bare[1:] or bare), pct(insp[1:] or insp)
    return {"backend": backend_name, "tokens": tokens, "prefill": b, "inspect": i, "ratio": i["p50_ms"] / b["p50_ms"]}


@dataclass
class Settings:
    labels: int = 16384
    queries: int = 300
    d_model: int = 2304
    d_sae: int = 16384
    vocab: int = 256000
    pages: int = 20
    tokens: int = 512
    reps: int = 6


@app.command()
def main(
    smoke: Annotated[bool, typer.Option(help="Seconds-long run at small shapes.")] = False,
    backends: Annotated[str, typer.Option(help="Comma-separated backends (default: every one available).")] = "",
    dtype: Annotated[str, typer.Option(help="The unembedding's dtype: float32 or bfloat16.")] = "float32",
    json_out: Annotated[bool, typer.Option("--json", help="Also print the figures as one JSON line.")] = False,
) -> None:
    st = Settings(labels=2000, queries=30, d_model=64, d_sae=512, vocab=4096, pages=5, tokens=64, reps=3) \
        if smoke else Settings()
    names = [b for b in (backends.split(",") if backends else registry.available()) if b]
    out: dict[str, Any] = {"search": bench_search(st.labels, st.queries), "page": [], "inspect": []}
    s = out["search"]
    typer.echo(f"search over {s['labels']} labels: p50 {s['p50_ms']:.2f} ms, p95 {s['p95_ms']:.2f} ms "
               f"({s['n']} queries; index built in {s['index_build_ms']:.0f} ms)")
    for name in names:
        p = bench_page(name, st.d_model, st.d_sae, st.vocab, dtype, st.pages)
        out["page"].append(p)
        typer.echo(f"feature page, {name}, {p['shape']}: first p50 {p['first']['p50_ms']:.1f} ms, p95 "
                   f"{p['first']['p95_ms']:.1f} ms; cached p50 {p['cached']['p50_ms']:.3f} ms, p95 "
                   f"{p['cached']['p95_ms']:.3f} ms")
    fx = fixtures.build(_tiny_dir(), "tiny")
    for name in names:
        r = bench_inspect(name, min(st.tokens, 1000), st.reps, fx)
        out["inspect"].append(r)
        typer.echo(f"inspect vs prefill, {name}, {r['tokens']} tokens (tiny model): prefill p50 "
                   f"{r['prefill']['p50_ms']:.1f} ms, inspect p50 {r['inspect']['p50_ms']:.1f} ms, "
                   f"ratio {r['ratio']:.2f}")
    if json_out:
        typer.echo(json.dumps(out))


def _tiny_dir():
    from neuroscope.store.paths import bench_dir

    return bench_dir() / "explore-tiny"


if __name__ == "__main__":
    app()
