"""The ``neuroscope`` command line: help, version, flag validation and the ServeConfig it builds."""

from __future__ import annotations

import os
import re
import sys

import pytest
from typer.testing import CliRunner

import neuroscope
from neuroscope.cli import serve as cli
from neuroscope.config import ServeConfig
from neuroscope.runtime import StartupError
from tests.support.cli import error_line

SERVE_OPTIONS = [
    "--model", "--sae", "--sae-path", "--sae-local-path", "--sae-layer", "--top-k", "--port", "--features-port",
    "--backend", "--host", "--dtype", "--sae-input-norm", "--labels-path", "--demo", "--allowed-origins", "--api-key",
]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke_serve(runner, captured, *args) -> ServeConfig:
    result = runner.invoke(cli.app, ["serve", *args])
    assert result.exit_code == 0, result.output
    assert len(captured) == 1
    return captured[0]


# ---------------------------------------------------------------------------------------------- help, version
def test_help_lists_the_commands(runner):
    result = runner.invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    assert re.search(r"\bserve\b", result.stdout) and re.search(r"\bbackends\b", result.stdout)


def test_no_arguments_shows_help(runner):
    result = runner.invoke(cli.app, [])
    assert "serve" in result.output and "Usage" in result.output


def test_serve_help_shows_every_option(runner):
    result = runner.invoke(cli.app, ["serve", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0
    shown = set(re.findall(r"--[a-z][a-z-]*", result.stdout))
    missing = [opt for opt in SERVE_OPTIONS if opt not in shown]
    assert not missing, f"serve --help lacks {missing}"


def test_version(runner):
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"neuroscope {neuroscope.__version__}"


@pytest.mark.parametrize("args", [["--bogus"], ["serve", "--bogus"], ["serve", "--port", "http"],
                                  ["serve", "--top-k", "0"], ["serve", "--port", "70000"],
                                  ["serve", "--sae-input-norm", "layer"], ["serve", "--dtype", "int8"]])
def test_bad_flags_exit_2(runner, captured, args):
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert captured == []


def test_same_port_twice_exits_2(runner, captured):
    result = runner.invoke(cli.app, ["serve", "--port", "9000", "--features-port", "9000"])
    assert result.exit_code == 2
    assert "--port and --features-port must differ" in result.stderr
    assert captured == []


def test_both_ports_zero_is_allowed(runner, captured):
    cfg = invoke_serve(runner, captured, "--port", "0", "--features-port", "0")
    assert (cfg.port, cfg.features_port) == (0, 0)


def test_unknown_log_level_exits_2(runner, captured):
    result = runner.invoke(cli.app, ["serve", "--log-level", "loud"])
    assert result.exit_code == 2 and "loud" in result.stderr
    assert captured == []


# ---------------------------------------------------------------------------------------------- real paths
def test_unknown_backend_fails_with_one_line(runner):
    # the real serve path: the backend is resolved before anything is loaded or fetched
    result = runner.invoke(cli.app, ["serve", "--backend", "nope"])
    line = error_line(result, 1)
    assert "'nope'" in line
    from neuroscope.core import registry

    for name in registry.available() or ["none"]:
        assert name in line
    assert "Traceback" not in result.output


def test_backends_lists_torch_cpu_as_available(runner):
    pytest.importorskip("torch")
    result = runner.invoke(cli.app, ["backends"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) >= 2 and cells[0] in ("mlx", "torch-cuda", "torch-cpu"):
            rows[cells[0]] = cells[1]
    assert set(rows) == {"mlx", "torch-cuda", "torch-cpu"}
    assert rows["torch-cpu"] == "yes"


# ---------------------------------------------------------------------------------------------- config
def test_defaults(runner, captured):
    # a bare `neuroscope serve` may fall back to the demo when the default model cannot be fetched
    cfg = invoke_serve(runner, captured)
    assert cfg.model == "google/gemma-2-2b-it"
    assert cfg.sae == "google/gemma-scope-2b-pt-res"
    assert cfg.sae_path == "layer_20/width_16k/average_l0_71/params.npz"
    assert cfg.sae_local_path is None
    assert cfg.sae_layer == 20 and cfg.top_k == 10  # the default SAE from the registry names its layer
    assert (cfg.port, cfg.features_port, cfg.host) == (8080, 8081, "127.0.0.1")
    assert cfg.backend == "auto" and cfg.dtype is None and cfg.sae_input_norm == "none"
    assert cfg.labels_path is None and cfg.max_tokens == 1024
    assert cfg.demo is False and cfg.demo_fallback is True


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "google/gemma-2-2b-it"],  # explicitly named, even with the default value
        ["--model", "google/gemma-3-1b-it"],  # another model: its own default SAE
        ["--sae", "google/gemma-scope-2b-pt-res"],  # the default's repo: its default file
        ["--sae-path", "layer_12/params.npz"],
        ["--sae-local-path", "/tmp/params.npz"],
    ],
)
def test_naming_a_model_or_sae_turns_the_demo_fallback_off(runner, captured, args):
    cfg = invoke_serve(runner, captured, *args)
    assert cfg.demo_fallback is False and cfg.demo is False


def test_other_options_keep_the_demo_fallback(runner, captured):
    cfg = invoke_serve(runner, captured, "--port", "9001", "--top-k", "5", "--backend", "torch-cpu")
    assert cfg.demo_fallback is True


def test_demo(runner, captured):
    cfg = invoke_serve(runner, captured, "--demo")
    assert cfg.demo is True and cfg.demo_fallback is False


