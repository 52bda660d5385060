"""The cache layout: every path from one module, safe names, one namespace per SAE."""

from __future__ import annotations

import itertools
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from neuroscope.store import paths
from neuroscope.store.paths import Namespace, safe_component


# --------------------------------------------------------------------------------------------- cache root
def test_env_var_moves_every_path(cache):
    ns = Namespace.for_hub_sae("google/gemma-2-2b-it", "google/gemma-scope-2b-pt-res", "layer_20/params.npz", 20)
    every = [
        paths.cache_dir(), paths.demo_dir(3), paths.bench_dir(), paths.corpus_dir("wikitext", "c", "train"),
        paths.checkpoint_dir("calibration", ns, "run"), paths.calibration_file(ns),
        paths.autointerp_labels_file("deepseek/deepseek-v3.2", ns), paths.legacy_autointerp_labels_file(ns),
        paths.neuronpedia_dir("gemma-2-2b", "20-gemmascope-res-16k"), paths.trash_dir(),
        paths.trash_entry("20250101T000000", "labels"), *paths.data_roots().values(),
    ]
    for p in every:
        assert p.is_relative_to(cache), p


def test_default_cache_without_the_env_var(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "neuroscope"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert paths.cache_dir() == Path.home() / ".cache" / "neuroscope"


def test_documented_layout(cache):
    ns = Namespace.for_hub_sae("google/gemma-2-2b-it", "google/gemma-scope-2b-pt-res",
                               "layer_20/width_16k/average_l0_71/params.npz", 20, "none")
    sae = "google__gemma-scope-2b-pt-res/layer_20__width_16k__average_l0_71__params.npz"
    assert ns.path.as_posix() == f"google__gemma-2-2b-it/{sae}/layer_20/norm_none"
    assert paths.corpus_dir("wikitext", "wikitext-103-raw-v1", "train") == (
        cache / "corpus" / "wikitext" / "wikitext-103-raw-v1" / "train")
    assert paths.calibration_file(ns) == cache / "calibration" / ns.path / "calibration.json"
    assert paths.autointerp_labels_file("deepseek/deepseek-v3.2", ns) == (
        cache / "autointerp_labels" / "deepseek__deepseek-v3.2" / ns.path / "labels.jsonl")
    assert paths.legacy_autointerp_labels_file(ns) == cache / "autointerp_labels" / ns.path / "labels.json"
    assert paths.checkpoint_dir("calibration", ns, "wikitext-1000") == (
        cache / "checkpoints" / "calibration" / ns.path / "wikitext-1000")
    assert paths.neuronpedia_dir("gemma-2-2b", "20-gemmascope-res-16k") == (
        cache / "neuronpedia" / "gemma-2-2b" / "20-gemmascope-res-16k")
    assert paths.trash_dir() == cache / "trash"


# --------------------------------------------------------------------------------------------- safe names
NASTY = ["a/b", "a__b", "a_/b", "a/_b", "A/B", "a b", "a\\b", "a:b", "..", ".", "", ".hidden", "a/../b",
         "é/ü", "con", "x" * 300, "x" * 301, "/abs/path", "a\x00b", "a~b", "google/gemma-2-2b-it"]


@pytest.mark.parametrize("text", NASTY)
def test_components_are_safe(text):
    c = safe_component(text)
    assert c and len(c) <= 120
    assert "/" not in c and "\\" not in c and "\x00" not in c
    assert c not in (".", "..") and not c.startswith(".")
    assert all(ch.isascii() and (ch.isalnum() or ch in "._-~") for ch in c), c


def test_components_are_collision_free():
    comps = [safe_component(t) for t in NASTY]
    assert len(set(comps)) == len(NASTY)


def test_plain_ids_stay_readable():
    assert safe_component("google/gemma-2-2b-it") == "google__gemma-2-2b-it"
    assert safe_component("deepseek/deepseek-v3.2") == "deepseek__deepseek-v3.2"
    assert safe_component("layer_20") == "layer_20"


def test_components_are_real_directories(tmp_path):
    # every component can be created side by side in one directory, and each stays distinct on disk
    for text in NASTY:
        (tmp_path / safe_component(text)).mkdir()
    assert len(list(tmp_path.iterdir())) == len(NASTY)


# --------------------------------------------------------------------------------------------- namespaces
def test_distinct_saes_get_distinct_directories(cache):
    base = dict(model="google/gemma-2-2b-it", repo="google/gemma-scope-2b-pt-res",
                path="layer_20/width_16k/average_l0_71/params.npz", layer=20, input_norm="none")
    variants = [
        base,
        {**base, "model": "google/gemma-2-2b"},
        {**base, "repo": "someone/gemma-scope-2b-pt-res"},
        {**base, "path": "layer_20/width_16k/average_l0_22/params.npz"},
        {**base, "path": "layer_20/width_65k/average_l0_71/params.npz"},
        {**base, "layer": 12},
        {**base, "input_norm": "rms"},
        # a repo/path split differently must not meet the same directory
        {**base, "repo": "google/gemma-scope-2b-pt-res/layer_20", "path": "width_16k/average_l0_71/params.npz"},
    ]
    spaces = [Namespace.for_hub_sae(v["model"], v["repo"], v["path"], v["layer"], v["input_norm"])
              for v in variants]
    dirs = [paths.calibration_file(ns).parent for ns in spaces]
    # distinct, and none inside another (a clean of one never takes another's files)
    for a, b in itertools.permutations(dirs, 2):
        assert a != b and not a.is_relative_to(b)
    assert not spaces[0].path.is_absolute()


def _npz(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, W_enc=rng.standard_normal((4, 8)).astype(np.float32))
    return path


def test_local_sae_is_named_by_its_content(tmp_path, cache):
    a = _npz(tmp_path / "a.npz", 0)
    (tmp_path / "moved").mkdir()
    same = tmp_path / "moved" / "params.npz"
    same.write_bytes(a.read_bytes())
    other = _npz(tmp_path / "b.npz", 1)

    ns_a = Namespace.for_local_sae("m", a, 2)
    assert ns_a.sae == f"local-sha256-{paths.file_sha256(a)}"
    assert ns_a.path.parts[1] == f"local-sha256-{paths.file_sha256(a)[:16]}"
    assert ns_a.sae_path is None
    # the same bytes elsewhere (given as the directory, as --sae-local-path allows) share the namespace
    assert Namespace.for_local_sae("m", tmp_path / "moved", 2).path == ns_a.path
    # different bytes under the same name do not
    other_bytes = tmp_path / "c.npz"
    other_bytes.write_bytes(other.read_bytes())
    assert Namespace.for_local_sae("m", other_bytes, 2).path != ns_a.path


def test_local_and_hub_saes_never_meet():
    local = Namespace("m", "local-sha256-" + "0" * 64, None, 1)
    hubs = [Namespace.for_hub_sae("m", "local-sha256-" + "0" * 64, "layer_1", 1),
            Namespace.for_hub_sae("m", "local-sha256-" + "0" * 16, "layer_1", 1)]
    for hub in hubs:
        assert not hub.is_local
        a, b = PurePosixPath("/c") / local.path, PurePosixPath("/c") / hub.path
        assert not a.is_relative_to(b) and not b.is_relative_to(a)


def test_a_namespace_is_either_hub_or_local():
    with pytest.raises(ValueError):
        Namespace("m", "google/sae", None, 1)
    with pytest.raises(ValueError):
        Namespace("m", "local-sha256-123", None, 1)
