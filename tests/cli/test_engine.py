"""``--engine``: the value reaches the config, a bad one exits 2; the runtime compiles the torch decode step at
start-up and the panel says so; a backend without engines refuses anything but auto."""

from __future__ import annotations

import pytest
from rich.console import Console
from typer.testing import CliRunner

from neuroscope.cli import serve as cli
from neuroscope.config import ServeConfig
from neuroscope.core import registry
from neuroscope.core.decode import generate
from neuroscope.core.protocol import GenerationParams
from neuroscope.runtime import StartupError, compile_decode_step, load_runtime
from neuroscope.server.app import Bound
from neuroscope.server.serve import _panel

WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}
TORCH = pytest.mark.skipif("torch-cpu" not in registry.available(), reason="torch-cpu is not available here")


@pytest.mark.parametrize(("args", "expected"), [([], "auto"), (["--engine", "compiled"], "compiled"),
                                                (["--engine", "eager"], "eager")])
def test_engine_reaches_the_config(captured, args, expected):
    result = CliRunner().invoke(cli.app, ["serve", "--demo", *args])
    assert result.exit_code == 0, result.output
    assert [c.engine for c in captured] == [expected]


def test_bad_engine_exits_2_with_one_line(captured):
    result = CliRunner().invoke(cli.app, ["serve", "--engine", "jit"], env=WIDE)
    assert result.exit_code == 2 and captured == []
    errors = [line for line in result.stderr.splitlines() if "Invalid value" in line]
    assert len(errors) == 1 and "--engine" in errors[0] and "'jit'" in errors[0], result.stderr


def test_config_validates_the_engine():
    with pytest.raises(ValueError, match="--engine must be one of auto, eager, compiled"):
        ServeConfig(engine="fast").validate()


def _panel_text(rt) -> str:
    console = Console(width=200, record=True)
    console.print(_panel(rt, Bound("127.0.0.1", 8080, 8081)))
    return console.export_text()


@TORCH
def test_compiled_engine_compiles_at_start_up_and_the_panel_says_so():
    # top-k 8 and a 256-position bucket: the graph the backend tests build, so this start-up reuses it
    rt = load_runtime(ServeConfig(demo=True, backend="torch-cpu", engine="compiled", max_tokens=200, top_k=8,
                                  feature_filter="none"))
    try:
        assert rt.compile_seconds is None, "loading alone compiles nothing (the corpus pass never decodes)"
        compile_decode_step(rt)
        assert rt.backend.compiled is not None
        assert rt.engine == "compiled (torch.compile, inductor)"
        assert rt.compile_seconds is not None and rt.compile_seconds > 0
        assert rt.backend.compiled.min_size == 256, "shorter requests use the warmed-up bucket"
        panel = _panel_text(rt)
        assert "compiled (torch.compile, inductor), compiled in" in panel
    finally:
        rt.backend.close()


@TORCH
def test_auto_is_eager_on_torch_cpu_and_nothing_compiles():
    rt = load_runtime(ServeConfig(demo=True, backend="torch-cpu", feature_filter="none"))
    try:
        compile_decode_step(rt)
        assert rt.backend.compiled is None and rt.engine == "eager" and rt.compile_seconds is None
        assert "engine" in _panel_text(rt)
    finally:
        rt.backend.close()


def test_engine_on_a_backend_without_engines_is_refused():
    class OneEngine:  # registered through the real mechanism, like a third-party backend
        name = "one-engine"

        @classmethod
        def is_available(cls):
            return True

    registry.register("one-engine", lambda: OneEngine)
    try:
        with pytest.raises(StartupError, match="--engine compiled applies to the torch backends; one-engine"):
            load_runtime(ServeConfig(demo=True, backend="one-engine", engine="compiled"))
    finally:
        registry.unregister("one-engine")


@TORCH
def test_a_compile_failure_is_one_line_naming_the_way_out(monkeypatch):
    """A machine where inductor cannot build (no C++ compiler, no Triton) gets a start-up error, not a
    traceback, and learns that --engine eager runs the same step. The failure is what torch.compile's callable
    raises on its first call there (building it for real would cost a minute of a failing compile)."""
    import torch

    def compile_without_a_compiler(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx")
        return run

    monkeypatch.setattr(torch, "compile", compile_without_a_compiler)
    rt = load_runtime(ServeConfig(demo=True, backend="torch-cpu", engine="compiled", max_tokens=200,
                                  feature_filter="none"))
    with pytest.raises(StartupError, match=r"^--engine compiled could not compile the decode step \(InvalidCxx"
                                           r"Compiler: .*\); --engine eager runs the same step uncompiled$"):
        compile_decode_step(rt)
    assert rt.backend.model is None, "the backend is closed"


@TORCH
def test_under_auto_a_compile_failure_serves_eager_and_says_why(monkeypatch):
    """auto picks compiled where it is the default (torch-cuda); a machine that cannot build it still serves."""
    import torch

    from backends.torch_backend import TorchCPUBackend

    def compile_without_a_compiler(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", compile_without_a_compiler)
    monkeypatch.setattr(TorchCPUBackend, "default_engine", "compiled")  # as on torch-cuda
    rt = load_runtime(ServeConfig(demo=True, backend="torch-cpu", max_tokens=8, feature_filter="none"))
    try:
        assert rt.backend.compiled is not None
        compile_decode_step(rt)
        assert rt.backend.compiled is None and rt.engine == "eager" and rt.compile_seconds is None
        assert "InvalidCxxCompiler" in rt.engine_warning and "serving with the eager engine" in rt.engine_warning
        assert "servingwiththeeagerengine" in "".join(ch for ch in _panel_text(rt) if not ch.isspace() and ch != "│")
        steps = list(generate(rt.backend, rt.info.tokenizer.encode("hello"), GenerationParams(max_tokens=4)))
        assert len(steps) == 4  # and it decodes
    finally:
        rt.backend.close()
