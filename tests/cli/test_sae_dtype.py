"""``--sae-dtype`` on the command line: the value reaches the config ``serve()`` gets; a bad one exits 2 with a
one-line message. (That it reaches the backend is checked on a real process in tests/server/test_serve_flags.py.)"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli

WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


@pytest.mark.parametrize(("args", "expected"), [([], "float32"), (["--sae-dtype", "bfloat16"], "bfloat16"),
                                                (["--sae-dtype", "float32"], "float32")])
def test_sae_dtype_reaches_the_config(captured, args, expected):
    result = CliRunner().invoke(cli.app, ["serve", "--demo", *args])
    assert result.exit_code == 0, result.output
    (config,) = captured
    assert config.sae_dtype == expected


@pytest.mark.parametrize("bad", ["int8", "float16", "bf16"])
def test_bad_sae_dtype_exits_2_with_one_line(captured, bad):
    result = CliRunner().invoke(cli.app, ["serve", "--sae-dtype", bad], env=WIDE)
    assert result.exit_code == 2, result.output
    assert captured == []
    errors = [line for line in result.stderr.splitlines() if "Invalid value" in line]
    assert len(errors) == 1, result.stderr
    assert "--sae-dtype" in errors[0] and repr(bad) in errors[0]
    assert "float32" in errors[0] and "bfloat16" in errors[0], "the message names the accepted values"
    assert "Traceback" not in result.output
