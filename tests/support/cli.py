"""What the CLI tests check alike."""

from __future__ import annotations


def error_line(result) -> str:
    """The one ``error: ...`` line a failing command printed on stderr (and nothing else there)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]
