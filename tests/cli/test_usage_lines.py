"""Usage lines read as usage lines: arguments in capitals, ``[NAME]`` when optional, never ``{prompt}``."""

from __future__ import annotations

import re

import typer
from typer.core import TyperArgument
from typer.testing import CliRunner

from neuroscope.cli import serve as cli


def _commands(group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_argument_reads_as_a_usage_line_does():
    root = typer.main.get_command(cli.app)
    with_arguments = [(path, c) for path, c in _commands(root) if any(isinstance(p, TyperArgument) for p in c.params)]
    assert {path for path, _ in with_arguments} >= {("steer",), ("models", "pull"), ("sae", "pull")}
    for path, command in with_arguments:
        result = CliRunner().invoke(cli.app, [*path, "--help"], env={"COLUMNS": "200"})
        usage = next(line for line in result.output.splitlines() if "Usage:" in line).strip()
        assert "{" not in usage and not re.search(r"\[[a-z]", usage), usage
    assert re.search(r"Usage: neuroscope steer \[OPTIONS\] PROMPT\s*$", _usage("steer"))
    assert re.search(r"Usage: neuroscope models pull \[OPTIONS\] \[MODEL\]\s*$", _usage("models", "pull"))


def _usage(*path: str) -> str:
    result = CliRunner().invoke(cli.app, [*path, "--help"], env={"COLUMNS": "200"})
    return next(line for line in result.output.splitlines() if "Usage:" in line).strip()
