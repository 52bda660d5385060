"""Feature steering on every backend available here, against an independent reference.

The reference is transformers' own Gemma-2 with a forward hook on ``model.model.layers[N]`` that applies the
steering rule in numpy (``tests/support/reference.py``), greedy-decoded by recomputing the whole sequence for
every token (no cache). Each backend, through the one decode loop, must produce the same greedy tokens and
the same per-token top-k features — for add, clamp and ablate, positions ``all`` and ``generated``, for 64
tokens, well past the tiny model's sliding window (16), so the steered KV cache is exercised on local and
global layers alike.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from neuroscope.core import registry
from neuroscope.core.decode import generate
from neuroscope.core.protocol import GenerationParams, SteerFeature, Steering
from neuroscope.core.sae import load_npz
from tests.support.reference import assert_topk_matches, load_backend, reference_acts, steered_greedy

BACKENDS = registry.available()
K = 8
N_TOKENS = 64
PROMPT = "What is the capital of France? Tell me about the river and the mill."

# (index, mode, value). On this prompt features 193, 2, 244, 5 and 67 fire at many positions (193 at 35
# of the 98), so clamping or ablating them changes the residual where they fire, not only where they don't.
CASES = {
    "add": [(193, "add", 8.0)],
    "clamp": [(2, "clamp", 6.0)],
    "ablate": [(5, "ablate", None)],
    "mixed": [(193, "add", -4.0), (2, "clamp", 3.0), (5, "ablate", None), (67, "add", 2.5)],
}
POSITIONS = ("all", "generated")


def _steering(features, positions: str) -> Steering:
    return Steering(
        tuple(SteerFeature(i, m, 0.0 if v is None else v) for i, m, v in features), positions  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def prompt_ids(tiny_fixture):
    from neuroscope.core.checkpoint import load_tokenizer

    tok = load_tokenizer(tiny_fixture.model_dir)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > 16, "the prompt must be longer than the sliding window"
    return ids


@functools.lru_cache(maxsize=None)
def _reference(fx, case: str, positions: str, prompt: tuple[int, ...]):
    """Computed once per case and shared by every backend."""
    sae = load_npz(fx.sae_path)
    tokens, resid = steered_greedy(fx.model_dir, sae, fx.sae_layer, list(prompt), CASES[case], positions, N_TOKENS)
    return tokens, reference_acts(sae, resid)


def _run(backend, ids, steering=None, n=N_TOKENS, **kw):
    return list(generate(backend, ids, GenerationParams(max_tokens=n, steering=steering, **kw)))


@pytest.fixture(scope="module")
def unsteered(loaded, prompt_ids):
    return _run(loaded[0], prompt_ids, prompt_features=True)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_steering_matches_the_transformers_reference(loaded, prompt_ids, tiny_fixture, unsteered, case, positions):
    backend, _, sae = loaded
    want_tokens, acts = _reference(tiny_fixture, case, positions, tuple(prompt_ids))
    steps = _run(backend, prompt_ids, _steering(CASES[case], positions), prompt_features=True)
    prompt = [s for s in steps if s.prompt]
    gen = [s for s in steps if not s.prompt]
    n = len(prompt_ids)
    assert len(gen) == N_TOKENS and n + N_TOKENS - 1 >= 16 + 48  # decoding runs >= 48 positions past the window
    assert [s.token_id for s in gen] == want_tokens
    # every prompt position has its features under steering too (or the loops below would check nothing)
    assert [s.position for s in prompt] == list(range(n))
    for s in prompt:  # steered prompt positions with "all", untouched ones with "generated"
        assert_topk_matches(s, acts[s.position], K)
    for i, s in enumerate(gen):
        assert s.position == n + i - 1
        assert_topk_matches(s, acts[s.position], K)
    # the steering made a difference a user can see: the text changed
    base = [s.token_id for s in unsteered if not s.prompt]
    assert want_tokens != base
    if positions == "generated":
        # the prefill is unsteered: the prompt's features and the first generated token are the plain ones
        for got, plain in zip(prompt, [s for s in unsteered if s.prompt]):
            np.testing.assert_array_equal(got.feature_ids, plain.feature_ids)
            np.testing.assert_array_equal(got.feature_values, plain.feature_values)
        assert gen[0].token_id == base[0]
        np.testing.assert_array_equal(gen[0].feature_values, unsteered[n].feature_values)


def test_a_large_add_changes_the_text_from_the_first_token(loaded, prompt_ids, unsteered):
    backend, info, _ = loaded
    steered = _run(backend, prompt_ids, _steering([(193, "add", 8.0)], "all"), n=20)
    plain = [s.token_id for s in unsteered if not s.prompt][:20]
    got = [s.token_id for s in steered]
    assert got[0] != plain[0]
    assert info.tokenizer.decode(got) != info.tokenizer.decode(plain)
    # and the feature stream shows it: the added feature (about +8 on its own pre-activation) now leads at
    # most positions, where unsteered it leads at few
    leads = lambda steps: sum(int(s.feature_ids[0]) == 193 for s in steps if len(s.feature_ids))  # noqa: E731
    assert leads(steered) >= 14 > leads([s for s in unsteered if not s.prompt][:20])


def test_clamping_a_feature_to_its_own_activation_is_a_no_op(loaded, prompt_ids, unsteered):
    """At the first decode position (steered with ``generated``) clamp a firing feature to exactly the
    activation it has there: the residual is unchanged, so are the token it writes and its features."""
    backend, _, _ = loaded
    n = len(prompt_ids)
    at = unsteered[n + 1]  # the token chosen at position n, the first decode step
    assert at.position == n and len(at.feature_ids) >= 2
    index, value = int(at.feature_ids[1]), float(at.feature_values[1])
    steered = _run(backend, prompt_ids, Steering((SteerFeature(index, "clamp", value),), "generated"), n=2)
    assert [s.token_id for s in steered] == [s.token_id for s in unsteered[n : n + 2]]
    np.testing.assert_array_equal(steered[1].feature_ids, at.feature_ids)
    np.testing.assert_allclose(steered[1].feature_values, at.feature_values, rtol=1e-5, atol=1e-5)
    assert steered[1].l0 == at.l0


def test_clamping_or_ablating_silent_features_to_zero_changes_nothing(loaded, prompt_ids, unsteered):
    """Features that fire nowhere in this run, ablated or clamped to 0: every residual stays bit-identical."""
    backend, _, sae = loaded
    fired = set()
    for s in unsteered:
        fired |= set(s.feature_ids.tolist())
    # any feature whose activation never reaches the top-k may still fire below it: take ones that never fire
    silent = [i for i in (87, 91, 159, 189) if i not in fired]
    assert len(silent) >= 2
    spec = Steering((SteerFeature(silent[0], "ablate"), SteerFeature(silent[1], "clamp", 0.0)), "all")
    steered = _run(backend, prompt_ids, spec, prompt_features=True)
    assert [s.token_id for s in steered] == [s.token_id for s in unsteered]
    for a, b in zip(steered, unsteered):
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        np.testing.assert_array_equal(a.feature_values, b.feature_values)
        assert a.l0 == b.l0


def test_a_steered_request_leaves_nothing_behind(loaded, prompt_ids, unsteered):
    backend, _, _ = loaded
    before = {k: id(v) for k, v in vars(backend).items()}
    sae_before = {k: id(v) for k, v in vars(backend.sae).items()}
    steered = _run(backend, prompt_ids, _steering(CASES["mixed"], "all"), prompt_features=True)
    assert [s.token_id for s in steered] != [s.token_id for s in unsteered]
    after = _run(backend, prompt_ids, prompt_features=True)
    assert [s.token_id for s in after] == [s.token_id for s in unsteered]
    for a, b in zip(after, unsteered):
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        np.testing.assert_array_equal(a.feature_values, b.feature_values)
    # nothing of the request was kept on the backend or its SAE
    assert {k: id(v) for k, v in vars(backend).items()} == before
    assert {k: id(v) for k, v in vars(backend.sae).items()} == sae_before


def test_interleaved_requests_keep_their_own_steering(loaded, prompt_ids):
    """Two requests decoded in lockstep on one backend (each state from its own prefill) equal their solo
    runs: a request's steering lives in its own state only."""
    backend, _, _ = loaded
    specs = [_steering(CASES["add"], "all"), None, _steering(CASES["clamp"], "generated")]
    solo = [[(s.token_id, s.feature_ids.tolist()) for s in _run(backend, prompt_ids, spec, n=24)] for spec in specs]
    gens = [generate(backend, prompt_ids, GenerationParams(max_tokens=24, steering=spec)) for spec in specs]
    together: list[list] = [[] for _ in specs]
    for _ in range(24):
        for out, gen in zip(together, gens):
            s = next(gen)
            out.append((s.token_id, s.feature_ids.tolist()))
    assert together == solo
    assert solo[0] != solo[1] != solo[2]


