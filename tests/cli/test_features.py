"""``neuroscope features search | show | inspect`` on the tiny checkpoint: search without a model, ``show``'s
neighbours and logits equal to numpy (reading only two tensors of the checkpoint, bf16 included), ``inspect``'s
per-token features equal to transformers + the numpy encoder, and one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.core.sae import load_npz
from tests.support import explore as ref
from tests.support.cli import error_line
from tests.support.reference import reference_acts, residuals


@pytest.fixture
def cache(cache, monkeypatch):
    """The suite's empty cache, with no labeler or Neuronpedia registry from the environment."""
    for name in ("LABELER_MODEL", "NEURONPEDIA_REGISTRY"):
        monkeypatch.delenv(name, raising=False)
    return cache


def invoke(fx, *args, model=None, labels=None):
    opts = ["--model", str(model or fx.model_dir), "--sae-local-path", str(fx.sae_path),
            "--sae-layer", str(fx.sae_layer)]
    if labels is not None:
        opts += ["--labels-path", str(labels)]
    result = CliRunner().invoke(cli.app, ["features", *args, *opts], env={"COLUMNS": "200"})
    assert "Traceback" not in result.output, result.output
    return result


def _labels(tmp_path):
    p = tmp_path / "labels.json"
    p.write_text(json.dumps({"7": "Golden Gate Bridge", "3": "bridges over rivers", "12": "golden retrievers"}))
    return p


def test_search(cache, tiny_fixture, tmp_path):
    r = invoke(tiny_fixture, "search", "golden ga", "--json", labels=_labels(tmp_path))
    assert r.exit_code == 0, r.output
    assert [h["index"] for h in json.loads(r.stdout)["results"]] == [7, 12]
    r = invoke(tiny_fixture, "search", "#3", labels=_labels(tmp_path))
    assert r.exit_code == 0 and "bridges over rivers" in r.stdout


@pytest.mark.parametrize("args,what", [(("search", ""), "empty"), (("search", "x", "--limit", "0"), "limit"),
                                       (("show", "abc"), "non-negative integer"), (("show", "99999"), "does not exist")])
def test_bad_input_is_one_line(cache, tiny_fixture, args, what):
    r = invoke(tiny_fixture, *args)
    assert r.exit_code == 2
    assert what in error_line(r)


def _two_tensor_checkpoint(fx, tmp_path, dtype):
    """The checkpoint with every tensor but the unembedding and the final norm gone (so nothing else can be
    read), those two in ``dtype``."""
    from safetensors.numpy import load_file

    d = tmp_path / f"ckpt-{dtype}"
    shutil.copytree(fx.model_dir, d, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    w = {}
    for f in fx.model_dir.glob("*.safetensors"):
        w.update(load_file(str(f)))
    keep = {k: torch.from_numpy(w[k]).to(getattr(torch, dtype)).contiguous()
            for k in ("model.embed_tokens.weight", "model.norm.weight")}
    save_file(keep, str(d / "model.safetensors"))
    return d, {k: v.float().numpy().astype(np.float64) for k, v in keep.items()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_show_reads_two_tensors_and_equals_numpy(cache, tiny_fixture, tmp_path, dtype):
    model, w = _two_tensor_checkpoint(tiny_fixture, tmp_path, dtype)
    r = invoke(tiny_fixture, "show", "#7", "--json", model=model, labels=_labels(tmp_path))
    assert r.exit_code == 0, r.output
    page = json.loads(r.stdout)
    assert (page["index"], page["label"], page["source"]) == (7, "Golden Gate Bridge", "labels-path")
    _, _, W_dec = ref.checkpoint_tensors(tiny_fixture)
    ids, cos = ref.neighbours(W_dec, 7)
    assert [n["index"] for n in page["neighbours"]] == ids
    np.testing.assert_allclose([n["cosine"] for n in page["neighbours"]], cos, rtol=1e-4, atol=1e-5)
    pos, pos_v, neg, neg_v = ref.logits(w["model.embed_tokens.weight"], 1.0 + w["model.norm.weight"], W_dec, 7)
    assert [t["token_id"] for t in page["logits"]["positive"]] == pos
    assert [t["token_id"] for t in page["logits"]["negative"]] == neg
    np.testing.assert_allclose([t["value"] for t in page["logits"]["positive"]], pos_v, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([t["value"] for t in page["logits"]["negative"]], neg_v, rtol=1e-4, atol=1e-5)
    r = invoke(tiny_fixture, "show", "7", model=model, labels=_labels(tmp_path))
    assert r.exit_code == 0 and "decoder neighbours" in r.stdout and "Golden Gate Bridge" in r.stdout


def test_show_without_the_checkpoint_is_one_line(cache, tiny_fixture, tmp_path):
    r = invoke(tiny_fixture, "show", "1", model=tmp_path / "nowhere")
    assert r.exit_code == 1 and "not on this machine" in error_line(r)


def test_inspect_equals_transformers_and_numpy(cache, tiny_fixture):
    text = "The bridge over the bay glows at dusk."
    r = invoke(tiny_fixture, "inspect", text, "--json", "--top-k", "4", "--backend", "torch-cpu")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    ids = [t["token_id"] for t in got["tokens"]]
    sae = load_npz(tiny_fixture.sae_path)
    acts = reference_acts(sae, residuals(tiny_fixture.model_dir, ids, tiny_fixture.sae_layer))
    for t, a in zip(got["tokens"], acts):
        want = sorted(np.flatnonzero(a), key=lambda i: (-a[i], i))[:4]
        assert [f["index"] for f in t["top_features"]] == [int(i) for i in want]
        np.testing.assert_allclose([f["activation"] for f in t["top_features"]], a[want], rtol=1e-4, atol=1e-4)
        assert t["l0"] == int((a > 0).sum())
    assert got["tokens"][0]["bos"] and not any(t["bos"] for t in got["tokens"][1:])
    r = invoke(tiny_fixture, "inspect", text, "--top-k", "2", "--backend", "torch-cpu")
    assert r.exit_code == 0 and "top features of" in r.stdout


def test_the_labelers_description_is_searched_and_shown(cache, tiny_fixture):
    from pathlib import Path

    from neuroscope.store import paths

    ns = paths.Namespace.for_local_sae(str(Path(tiny_fixture.model_dir).resolve()), tiny_fixture.sae_path,
                                       tiny_fixture.sae_layer, "none")
    f = paths.autointerp_labels_file("deepseek/deepseek-v3.2", ns)
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"index": 7, "label": "French text",
                             "description": "Fires on French words inside English prose."}) + "\n")
    r = invoke(tiny_fixture, "search", "english pros", "--json")
    assert r.exit_code == 0, r.output
    assert [h["index"] for h in json.loads(r.stdout)["results"]] == [7]
    r = invoke(tiny_fixture, "show", "7", "--json")
    assert json.loads(r.stdout)["description"] == "Fires on French words inside English prose."
    r = invoke(tiny_fixture, "show", "7")
    assert r.exit_code == 0 and "Fires on French words inside English prose." in r.stdout
