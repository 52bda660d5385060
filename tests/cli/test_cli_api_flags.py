"""CLI: --max-queue and --served-model-name, --demo refusing model/SAE flags, messages with brackets printed
literally, and readable help."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.core import registry


def test_max_queue_and_served_model_names_reach_the_config(captured):
    r = CliRunner().invoke(cli.app, ["serve", "--max-queue", "3", "--served-model-name", "gemma-2-2b-it",
                                     "--served-model-name", "g2"])
    assert r.exit_code == 0, r.output
    assert captured[0].max_queue == 3 and captured[0].served_model_names == ("gemma-2-2b-it", "g2")


def test_defaults(captured):
    assert CliRunner().invoke(cli.app, ["serve"]).exit_code == 0
    assert captured[0].max_queue == 64 and captured[0].served_model_names == ()


@pytest.mark.parametrize("args", [["--max-queue", "-1"], ["--served-model-name", " "]])
def test_bad_values_exit_2(captured, args):
    r = CliRunner().invoke(cli.app, ["serve", *args])
    assert r.exit_code == 2 and not captured


@pytest.mark.parametrize("flag,value", [("--model", "x/y"), ("--sae", "a/b"), ("--sae-path", "p.npz"),
                                        ("--sae-local-path", "s.npz"), ("--sae-layer", "3")])
def test_demo_with_model_or_sae_flags_is_an_error(captured, flag, value):
    r = CliRunner().invoke(cli.app, ["serve", "--demo", flag, value])
    assert r.exit_code == 2 and not captured
    assert "--demo" in r.output and flag in r.output


def test_demo_with_other_flags_is_fine(captured):
    r = CliRunner().invoke(cli.app, ["serve", "--demo", "--port", "9000", "--top-k", "3"])
    assert r.exit_code == 0 and captured[0].demo


def test_unavailable_backend_hint_is_printed_intact():
    missing = [n for n in registry.names() if n not in registry.available()]
    if not missing:
        pytest.skip("every backend is available here")
    name = missing[0]
    r = CliRunner().invoke(cli.app, ["serve", "--backend", name, "--demo"])
    assert r.exit_code == 1
    hint = registry.install_hint(name)
    assert "[" in hint and hint in " ".join(r.output.split()), r.output


def test_backends_table_keeps_brackets():
    r = CliRunner().invoke(cli.app, ["backends"], terminal_width=200)
    assert r.exit_code == 0
    for name in registry.names():
        if name not in registry.available():
            quoted = re.findall(r"'[^' ]*\[[^' ]*\]'", registry.install_hint(name))  # e.g. '.[torch]'
            assert quoted and all(q in r.output for q in quoted), r.output


def _commands(group=None, prefix=()):
    """Every command path of the CLI (``("serve",)``, ``("calibrate", "run")``…), walked from the click tree."""
    import typer.main

    if group is None:
        group = typer.main.get_command(cli.app)
        yield ()
    for name, command in sorted(getattr(group, "commands", {}).items()):
        yield (*prefix, name)
        yield from _commands(command, (*prefix, name))


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("command", list(_commands()), ids=lambda c: " ".join(c) or "neuroscope")
def test_help_has_no_type_tags_and_full_defaults(command, width):
    r = CliRunner().invoke(cli.app, [*command, "--help"], terminal_width=width, env={"COLUMNS": str(width)})
    assert r.exit_code == 0, r.output
    assert not re.search(r"<(str|bool|int|float|path|int range|float range)>", r.output), r.output
    assert "…" not in r.output, r.output  # nothing cut short
    if command == ("serve",):
        squashed = re.sub(r"[\s│]", "", r.output)  # a long default may be folded across lines of the table
        assert "[default:google/gemma-2-2b-it]" in squashed, r.output
        # --sae and --sae-path default to the model's default SAE, from the registry (no fixed value to show)
        assert "(default:themodel'sdefaultSAE,fromtheregistry;`neuroscopesaelist`)" in squashed, r.output
        assert "(default:themodel'sdefaultSAE)" in squashed, r.output
        flat = " ".join(r.output.split())
        assert "--max-queue" in flat and "--served-model-name" in flat
