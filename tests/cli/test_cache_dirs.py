"""Where the cache lives: ``$NEUROSCOPE_CACHE``, else ``$XDG_CACHE_HOME/neuroscope``, else
``~/.cache/neuroscope``; the demo checkpoint that ``serve --demo`` loads is built there, once."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuroscope.config import ServeConfig
from neuroscope.core import fixtures
from neuroscope.runtime import demo_config
from neuroscope.store import paths


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: HOME in tmp_path, neither cache variable set."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NEUROSCOPE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return monkeypatch


CASES = {
    # id: (NEUROSCOPE_CACHE, XDG_CACHE_HOME, expected cache dir relative to tmp_path)
    "default": (None, None, "home/.cache/neuroscope"),
    "xdg": (None, "{tmp}/xdg", "xdg/neuroscope"),
    "neuroscope-cache": ("{tmp}/ns", None, "ns"),
    "neuroscope-cache-wins-over-xdg": ("{tmp}/ns", "{tmp}/xdg", "ns"),
    "empty-neuroscope-cache-is-unset": ("", "{tmp}/xdg", "xdg/neuroscope"),
    "tilde": ("~/mine", None, "home/mine"),
}


@pytest.mark.parametrize(("ns", "xdg", "expected"), list(CASES.values()), ids=list(CASES))
def test_demo_checkpoint_is_built_in_the_cache_dir(env, tmp_path, ns, xdg, expected):
    for name, value in (("NEUROSCOPE_CACHE", ns), ("XDG_CACHE_HOME", xdg)):
        if value is not None:
            env.setenv(name, value.format(tmp=tmp_path))
    want = tmp_path / expected
    assert paths.cache_dir() == want

    config = demo_config(ServeConfig(demo=True))  # what `neuroscope serve --demo` loads
    assert config.labels_path is None  # the demo's example labels are a source of their own, not --labels-path
    labels = fixtures.demo_fixture().labels_path
    model, sae = Path(config.model), Path(config.sae_local_path)
    for p in (model, sae, labels):
        assert p.is_relative_to(want / "demo"), f"{p} is not under {want}"
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file() and sae.is_file()
    others = [p for p in tmp_path.rglob("config.json") if not p.is_relative_to(want)]
    assert others == [], "nothing is built outside the cache dir"


def test_demo_checkpoint_is_built_once(env, tmp_path):
    env.setenv("NEUROSCOPE_CACHE", str(tmp_path / "cache"))
    first = Path(demo_config(ServeConfig(demo=True)).model) / "model.safetensors"
    stamp = first.stat().st_mtime_ns, first.stat().st_ino
    second = Path(demo_config(ServeConfig(demo=True)).model) / "model.safetensors"
    assert second == first
    assert (second.stat().st_mtime_ns, second.stat().st_ino) == stamp, "a second start must reuse the checkpoint"
