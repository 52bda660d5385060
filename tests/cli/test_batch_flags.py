"""CLI: --max-batch, --prefill-chunk and --max-context reach the config; bad values exit 2 with one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.config import ServeConfig


@pytest.fixture
def captured(monkeypatch) -> list[ServeConfig]:
    configs: list[ServeConfig] = []
    monkeypatch.setattr(cli, "serve", lambda config: configs.append(config) or 0)
    return configs


def test_batch_flags_reach_the_config(captured):
    r = CliRunner().invoke(cli.app, ["serve", "--max-batch", "4", "--prefill-chunk", "128", "--max-context", "2048"])
    assert r.exit_code == 0, r.output
    c = captured[0]
    assert (c.max_batch, c.prefill_chunk, c.max_context) == (4, 128, 2048)


def test_batch_defaults(captured):
    assert CliRunner().invoke(cli.app, ["serve"]).exit_code == 0
    c = captured[0]
    assert (c.max_batch, c.prefill_chunk, c.max_context) == (8, 512, None)


@pytest.mark.parametrize("args", [["--max-batch", "0"], ["--prefill-chunk", "0"], ["--max-context", "1"],
                                  ["--max-batch", "x"]])
def test_bad_batch_values_exit_2(captured, args):
    r = CliRunner().invoke(cli.app, ["serve", *args])
    assert r.exit_code == 2 and not captured
    assert args[0] in r.output


@pytest.mark.parametrize("field,value", [("max_batch", 0), ("prefill_chunk", 0), ("max_context", 1)])
def test_the_config_refuses_bad_batch_values(field, value):
    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')}"):
        ServeConfig(**{field: value}).validate()
