"""The test suite keeps to a temporary cache: nothing it runs writes into the user's (compiled kernels included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from neuroscope.store import paths


def test_the_suite_writes_into_a_temporary_cache_and_its_subprocesses_too(suite_cache):
    assert paths.cache_dir() == suite_cache
    assert not suite_cache.is_relative_to(Path.home() / ".cache")
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).is_relative_to(suite_cache)
    child = subprocess.run([sys.executable, "-c", "from neuroscope.store import paths; print(paths.cache_dir())"],
                           capture_output=True, text=True, timeout=60, check=True)
    assert Path(child.stdout.strip()) == suite_cache


def test_compiled_kernels_go_into_the_suite_cache(suite_cache):
    from backends.torch_compiled import use_neuroscope_inductor_cache

    assert Path(use_neuroscope_inductor_cache()).is_relative_to(suite_cache)
