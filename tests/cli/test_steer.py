"""``neuroscope steer``: a steered and an unsteered greedy generation side by side, through the real loading path."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.core import registry
from neuroscope.core.decode import generate
from neuroscope.core.protocol import GenerationParams, SteerFeature, Steering
from tests.support.cli import error_line
from tests.support.reference import load_backend

BACKENDS = registry.available()
PROMPT = "What is the capital of France?"


@pytest.fixture
def steer(tiny_fixture):
    def _steer(*args, backend: str = "torch-cpu"):
        result = CliRunner().invoke(cli.app, [
            "steer", PROMPT, "--backend", backend, "--model", str(tiny_fixture.model_dir),
            "--sae-local-path", str(tiny_fixture.sae_path), "--sae-layer", str(tiny_fixture.sae_layer), *args,
        ], env={"COLUMNS": "200"})
        return result

    return _steer


def _direct(tiny_fixture, name, steering, n):
    backend, info, _ = load_backend(name, tiny_fixture, top_k=32)
    try:
        text = info.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                                  add_generation_prompt=True)
        ids = info.tokenizer.encode(text, add_special_tokens=False)
        params = GenerationParams(max_tokens=n, eos_token_ids=frozenset(info.eos_token_ids), steering=steering)
        return [s.token_id for s in generate(backend, ids, params) if s.finish_reason != "stop"]
    finally:
        backend.close()


@pytest.mark.parametrize("name", BACKENDS or [pytest.param(None, marks=pytest.mark.skip("no backend"))])
def test_json_output_equals_the_two_generations(steer, tiny_fixture, name):
    result = steer("-f", "193:add:8", "-f", "163:ablate", "--max-tokens", "24", "--json", backend=name)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    spec = Steering((SteerFeature(193, "add", 8.0), SteerFeature(163, "ablate")))
    assert out["steering"] == spec.to_json()
    assert out["unsteered"]["token_ids"] == _direct(tiny_fixture, name, None, 24)
    assert out["steered"]["token_ids"] == _direct(tiny_fixture, name, spec, 24)
    assert out["steered"]["text"] != out["unsteered"]["text"]
    assert out["backend"] == name and out["layer"] == tiny_fixture.sae_layer
    rows = out["features"]
    assert len(rows) == 10
    changes = [abs(r["change"]) for r in rows]
    assert changes == sorted(changes, reverse=True)
    assert rows[0]["index"] == 193 and rows[0]["steered_by"] == "add" and rows[0]["change"] > 5
    (ablated,) = [r for r in rows if r["index"] == 163]
    assert ablated["steered_by"] == "ablate" and ablated["change"] < 0


def test_tables_show_both_texts_and_the_changed_features(steer):
    result = steer("-f", "193:add:8", "--max-tokens", "12", "--top", "5")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "unsteered (12 tokens, length)" in out and "steered (12 tokens, length)" in out
    assert "Features that changed most" in out
    assert "193:add:8 (all positions)" in out
    row = next(line for line in out.splitlines() if "feature_193" in line)
    assert "add 8" in row and "+" in row


def test_generated_positions_keep_the_first_token(steer):
    result = steer("-f", "193:add:8", "--positions", "generated", "--max-tokens", "8", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["steering"]["positions"] == "generated"
    assert out["steered"]["token_ids"][0] == out["unsteered"]["token_ids"][0]
    assert out["steered"]["token_ids"] != out["unsteered"]["token_ids"]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("193", "expected INDEX:MODE[:VALUE]"),
        ("x:add:1", "is not an integer"),
        ("-3:add:1", "must be >= 0"),
        ("3:scale:2", "unknown mode 'scale'"),
        ("3:add", "add needs a value"),
        ("3:clamp:big", "is not a number"),
        ("3:add:nan", "finite"),
        ("3:add:1e4", "between -1000 and 1000"),
        ("3:ablate:0", "ablate takes no value"),
    ],
)
def test_a_bad_feature_is_exit_2_before_loading(spec, message):
    # no model options: a bad --feature fails before anything is loaded or fetched
    result = CliRunner().invoke(cli.app, ["steer", PROMPT, "-f", spec, "--backend", "torch-cpu"])
    assert message in error_line(result, 2)
    assert "Traceback" not in result.output


def test_an_index_beyond_the_sae_and_a_duplicate_are_exit_2(steer):
    result = steer("-f", "256:add:1")
    assert result.exit_code == 2 and "the SAE has 256 features (0..255)" in result.stderr
    result = steer("-f", "3:add:1", "-f", "3:clamp:0")
    assert result.exit_code == 2 and "feature 3 is given twice" in result.stderr


def test_more_than_64_features_is_exit_2(steer):
    result = steer(*[arg for i in range(65) for arg in ("-f", f"{i}:add:1")])
    assert result.exit_code == 2 and "at most 64" in result.stderr


def test_a_feature_is_required():
    result = CliRunner().invoke(cli.app, ["steer", PROMPT])
    assert result.exit_code == 2 and "--feature" in result.output


def test_demo(monkeypatch, tmp_path):
    monkeypatch.setenv("NEUROSCOPE_CACHE", str(tmp_path))
    result = CliRunner().invoke(cli.app, ["steer", PROMPT, "--demo", "--backend", "torch-cpu", "-f", "193:add:8",
                                          "--max-tokens", "6", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["model"] == "neuroscope-demo" and out["steered"]["token_ids"] != out["unsteered"]["token_ids"]
    # the demo's labels file names the even features
    assert all(r["label"] == (f"random feature {r['index']}" if r["index"] % 2 == 0 else f"feature_{r['index']}")
               for r in out["features"])


def test_help_lists_steer():
    result = CliRunner().invoke(cli.app, ["--help"])
    assert result.exit_code == 0 and "steer" in result.stdout