def test_every_option_reaches_the_config(runner, captured, tmp_path):
    cfg = invoke_serve(
        runner, captured,
        "--model", "/m", "--sae", "o/s", "--sae-path", "p.npz", "--sae-local-path", str(tmp_path / "sae.npz"),
        "--sae-layer", "3", "--top-k", "7", "--port", "1234", "--features-port", "1235", "--backend", "torch-cpu",
        "--host", "0.0.0.0", "--dtype", "bfloat16", "--sae-input-norm", "rms", "--labels-path",
        str(tmp_path / "l.json"), "--max-tokens", "64", "--allowed-origins", "https://a.example, http://b.example:*",
        "--api-key", "k3y",
    )
    assert cfg == ServeConfig(
        model="/m", sae="o/s", sae_path="p.npz", sae_local_path=str(tmp_path / "sae.npz"), sae_layer=3, top_k=7,
        host="0.0.0.0", port=1234, features_port=1235, backend="torch-cpu", dtype="bfloat16",
        sae_input_norm="rms", labels_path=str(tmp_path / "l.json"), demo=False, max_tokens=64, demo_fallback=False,
        allowed_origins=("https://a.example", "http://b.example:*"), api_key="k3y",
    )


def test_api_key_from_the_environment(runner, captured, monkeypatch):
    monkeypatch.setenv("NEUROSCOPE_API_KEY", "from-env")
    cfg = invoke_serve(runner, captured)
    assert cfg.api_key == "from-env"
    assert "from-env" not in repr(cfg)  # a config printed in a log or traceback does not show the key


def test_no_api_key_and_loopback_origins_by_default(runner, captured, monkeypatch):
    monkeypatch.delenv("NEUROSCOPE_API_KEY", raising=False)
    cfg = invoke_serve(runner, captured)
    assert cfg.api_key is None and cfg.allowed_origins == ()


@pytest.mark.parametrize("args,message", [
    (["--allowed-origins", "example.com"], "'example.com' is not an origin"),
    (["--allowed-origins", "ftp://example.com"], "'ftp://example.com' is not an origin"),
    (["--allowed-origins", "http://example.com/app"], "is not an origin"),
    (["--allowed-origins", "http://example.com:99999"], "is not an origin"),
    (["--api-key", ""], "must not be empty"),
    (["--api-key", "two words"], "without spaces"),
    (["--allowed-hosts", "proxy.example:8080"], "'proxy.example:8080' is not a host name"),
])
def test_bad_access_flags_exit_2(runner, captured, args, message):
    result = runner.invoke(cli.app, ["serve", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert captured == []


def test_startup_error_exits_1_with_the_message(runner, monkeypatch):
    # the message is printed as it is: square brackets (an install hint) are not taken for markup
    message = "backend 'mlx' is not available; to use it: pip install 'neuroscope[mlx]' [or mlx[cpu]]"

    def failing_serve(config):
        raise StartupError(message)

    monkeypatch.setattr(cli, "serve", failing_serve)
    result = runner.invoke(cli.app, ["serve"])
    assert result.exit_code == 1
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


def test_serve_exit_code_is_passed_on(runner, monkeypatch):
    monkeypatch.setattr(cli, "serve", lambda config: 3)
    assert runner.invoke(cli.app, ["serve"]).exit_code == 3


# ---------------------------------------------------------------------------------------------- .env
def run_main(monkeypatch, *args) -> int:
    monkeypatch.setattr(sys, "argv", ["neuroscope", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code


def test_main_loads_dotenv_from_the_working_directory(monkeypatch, tmp_path):
    # register both variables with monkeypatch so whatever .env sets is undone after the test
    for name in ("NEUROSCOPE_TEST_FROM_DOTENV", "NEUROSCOPE_TEST_ALREADY_SET"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    monkeypatch.setenv("NEUROSCOPE_TEST_ALREADY_SET", "from-shell")
    (tmp_path / ".env").write_text("NEUROSCOPE_TEST_FROM_DOTENV=hello\nNEUROSCOPE_TEST_ALREADY_SET=from-dotenv\n")
    monkeypatch.chdir(tmp_path)
    seen = {}

    def fake_serve(config):
        seen["dotenv"] = os.environ.get("NEUROSCOPE_TEST_FROM_DOTENV")
        seen["shell"] = os.environ.get("NEUROSCOPE_TEST_ALREADY_SET")
        return 0

    monkeypatch.setattr(cli, "serve", fake_serve)
    assert run_main(monkeypatch, "serve") == 0
    assert seen == {"dotenv": "hello", "shell": "from-shell"}  # .env does not override the environment


def test_main_without_dotenv(monkeypatch, tmp_path, captured):
    monkeypatch.chdir(tmp_path)
    assert run_main(monkeypatch, "serve", "--top-k", "3") == 0
    assert captured[0].top_k == 3


# ---------------------------------------------------------------------------------------------- labels
def test_label_options_reach_the_config(runner, captured, monkeypatch):
    monkeypatch.delenv("LABELER_MODEL", raising=False)
    cfg = invoke_serve(runner, captured)
    assert (cfg.labeler, cfg.label_threshold, cfg.neuronpedia) == (None, 0.5, True)
    captured.clear()
    cfg = invoke_serve(runner, captured, "--labeler", "anthropic/claude-haiku", "--label-threshold", "0.7",
                       "--no-neuronpedia")
    assert (cfg.labeler, cfg.label_threshold, cfg.neuronpedia) == ("anthropic/claude-haiku", 0.7, False)
    captured.clear()
    monkeypatch.setenv("LABELER_MODEL", "from/env")
    assert invoke_serve(runner, captured).labeler == "from/env"


def test_label_threshold_out_of_range(runner):
    result = runner.invoke(cli.app, ["serve", "--label-threshold", "1.5"])
    assert result.exit_code == 2