@pytest.mark.parametrize("name", BACKENDS or [pytest.param(None, marks=pytest.mark.skip("no backend"))])
def test_a_bfloat16_sae_steers_with_a_bfloat16_decoder(name, tiny_fixture, prompt_ids):
    """``--sae-dtype bfloat16`` stores W_dec in bf16 next to W_enc: each decoder direction is rounded by up
    to ~0.4 %, so the steered features stay within about a percent of the float32 SAE's."""
    from neuroscope.core.protocol import ModelSpec

    spec = _steering(CASES["mixed"], "all")
    runs = {}
    for dtype in ("float32", "bfloat16"):
        backend = registry.resolve(name)()
        backend.load(ModelSpec(str(tiny_fixture.model_dir)), load_npz(tiny_fixture.sae_path), tiny_fixture.sae_layer,
                     top_k=K, sae_dtype=dtype)
        try:
            assert str(backend.sae.W_dec.dtype).endswith(dtype)  # torch.bfloat16, mlx.core.bfloat16, ...
            runs[dtype] = _run(backend, prompt_ids, spec, n=1, prompt_features=True)
        finally:
            backend.close()
    same_top = 0
    for a, b in zip(runs["bfloat16"], runs["float32"]):
        same_top += int(a.feature_ids[0]) == int(b.feature_ids[0])
        want = dict(zip(b.feature_ids.tolist(), b.feature_values.tolist()))
        common = [(v, want[i]) for i, v in zip(a.feature_ids.tolist(), a.feature_values.tolist()) if i in want]
        got, ref = np.array(common).T
        np.testing.assert_allclose(got, ref, rtol=2e-2, atol=5e-2)
    assert same_top >= 0.9 * len(runs["float32"])


