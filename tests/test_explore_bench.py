"""The explorer's benchmark runs end to end (``python -m benchmarks.explore_bench --smoke``) and prints measured
figures for search, the feature page and inspect (no timing thresholds: only that each was measured)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` lives at the repository root and is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.explore_bench import app  # noqa: E402


def _measured(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_smoke_prints_every_figure(monkeypatch, tmp_path):
    monkeypatch.setenv("NEUROSCOPE_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["--smoke", "--json", "--backends", "torch-cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "search over 2000 labels" in result.output and "feature page, torch-cpu" in result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert all(_measured(figures["search"][k]) for k in ("p50_ms", "p95_ms", "index_build_ms"))
    (page,) = figures["page"]
    assert all(_measured(page[w][k]) for w in ("first", "cached") for k in ("p50_ms", "p95_ms"))
    (insp,) = figures["inspect"]
    assert _measured(insp["ratio"]) and insp["tokens"] == 64
