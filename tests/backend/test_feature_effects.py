"""A feature's decoder-cosine neighbours and direct logit effects (the feature page), on every backend, against
numpy computed here from the checkpoint's own files (safetensors + the SAE's npz), not through the backend."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neuroscope.core import registry
from neuroscope.core.protocol import ModelSpec
from neuroscope.core.sae import load_npz
from tests.support import explore as ref

BACKENDS = registry.available()
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no backend")

# rows 9 and 4 become copies of row 6 (a three-way tie at cosine 1), row 2 is zero (cosine 0 with everything)
TIED, COPIES, ZERO = 6, (9, 4), 2


def _planted(W_dec):
    W = W_dec.copy()
    for j in COPIES:
        W[j] = W[TIED]
    W[ZERO] = 0.0
    return W


@pytest.fixture(scope="module", params=BACKENDS)
def planted(request, tiny_fixture):
    sae = load_npz(tiny_fixture.sae_path)
    sae = dataclasses.replace(sae, W_dec=_planted(sae.W_dec).astype(np.float32))
    backend = registry.resolve(request.param)()
    backend.load(ModelSpec(str(tiny_fixture.model_dir)), sae, tiny_fixture.sae_layer, top_k=8)
    yield backend
    backend.close()


@pytest.mark.parametrize("index", [0, TIED, ZERO, 17])
def test_effects_equal_numpy(planted, tiny_fixture, index):
    unembed, scale, W_dec = ref.checkpoint_tensors(tiny_fixture)
    W = _planted(W_dec)
    eff = planted.feature_effects(index, neighbours=10, logits=10)
    ids, cos = ref.neighbours(W, index, 10)
    assert eff.neighbour_ids.tolist() == ids
    np.testing.assert_allclose(eff.neighbour_cosines, cos, rtol=1e-4, atol=1e-5)
    pos, pos_v, neg, neg_v = ref.logits(unembed, scale, W, index, 10)
    assert eff.positive_ids.tolist() == pos
    assert eff.negative_ids.tolist() == neg
    np.testing.assert_allclose(eff.positive_values, pos_v, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eff.negative_values, neg_v, rtol=1e-4, atol=1e-5)
    assert index not in eff.neighbour_ids.tolist()


def test_ties_go_to_the_lower_index(planted):
    eff = planted.feature_effects(COPIES[0], neighbours=3, logits=1)
    assert eff.neighbour_ids[:2].tolist() == [4, TIED]  # both at cosine 1: the lower index first
    np.testing.assert_allclose(eff.neighbour_cosines[:2], [1.0, 1.0], rtol=1e-5)


def test_a_zero_direction_has_no_neighbours_and_no_effect(planted, tiny_fixture):
    eff = planted.feature_effects(ZERO, neighbours=5, logits=5)
    assert eff.neighbour_ids.tolist() == [0, 1, 3, 4, 5]
    assert not eff.neighbour_cosines.any()
    assert eff.positive_ids.tolist() == [0, 1, 2, 3, 4] and not eff.positive_values.any()


def test_out_of_range_is_refused(planted):
    with pytest.raises(ValueError, match="out of range"):
        planted.feature_effects(10**6)
