# Neuroscope tasks (`pip install rust-just` provides `just`). Every recipe sets up .venv first.

python := ".venv/bin/python"

# Create .venv with torch's CPU wheel, mlx (CPU) and the test tools
setup:
    test -x {{python}} || python3 -m venv .venv
    {{python}} -m pip install -q torch==2.13.0
    {{python}} -m pip install -q -e '.[torch,mlx-cpu,dev]'

# Serve (the default Gemma-2 + Gemma Scope when online, else the built-in demo); extra flags pass through
serve *ARGS: setup
    .venv/bin/neuroscope serve {{ARGS}}

# Serve the built-in offline demo model (random weights)
demo *ARGS: setup
    .venv/bin/neuroscope serve --demo {{ARGS}}

# Run the test suite; extra flags go to pytest
test *ARGS: setup
    {{python}} -m pytest {{ARGS}}

# Benchmarks: SAE per-token latency and decode speed on every backend here (results in benchmarks/results/)
bench *ARGS: setup
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE {{python}} -m benchmarks {{ARGS}}

# Benchmarks at full size: d_sae 16384 and 65536, a Gemma-2-2B-shaped model (for GPUs and Macs)
bench-full *ARGS: setup
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE {{python}} -m benchmarks --full {{ARGS}}

# On a CUDA GPU: the compiled engine's parity and CUDA-graph checks, then the full decode benchmark (< 8 min on an H100)
gpu-check *ARGS: setup
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHON={{python}} benchmarks/gpu_check.sh {{ARGS}}
