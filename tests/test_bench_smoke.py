"""The benchmark harness runs end to end (``python -m benchmarks --smoke``) and records measured figures.

No timing thresholds: this checks that every figure was measured (positive, finite) and that the JSON record
has the documented shape, so the harness cannot rot unnoticed.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` lives at the repository root and is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import SCHEMA  # noqa: E402
from benchmarks.__main__ import app  # noqa: E402
from benchmarks.targets import framework_status, neuroscope_backend_status  # noqa: E402


def _measured(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    cache = tmp_path_factory.mktemp("bench-cache")
    result = CliRunner().invoke(app, ["--smoke", "--out", str(out), "--cache", str(cache)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    files = list(out.glob("*.json"))
    assert len(files) == 1, files
    assert "SAE encode + top-k" in result.output and "Decode" in result.output and "Corpus pass" in result.output
    if framework_status("torch-cpu")[0]:  # the thread count serve would use, said before any figure
        from backends.torch_backend import cpu_threads

        assert f"torch CPU threads: {cpu_threads()} (as serve picks them" in result.output
    if any(neuroscope_backend_status(n)[0] for n in ("torch-cpu", "torch-cuda")):
        assert "Concurrent requests" in result.output
    if any(neuroscope_backend_status(n)[0] for n in ("torch-cpu", "torch-cuda", "mlx")):
        assert "Decode with steering" in result.output
    return json.loads(files[0].read_text())


def test_record_describes_the_run(record):
    assert record["schema"] == SCHEMA
    assert record["suite"] == "smoke"
    assert _measured(record["duration_s"])
    m = record["machine"]
    assert m["cpu"] and m["hostname"] and m["versions"]["numpy"] and m["versions"]["python"]
    assert isinstance(m["gpus"], list)
    assert record["config"]["top_k"] >= 1


def test_bandwidth_is_measured_per_device(record):
    devices = {b["device"] for b in record["bandwidth"]}
    assert "cpu" in devices
    for b in record["bandwidth"]:
        assert _measured(b["gbps"]) and b["samples"]
        assert b["gbps"] == max(b["samples"].values())
        assert all(_measured(v) for v in b["samples"].values())


def test_sae_rows_have_measured_figures(record):
    rows = record["sae"]
    assert {r["backend"] for r in rows} >= {"numpy"}
    for r in rows:
        assert r["dtype"] in ("float32", "bfloat16")
        assert r["d_model"] > 0 and r["d_sae"] > 0 and r["k"] > 0 and r["n"] >= 1
        for key in ("median_ms", "p10_ms", "p90_ms", "floor_ms", "x_floor", "bandwidth_gbps", "effective_gbps"):
            assert _measured(r[key]), (r["backend"], key, r[key])
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["w_enc_bytes"] == r["d_model"] * r["d_sae"] * (4 if r["dtype"] == "float32" else 2)
        assert r["max_abs_err_vs_reference"] >= 0


def test_every_usable_backend_was_benchmarked_or_skipped_with_a_reason(record):
    sae_backends = {r["backend"] for r in record["sae"]}
    skipped = {s["backend"]: s["reason"] for s in record["skipped"]}
    for name in ("numpy", "torch-cpu", "torch-cuda", "mlx"):
        ok, _ = framework_status(name)
        assert (name in sae_backends) == ok
        if not ok:
            assert skipped.get(name)


def test_decode_rows_compare_every_mode(record):
    expected = [n for n in ("torch-cpu", "torch-cuda", "mlx") if framework_status(n)[0]]
    if not expected:
        pytest.skip("neither torch nor mlx is installed: no decode benchmark")
    assert [r["backend"] for r in record["decode"]] == expected
    for r in record["decode"]:
        assert r["model"] == "tiny" and r["new_tokens"] >= 2 and r["prompt_tokens"] > 0
        ours, _ = neuroscope_backend_status(r["backend"])
        modes = ("bare", "capture-off", "instrumented", "filtered", "steered-1", "steered-16") if ours else ("bare",)
        assert tuple(r["modes"]) == modes
        for mode in modes:
            d = r["modes"][mode]
            for key in ("ms_per_token", "tokens_per_s", "per_token_median_ms", "first_token_ms"):
                assert _measured(d[key]), (r["backend"], mode, key)
            assert len(d["ms_per_token_by_repeat"]) == r["repeats"]
        for key in ("weight_bytes", "bandwidth_gbps", "roofline_ms", "roofline_instrumented_ms"):
            assert _measured(r[key])
        if ours:
            assert _measured(r["instrumented_vs_bare"]) and math.isfinite(r["sae_share_of_step"])
            assert _measured(r["filtered_vs_instrumented"]) and _measured(r["filtered_vs_instrumented_token_median"])
            for m in (1, 16):
                assert _measured(r[f"steered_{m}_vs_instrumented"])
                assert _measured(r[f"steered_{m}_vs_instrumented_token_median"])
                assert math.isfinite(r[f"steered_{m}_overhead_ms"])
            if r["backend"].startswith("torch"):  # the smoke suite leaves the compiled engine out, and says so
                assert set(r["skipped_modes"]) == {"compiled-capture-off", "compiled"}
        else:
            assert set(r["skipped_modes"]) == {"capture-off", "instrumented", "filtered", "steered-1", "steered-16",
                                               "compiled-capture-off", "compiled"}


def test_corpus_rows_compare_the_corpus_pass_with_a_bare_forward(record):
    expected = [n for n in ("torch-cpu", "torch-cuda", "mlx") if neuroscope_backend_status(n)[0]]
    if not expected:
        pytest.skip("no Neuroscope backend here: no corpus-pass benchmark")
    assert [r["backend"] for r in record["corpus"]] == expected
    for r in record["corpus"]:
        assert r["model"] == "tiny" and r["d_sae"] > 0 and r["tokens"] > 0 and r["batches"] >= 1
        assert tuple(r["modes"]) == ("bare-forward", "corpus-pass")
        for d in r["modes"].values():
            assert _measured(d["tokens_per_s"]) and _measured(d["seconds"])
            assert len(d["s_by_repeat"]) == r["repeats"] and all(_measured(x) for x in d["s_by_repeat"])
            assert d["tokens_per_s"] == pytest.approx(r["tokens"] / d["seconds"])
        assert math.isfinite(r["sae_stats_overhead"]) and r["sae_stats_overhead"] > -1


def test_a_share_below_zero_is_reported_as_noise_never_as_a_negative_share():
    import io

    from rich.console import Console

    from benchmarks import report

    mode = {"ms_per_token": 1.0, "tokens_per_s": 1000.0}
    row = {"backend": "torch-cpu", "model": "tiny", "dtype": "float32", "roofline_ms": 0.1,
           "modes": {m: mode for m in ("bare", "capture-off", "instrumented", "filtered")},
           "instrumented_vs_bare": 0.66, "sae_share_of_step": -0.525, "filtered_vs_instrumented": 1.0}
    record = {"bandwidth": [], "sae": [], "decode": [row], "corpus": [], "notes": []}
    screen = io.StringIO()
    report.print_all(Console(file=screen, width=250, color_system=None), record)
    shown = screen.getvalue()
    assert "too noisy" in shown and "-52.5" not in shown
    row["sae_share_of_step"] = 0.125
    screen = io.StringIO()
    report.print_all(Console(file=screen, width=250, color_system=None), record)
    assert "+12.5 %" in screen.getvalue() and "too noisy" not in screen.getvalue()


def test_concurrency_rows_compare_max_batch_8_with_1(record):
    expected = [n for n in ("torch-cpu", "torch-cuda", "mlx") if neuroscope_backend_status(n)[0]]
    if not expected:
        pytest.skip("no torch or mlx backend here: no concurrency table")
    assert [r["backend"] for r in record["concurrency"]] == expected
    for r in record["concurrency"]:
        cells = {(x["max_batch"], x["concurrent"]) for x in r["rows"]}
        assert cells == {(mb, c) for mb in (1, 8) for c in (1, 2)}
        for x in r["rows"]:
            assert x["tokens"] == x["concurrent"] * r["tokens"]
            for key in ("tokens_per_s", "wall_s", "itl_p50_ms", "itl_p95_ms"):
                assert _measured(x[key]), (x, key)
        single = r["single_stream"]  # lone requests under --max-batch 8 and 1, alternating
        assert single["runs"] >= 1 and single["ratio"] == single["max_batch_8_ms"] / single["max_batch_1_ms"]
        assert _measured(single["max_batch_1_ms"]) and _measured(single["max_batch_8_ms"])
    import io

    from rich.console import Console

    from benchmarks import report

    screen = io.StringIO()
    Console(file=screen, width=400, color_system=None).print(report.concurrency_table(record["concurrency"]))
    assert f"{expected[0]} --max-batch 8 " in screen.getvalue() and "median of alternating runs" in screen.getvalue()
