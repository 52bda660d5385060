"""The steering spec: what it means for a position, how it is echoed, and reading it from a body or a flag."""

from __future__ import annotations

import numpy as np
import pytest

from neuroscope.core.protocol import SteerFeature, Steering
from neuroscope.core.steering import SteeringError, parse_feature_option, parse_steering, steering_from_options


def test_which_positions_are_steered():
    spec = Steering((SteerFeature(1, "add", 2.0),))
    assert spec.positions == "all"
    assert all(spec.steers(p, prompt_len=10) for p in (0, 9, 10, 50))
    gen = Steering((SteerFeature(1, "add", 2.0),), "generated")
    assert [gen.steers(p, prompt_len=10) for p in (0, 9, 10, 50)] == [False, False, True, True]


def test_backend_inputs_give_each_mode_its_coefficient():
    """coefficient = values - clamp * a: add -> value, clamp -> value - a, ablate -> -a."""
    spec = Steering((SteerFeature(4, "add", 8.0), SteerFeature(9, "clamp", 3.0), SteerFeature(2, "ablate")))
    ids, values, clamp = spec.arrays()
    assert ids.tolist() == [4, 9, 2] and ids.dtype == np.int64
    a = np.array([5.0, 5.0, 5.0], np.float32)
    assert (values - clamp * a).tolist() == [8.0, -2.0, -5.0]


def test_the_echo_leaves_out_ablates_value():
    spec = Steering((SteerFeature(4, "add", 8.0), SteerFeature(2, "ablate")), "generated")
    assert spec.to_json() == {
        "features": [{"index": 4, "mode": "add", "value": 8.0}, {"index": 2, "mode": "ablate"}],
        "positions": "generated",
    }


def test_a_body_is_read_with_defaults():
    spec = parse_steering({"features": [{"index": 4, "mode": "add", "value": 8}, {"index": 2, "mode": "ablate"},
                                        {"index": 0, "mode": "clamp", "value": -1000}]}, d_sae=16)
    assert spec == Steering((SteerFeature(4, "add", 8.0), SteerFeature(2, "ablate", 0.0),
                             SteerFeature(0, "clamp", -1000.0)), "all")
    assert isinstance(spec.features[0].value, float)
    assert parse_steering(None, d_sae=16) is None
    assert parse_steering({"features": []}, d_sae=16) is None  # no features: an ordinary request
    assert parse_steering({"features": [{"index": 15, "mode": "ablate"}], "positions": "generated"}, 16).positions == (
        "generated")


@pytest.mark.parametrize("index,ok", [(0, True), (15, True), (16, False), (-1, False)])
def test_the_index_range_is_the_sae_width(index, ok):
    body = {"features": [{"index": index, "mode": "add", "value": 1}]}
    if ok:
        assert parse_steering(body, d_sae=16).features[0].index == index
    else:
        with pytest.raises(SteeringError) as exc:
            parse_steering(body, d_sae=16)
        assert exc.value.param == "steering.features[0].index" and exc.value.code == "invalid_value"


@pytest.mark.parametrize(
    "text,feature",
    [
        ("4521:add:8", SteerFeature(4521, "add", 8.0)),
        ("12:clamp:0", SteerFeature(12, "clamp", 0.0)),
        ("7:ablate", SteerFeature(7, "ablate", 0.0)),
        ("3:add:-2.5", SteerFeature(3, "add", -2.5)),
        (" 3 : clamp : 1e2", SteerFeature(3, "clamp", 100.0)),
    ],
)
def test_a_feature_flag(text, feature):
    assert parse_feature_option(text) == feature


def test_flags_become_a_spec_once_the_width_is_known():
    features = [parse_feature_option("3:add:1"), parse_feature_option("5:ablate")]
    assert steering_from_options(features, "generated", 16) == Steering(tuple(features), "generated")
    with pytest.raises(SteeringError, match="16 features"):
        steering_from_options([parse_feature_option("16:add:1")], "all", 16)
    for given in ("999:add:4", "999:clamp:-2.5", "999:ablate"):  # the flag as given, value included
        with pytest.raises(SteeringError) as info:
            steering_from_options([parse_feature_option(given)], "all", 16)
        assert str(info.value.message).startswith(f"--feature {given}: index 999 is out of range"), info.value.message
    with pytest.raises(SteeringError, match="at least one"):
        steering_from_options([], "all", 16)
