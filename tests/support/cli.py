"""What the CLI tests check alike."""

from __future__ import annotations


def error_line(result, code: int | None = None) -> str:
    """The one ``error: ...`` line a failing command printed on stderr (and nothing else there); ``code``: the exit
    status it must have ended with. ``result``: a CliRunner result or a CompletedProcess (text mode)."""
    if code is not None:
        assert getattr(result, "exit_code", getattr(result, "returncode", None)) == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]