@pytest.mark.parametrize(
    "features,match",
    [
        ([SteerFeature(256, "add", 1.0)], "out of range"),
        ([SteerFeature(-1, "add", 1.0)], "out of range"),
        ([SteerFeature(3, "add", 1.0), SteerFeature(3, "clamp", 0.0)], "twice"),
        ([SteerFeature(3, "add", float("nan"))], "not finite"),
        ([SteerFeature(3, "ablate", 2.0)], "no value"),
        ([SteerFeature(i, "add", 1.0) for i in range(65)], "at most 64"),
    ],
    ids=["index-too-big", "negative-index", "duplicate", "nan", "ablate-value", "too-many"],
)
def test_the_backend_refuses_a_spec_it_cannot_run(loaded, prompt_ids, features, match):
    """The server validates first; the backend boundary still refuses (an index past d_sae would be an
    out-of-bounds gather on the device)."""
    backend, _, _ = loaded
    with pytest.raises(ValueError, match=match):
        _run(backend, prompt_ids, Steering(tuple(features)), n=2)
    assert len(_run(backend, prompt_ids, n=2)) == 2  # and it keeps serving


@pytest.mark.skipif(not {"torch-cpu", "mlx"} <= set(BACKENDS), reason="needs both torch-cpu and mlx")
@pytest.mark.parametrize("positions", POSITIONS)
def test_torch_and_mlx_steer_alike(tiny_fixture, prompt_ids, positions):
    from tests.backend.test_mlx_parity import assert_same_steps

    spec = _steering(CASES["mixed"], positions)
    runs = []
    for name in ("torch-cpu", "mlx"):
        backend, _, _ = load_backend(name, tiny_fixture, top_k=32)
        try:
            runs.append(_run(backend, prompt_ids, spec, n=96, prompt_features=True))
        finally:
            backend.close()
    assert_same_steps(runs[1], runs[0])
