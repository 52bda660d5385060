"""Under batching, the KV cache planned at start-up holds at most DEFAULT_BATCH_CONTEXT positions per row unless
--max-context asks for more: a 128k-window model does not allocate 128k positions × --max-batch rows by default."""

from __future__ import annotations

import dataclasses

import pytest

from neuroscope.core.engine import DEFAULT_BATCH_CONTEXT, Engine
from neuroscope.core.feature_hub import FeatureHub
from neuroscope.labels.table import Labels
from neuroscope.server.serve import batch_row
from tests.support.reference import load_backend


@pytest.fixture(scope="module")
def loaded(tiny_fixture):
    backend, info, _ = load_backend("torch-cpu", tiny_fixture)
    yield backend, dataclasses.replace(info, context_length=131072)  # as Gemma 3 4B's window
    backend.close()


def _engine(loaded, **kw) -> Engine:
    backend, info = loaded
    return Engine(backend, info, FeatureHub(), Labels(256), layer=2, **kw)


def test_a_long_window_is_capped_by_default_and_the_panel_says_so(loaded):
    engine = _engine(loaded, max_batch=2)
    assert engine.max_batch == 2 and engine.context_capped
    assert engine.max_context == DEFAULT_BATCH_CONTEXT == 8192
    small = _engine(loaded, max_batch=2, max_context=512)
    assert engine.kv_bytes == small.kv_bytes * 16  # planned for 8192 positions per row, not 131072
    row = batch_row(engine, type("C", (), {"prefill_chunk": 512, "max_batch": 2})())
    assert "8,192 tokens each" in row and "131,072" in row and "--max-context" in row


def test_an_explicit_max_context_is_taken_as_given(loaded):
    engine = _engine(loaded, max_batch=2, max_context=16384)
    assert engine.max_context == 16384 and not engine.context_capped


def test_one_request_at_a_time_keeps_the_models_window(loaded):
    engine = _engine(loaded, max_batch=1)
    assert engine.max_context == 131072 and not engine.context_capped and engine.kv_bytes is None
