#!/usr/bin/env bash
# The compiled engine on one CUDA GPU, in under 8 minutes on an H100: build check, parity eager vs compiled
# (CUDA graphs) on the tiny checkpoint, then the --full decode benchmark (Gemma-2-2B-shaped random bf16 model,
# batch 1, 64-token prompt, 256 new tokens; HF generate, eager and compiled, with and without the SAE), then the
# concurrency table (1, 2, 4, 8 requests at once, --max-batch 8 beside 1).
# Run from the repository root with a CUDA build of torch installed: benchmarks/gpu_check.sh [extra bench flags]
# (python -m benchmarks.gpu_check --cpu rehearses the checks on a machine without a GPU)
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYCHECK'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check needs a GPU"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))
import backends.torch_compiled, neuroscope  # noqa: E401,F401  (the package builds and imports)
PYCHECK
timeout 170 "$PY" -m benchmarks.gpu_check
timeout 290 "$PY" -m benchmarks --full --backends torch-cuda --no-sae --no-corpus --no-steering --no-concurrency \
  --repeats 2 "$@"
# continuous batching: aggregate tok/s and inter-token latency at 1, 2, 4, 8 concurrent requests, --max-batch 8
# beside 1, compiled engine (CUDA graphs, one per batch bucket), SAE + top-k in every step
timeout 290 "$PY" -m benchmarks --full --backends torch-cuda --no-sae --no-corpus --no-decode "$@"
