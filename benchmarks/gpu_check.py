"""``python -m benchmarks.gpu_check``: the compiled engine on a CUDA GPU, checked before it is timed.

On the tiny checkpoint, torch-cuda in float32 under ``--engine eager`` and ``--engine compiled`` (CUDA
graphs): the same tokens, top-k ids and activations (within 1e-3) for greedy, seeded top-p, a filter,
steering and logprobs; then 200 steps and a second request of another length in the same cache bucket with
no new dynamo graph, no cudagraph skip (``mutated inputs`` and the like) and no input copied on replay
beyond the few the report prints. Exits 1 with the first difference. The timing is ``python -m benchmarks
--full`` (``benchmarks/gpu_check.sh`` runs both). ``--cpu`` runs the same checks on torch-cpu (inductor, no CUDA
graphs): a rehearsal of this script on a machine without a GPU.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    import torch
    from torch._dynamo.utils import counters

    from neuroscope.core import fixtures, registry
    from neuroscope.core.decode import generate
    from neuroscope.core.protocol import FeatureFilter, GenerationParams, ModelSpec, SteerFeature, Steering
    from neuroscope.core.sae import load_npz

    name = "torch-cpu" if "--cpu" in argv else "torch-cuda"
    if name == "torch-cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (torch.cuda.is_available() is False); --cpu rehearses on the CPU", file=sys.stderr)
        return 2
    fx = fixtures.build(Path(tempfile.mkdtemp()) / "tiny", "tiny")
    sae = load_npz(fx.sae_path)
    backends = {}
    for engine in ("eager", "compiled"):
        b = registry.resolve(name)()
        b.engine = engine
        info = b.load(ModelSpec(str(fx.model_dir), dtype="float32"), sae, fx.sae_layer, top_k=8)
        t0 = time.perf_counter()
        b.warm_up(256)
        print(f"{engine}: loaded, warm-up {time.perf_counter() - t0:.1f} s ({b.describe_engine()})", flush=True)
        backends[engine] = b
    ids = info.tokenizer.encode("The river bends around the old mill where the village keeps its grain.")
    mask = np.ones(sae.d_sae, dtype=bool)
    mask[::7] = False
    cases = {
        "greedy": dict(),
        "seeded top-p": dict(temperature=0.9, top_p=0.8, seed=3),
        "steered": dict(steering=Steering((SteerFeature(193, "add", 8.0), SteerFeature(2, "clamp", 3.0)))),
        "logprobs": dict(logprobs=3, logit_bias=((7, 4.0),), presence_penalty=0.4, temperature=0.7, seed=1),
        "filtered": dict(temperature=1.0, seed=9),
    }
    failures = []
    for name, kw in cases.items():
        for b in backends.values():
            b.set_feature_filter(FeatureFilter(mask=mask) if name == "filtered" else FeatureFilter())
        a, c = (list(generate(b, ids, GenerationParams(max_tokens=48, **kw))) for b in backends.values())
        ok = [s.token_id for s in a] == [s.token_id for s in c] and all(
            np.array_equal(x.feature_ids, y.feature_ids)
            and np.allclose(x.feature_values, y.feature_values, rtol=1e-3, atol=1e-3) for x, y in zip(a, c))
        print(f"parity {name}: {'ok' if ok else 'DIFFERENT'}", flush=True)
        if not ok:
            failures.append(name)
    for b in backends.values():
        b.set_feature_filter(FeatureFilter())
    compiled = backends["compiled"]
    list(generate(compiled, ids, GenerationParams(max_tokens=3)))
    graphs, skips = counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]
    t0 = time.perf_counter()
    steps = list(generate(compiled, ids, GenerationParams(max_tokens=200)))
    dt = time.perf_counter() - t0
    list(generate(compiled, ids[:5], GenerationParams(max_tokens=150, temperature=1.0, seed=2)))
    new_graphs = counters["stats"]["unique_graphs"] - graphs
    new_skips = counters["inductor"]["cudagraph_skips"] - skips
    print(f"200 steps in {dt:.2f} s ({len(steps) / dt:.0f} tok/s, tiny model); new graphs after warm-up: "
          f"{new_graphs}; cudagraph skips: {counters['inductor']['cudagraph_skips']}; inputs copied on replay: "
          f"{counters['inductor']['cudagraph_recorded_non_static_inputs']}", flush=True)
    if new_graphs or (name == "torch-cuda" and (new_skips or counters["inductor"]["cudagraph_skips"])):
        failures.append("recompiles or cudagraph skips")
    for b in backends.values():
        b.close()
    if failures:
        print(f"error: the compiled engine differs from eager or recompiles: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("gpu check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
