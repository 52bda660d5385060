"""A feature's page from the cache: the calibration's statistics, the newest examples run's top windows and
windows across the activation range (with their quantiles); none of them without a calibration or a run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuroscope.calibration import stats as calibration
from neuroscope.config import ServeConfig
from neuroscope.explore.page import Explorer, PageError, parse_index
from neuroscope.labels.autointerp import examples
from neuroscope.labels.autointerp.examples import ExamplesOptions
from neuroscope.labels.autointerp.generate import load_runtime
from neuroscope.labels.chain import LabelChain
from neuroscope.store import paths
from tests.support.calib import write_corpus


def test_page_reads_calibration_and_examples(tiny_fixture, cache, tmp_path):
    config = ServeConfig(model=str(tiny_fixture.model_dir), sae_local_path=str(tiny_fixture.sae_path),
                         sae_layer=tiny_fixture.sae_layer, backend="torch-cpu")
    rt = load_runtime(config, 128, None)
    try:
        opts = ExamplesOptions(corpus_path=str(write_corpus(tmp_path / "corpus", 10)), samples=10, per_feature=6,
                               batch_size=4, max_tokens_per_sample=40, pool=5)
        ex = examples.run(rt, opts).examples
        ns = examples.namespace(rt)
    finally:
        rt.backend.close()
    d_sae = ex.d_sae
    rng = np.random.default_rng(0)
    feats = {k: [float(x) for x in rng.random(d_sae)] for k in ("firing_rate", "mean", "std", "max")}
    cal = {"format": calibration.FORMAT, **calibration.identity(ns, d_sae), "samples": 10, "tokens": 400,
           "features": feats}
    path = paths.calibration_file(ns)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cal))

    chain = LabelChain(d_sae, [])
    explorer = Explorer.for_namespace(chain, rt.info.tokenizer, ns)
    f = int(np.argmax(ex.fired))
    page = explorer.page(f, None)
    assert page["stats"] == {k: feats[k][f] for k in feats}
    assert [e["token_ids"] for e in page["examples"]] == [[int(t) for t in w.tokens] for w in ex.windows(f)]
    assert [e["max"] for e in page["examples"]] == [round(w.value, 6) for w in ex.windows(f)]
    assert page["examples"][0]["tokens"] == [rt.info.tokenizer.decode([int(t)], skip_special_tokens=False)
                                            for t in ex.windows(f)[0].tokens]
    edges, counts = ex.density(f)
    assert page["density"] == {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
    assert sum(page["density"]["counts"]) == ex.fired[f]
    spread = ex.range_windows(f)
    assert len(page["quantile_examples"]) == len(spread) == 6
    assert [e["quantile"] for e in page["quantile_examples"]] == [10, 9, 7, 5, 4, 2]
    assert [e["max"] for e in page["quantile_examples"]] == [round(w.value, 6) for w in spread]
    assert page["neighbours"] is None and page["logits"] is None  # no device part given

    bare = Explorer.for_namespace(chain, rt.info.tokenizer, None).page(f, None)
    assert bare["stats"] is None and bare["density"] is None
    assert bare["examples"] == [] and bare["quantile_examples"] == []
    cal["sae_path"] = "another.npz"  # a calibration of another SAE is not this one's
    path.write_text(json.dumps(cal))
    assert Explorer.for_namespace(chain, rt.info.tokenizer, ns).page(f, None)["stats"] is None


@pytest.mark.parametrize("text,status", [("x", 400), ("-3", 400), ("1e3", 400), ("٣", 400), ("12", 404)])
def test_parse_index_refuses(text, status):
    with pytest.raises(PageError) as exc:
        parse_index(text, 12)
    assert exc.value.status == status
    assert parse_index("#11", 12) == 11 and parse_index(" 0 ", 12) == 0
