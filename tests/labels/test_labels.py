"""Feature labels: the accepted JSON layouts, the feature_<i> fallback and clear errors."""

from __future__ import annotations

import json

import pytest

from neuroscope.labels.table import LabelError, Labels


def write(tmp_path, data, name="labels.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return p


def test_index_to_label_object(tmp_path):
    labels = Labels.load(write(tmp_path, {"0": "dates", "3": "French text"}), d_sae=5)
    assert labels[0] == "dates" and labels[3] == "French text"
    assert labels.named == 2 and len(labels) == 5
    assert labels.source == str(tmp_path / "labels.json")


def test_labels_wrapper_object(tmp_path):
    labels = Labels.load(write(tmp_path, {"model": "x", "labels": {"2": "code"}}), d_sae=4)
    assert labels[2] == "code" and labels.named == 1


def test_labels_wrapper_with_a_list(tmp_path):
    labels = Labels.load(write(tmp_path, {"labels": ["a", "b"]}), d_sae=3)
    assert (labels[0], labels[1], labels[2]) == ("a", "b", "feature_2")


def test_plain_list_index_is_position(tmp_path):
    labels = Labels.load(write(tmp_path, ["zero", None, "two"]), d_sae=4)
    assert [labels[i] for i in range(4)] == ["zero", "feature_1", "two", "feature_3"]
    assert labels.named == 2


def test_entries_with_label_or_description(tmp_path):
    data = {"0": {"label": "numbers", "score": 0.9}, "1": {"description": "questions"}, "2": {"other": 1}}
    labels = Labels.load(write(tmp_path, data), d_sae=3)
    assert labels[0] == "numbers" and labels[1] == "questions" and labels[2] == "feature_2"


def test_fallback_without_a_file():
    labels = Labels.load(None, d_sae=3)
    assert [labels[i] for i in range(3)] == ["feature_0", "feature_1", "feature_2"]
    assert labels.named == 0 and labels.source == "fallback"


def test_empty_label_falls_back(tmp_path):
    assert Labels.load(write(tmp_path, {"1": ""}), d_sae=2)[1] == "feature_1"


def test_unicode_labels(tmp_path):
    assert Labels.load(write(tmp_path, {"0": "日本語 😀"}), d_sae=1)[0] == "日本語 😀"


def test_as_dict_covers_every_feature(tmp_path):
    labels = Labels.load(write(tmp_path, {"1": "one"}), d_sae=4)
    assert labels.as_dict() == {"0": "feature_0", "1": "one", "2": "feature_2", "3": "feature_3"}


def test_the_tiny_fixture_labels_load(tiny_fixture):
    d_sae = tiny_fixture.shape.d_sae
    labels = Labels.load(tiny_fixture.labels_path, d_sae)
    assert len(labels.as_dict()) == d_sae
    assert labels[0] == "random feature 0" and labels[1] == "feature_1"


# ---------------------------------------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(LabelError) as exc:
        Labels.load(missing, 4)
    assert "not found" in str(exc.value) and str(missing) in str(exc.value)


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe garbage"])
def test_invalid_json(tmp_path, text):
    p = tmp_path / "labels.json"
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(LabelError) as exc:
        Labels.load(p, 4)
    assert "not valid JSON" in str(exc.value) and str(p) in str(exc.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(LabelError):
        Labels.load(tmp_path, 4)


def test_non_integer_key(tmp_path):
    with pytest.raises(LabelError) as exc:
        Labels.load(write(tmp_path, {"0": "ok", "dates": "x"}), 4)
    assert "'dates'" in str(exc.value) and "feature index" in str(exc.value)


@pytest.mark.parametrize("key", ["4", "100", "-1"])
def test_index_out_of_range(tmp_path, key):
    with pytest.raises(LabelError) as exc:
        Labels.load(write(tmp_path, {key: "x"}), 4)
    assert f"feature {key}" in str(exc.value) and "4 features" in str(exc.value)


def test_list_longer_than_the_sae(tmp_path):
    with pytest.raises(LabelError, match="out of range"):
        Labels.load(write(tmp_path, ["a", "b", "c"]), 2)


@pytest.mark.parametrize("value", [5, ["a"], True])
def test_non_string_label(tmp_path, value):
    with pytest.raises(LabelError) as exc:
        Labels.load(write(tmp_path, {"2": value}), 4)
    assert "feature 2" in str(exc.value) and "not a string" in str(exc.value)


@pytest.mark.parametrize("data", [42, "just a string", None])
def test_wrong_top_level_type(tmp_path, data):
    with pytest.raises(LabelError, match="object"):
        Labels.load(write(tmp_path, json.dumps(data)), 4)
