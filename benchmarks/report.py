"""Rich tables on the terminal and one JSON record per run under ``benchmarks/results/``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import SCHEMA


def _f(x, digits=3) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:+.1f} %"


TOO_NOISY = "too noisy"


def _share(x) -> str:
    """A share of the step's time (or an overhead): below zero it measured noise, not the SAE, and says so."""
    return TOO_NOISY if x is not None and x < 0 else _pct(x)


def bandwidth_table(bws: list[dict]) -> Table:
    t = Table(title="Memory bandwidth (measured in this run)")
    for c in ("device", "GB/s", "best kernel", "all kernels (GB/s)", "buffer"):
        t.add_column(c, justify="right" if c in ("GB/s", "buffer") else "left")
    for b in bws:
        rest = ", ".join(f"{k} {v:.1f}" for k, v in b["samples"].items())
        t.add_row(b["device"], f"{b['gbps']:.1f}", b["method"], rest, f"{b['buffer_bytes'] / 2**20:.0f} MiB")
    return t


def sae_table(rows: list[dict]) -> Table:
    t = Table(title="SAE encode + top-k, one token (ms)")
    for c in ("backend", "device", "W_enc", "d_model x d_sae", "k", "median", "p10", "p90", "floor", "x floor", "GB/s"):
        t.add_column(c, justify="left" if c in ("backend", "device", "W_enc") else "right")
    for r in rows:
        t.add_row(
            r["backend"], r["device"], r["dtype"], f"{r['d_model']} x {r['d_sae']}", str(r["k"]),
            _f(r["median_ms"]), _f(r["p10_ms"]), _f(r["p90_ms"]), _f(r["floor_ms"]), _f(r["x_floor"], 1),
            _f(r["effective_gbps"], 1),
        )
    return t


def decode_table(rows: list[dict]) -> Table:
    t = Table(title="Decode: ms/token (tokens/s) per mode")
    for c in ("backend", "model", "dtype", "bare", "capture off", "instrumented", "filtered", "instr / bare",
              "SAE share", "filter / none", "roofline"):
        t.add_column(c, justify="left" if c in ("backend", "model", "dtype") else "right")
    for r in rows:
        cells = []
        for m in ("bare", "capture-off", "instrumented", "filtered"):
            d = r["modes"].get(m)
            cells.append("skipped" if d is None else f"{_f(d['ms_per_token'])} ({d['tokens_per_s']:.0f})")
        ratio, filt = r.get("instrumented_vs_bare"), r.get("filtered_vs_instrumented")
        t.add_row(
            r["backend"], r["model"], r["dtype"], *cells,
            "-" if ratio is None else f"{ratio:.3f}", _share(r.get("sae_share_of_step")),
            "-" if filt is None else f"{filt:.3f}", _f(r["roofline_ms"]),
        )
    return t


def engines_table(rows: list[dict]) -> Table:
    """The torch engines side by side: tok/s of HF generate (eager, the baseline), the eager and the compiled
    decode step with and without the SAE, the compiled step's SAE share, and the floor in tokens/s: the model's
    weights and ``W_enc`` read once per token at the measured copy bandwidth."""
    t = Table(title="Decode engines: tokens/s (eager = --engine eager, compiled = --engine compiled)")
    for c in ("backend", "model", "dtype", "HF generate", "eager", "eager no-SAE", "compiled", "compiled no-SAE",
              "SAE share", "instr / no-SAE", "compiled / eager", "floor", "compile"):
        t.add_column(c, justify="left" if c in ("backend", "model", "dtype") else "right")
    for r in rows:
        if "compiled_vs_instrumented" not in r:
            continue
        tps = lambda m: f"{r['modes'][m]['tokens_per_s']:.1f}"  # noqa: E731
        t.add_row(
            r["backend"], r["model"], r["dtype"], tps("bare"), tps("instrumented"), tps("capture-off"),
            tps("compiled"), tps("compiled-capture-off"), _share(r["compiled_sae_share_of_step"]),
            f"{r['compiled_instrumented_vs_no_sae']:.3f}", f"{1 / r['compiled_vs_instrumented']:.2f}x",
            f"{1e3 / r.get('floor_instrumented_ms', r['roofline_instrumented_ms']):.0f}", f"{r['compile_s']:.1f} s",
        )
    return t


def corpus_table(rows: list[dict]) -> Table:
    t = Table(title="Corpus pass: tokens/s, block-N forward + SAE + statistics vs the bare forward")
    for c in ("backend", "model", "dtype", "d_sae", "batches", "bare forward", "corpus pass", "SAE + stats"):
        t.add_column(c, justify="left" if c in ("backend", "model", "dtype") else "right")
    for r in rows:
        t.add_row(
            r["backend"], r["model"], r["dtype"], str(r["d_sae"]), f"{r['batches']} x {r['batch_size']} x "
            f"{r['max_tokens']}", f"{r['modes']['bare-forward']['tokens_per_s']:,.0f}",
            f"{r['modes']['corpus-pass']['tokens_per_s']:,.0f}", _share(r["sae_stats_overhead"]),
        )
    return t


