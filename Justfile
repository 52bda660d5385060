# Neuroscope tasks. `pip install rust-just` provides `just`.

python := ".venv/bin/python"

# Set up (CPU torch) and serve the offline demo model
demo:
    bash scripts/setup.sh
    .venv/bin/neuroscope serve --demo

# Set up and serve (the default model when online, else the demo)
serve *ARGS:
    bash scripts/setup.sh
    .venv/bin/neuroscope serve {{ARGS}}

# Set up and run the test suite
test *ARGS:
    bash scripts/setup.sh
    {{python}} -m pytest {{ARGS}}