def steering_table(rows: list[dict]) -> Table:
    t = Table(title="Decode with steering: ms/token, and against instrumented (median of per-repeat ratios)")
    for c in ("backend", "model", "dtype", "instrumented", "1 steered", "16 steered", "1 / instr", "16 / instr",
              "16 / instr (token median)"):
        t.add_column(c, justify="left" if c in ("backend", "model", "dtype") else "right")
    for r in rows:
        if "steered_16_vs_instrumented" not in r:
            continue
        ms = lambda m: _f(r["modes"][m]["ms_per_token"])  # noqa: E731
        t.add_row(
            r["backend"], r["model"], r["dtype"], ms("instrumented"), ms("steered-1"), ms("steered-16"),
            f"{r['steered_1_vs_instrumented']:.3f}", f"{r['steered_16_vs_instrumented']:.3f}",
            f"{r['steered_16_vs_instrumented_token_median']:.3f}",
        )
    return t


def concurrency_table(rows: list[dict]) -> Table:
    t = Table(title="Concurrent requests: aggregate tokens/s, per-request inter-token latency p50 / p95 (ms)")
    for c in ("backend", "model", "max-batch", *(f"{n} at once" for n in _concurrencies(rows))):
        t.add_column(c, justify="left" if c in ("backend", "model") else "right")
    for r in rows:
        for mb in sorted({x["max_batch"] for x in r["rows"]}):
            by = {x["concurrent"]: x for x in r["rows"] if x["max_batch"] == mb}
            cells = []
            for n in _concurrencies(rows):
                x = by.get(n)
                cells.append("-" if x is None else f"{x['tokens_per_s']:.0f} tok/s, {_f(x['itl_p50_ms'])} / "
                                                   f"{_f(x['itl_p95_ms'])}")
            engine = "" if r["backend"] == "mlx" else f" ({r.get('engine', 'eager')})"
            t.add_row(f"{r['backend']}{engine}", f"{r['model']} {r['dtype']}", str(mb), *cells)
    single = [(r["backend"], r["single_stream"]) for r in rows if r.get("single_stream")]
    if single:
        t.caption = "single stream, median of alternating runs: " + "; ".join(
            f"{b} --max-batch 8 {s['max_batch_8_ms']:.3f} ms/token, 1 {s['max_batch_1_ms']:.3f} (x{s['ratio']:.3f}, "
            f"{s['runs']} runs each)" for b, s in single)
    return t


def _concurrencies(rows: list[dict]) -> list[int]:
    return sorted({x["concurrent"] for r in rows for x in r["rows"]})


def print_all(console: Console, record: dict) -> None:
    console.print(bandwidth_table(record["bandwidth"]))
    if record["sae"]:
        console.print(sae_table(record["sae"]))
    if record["decode"]:
        console.print(decode_table(record["decode"]))
        if any("steered_16_vs_instrumented" in r for r in record["decode"]):
            console.print(steering_table(record["decode"]))
        if any("compiled_vs_instrumented" in r for r in record["decode"]):
            console.print(engines_table(record["decode"]))
    if record.get("concurrency"):
        console.print(concurrency_table(record["concurrency"]))
    if record.get("corpus"):
        console.print(corpus_table(record["corpus"]))
    noisy = [f"{r['backend']} {r['model']}" for r in record["decode"] + record.get("corpus", [])
             if any((r.get(k) or 0) < 0 for k in ("sae_share_of_step", "compiled_sae_share_of_step", "sae_stats_overhead"))]
    if noisy:
        console.print(f"[dim]note:[/dim] {TOO_NOISY}: the SAE's share came out below zero for {', '.join(noisy)} — "
                      "other work on the machine moved the timings more than the SAE costs; run again on a quieter "
                      "machine, or with --threads 1")
    for note in record["notes"]:
        console.print(f"[dim]note:[/dim] {note}")


def write(record: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(record["started_at"]))
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", record["machine"]["hostname"])[:40] or "host"
    path = out_dir / f"{stamp}-{host}-{record['suite']}.json"
    n = 1
    while path.exists():
        n += 1
        path = out_dir / f"{stamp}-{host}-{record['suite']}-{n}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def new_record(suite: str, machine: dict, config: dict) -> dict:
    return {
        "schema": SCHEMA,
        "suite": suite,
        "started_at": time.time(),
        "duration_s": None,
        "machine": machine,
        "config": config,
        "bandwidth": [],
        "sae": [],
        "decode": [],
        "corpus": [],
        "skipped": [],
        "notes": [],
    }
