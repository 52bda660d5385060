"""Under a calibrated filter the viewer shows what the stream adds: each feature's surprise next to its raw
activation, and how many fired features the filter hid at that token (``filtered_count``)."""

from __future__ import annotations

import pytest

from neuroscope.calibration import filters
from neuroscope.calibration import run as calibrate
from neuroscope.calibration import stats as calibration
from neuroscope.config import ServeConfig
from tests.support.calib import write_corpus
from tests.support.server import RunningServer, SSEReader
from tests.viewer.pages import chat, panel_features, sse_events, token

pytestmark = pytest.mark.usefixtures("browser")


@pytest.fixture(scope="module")
def filtered_server(tiny_fixture, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viewer-calibration")
    config = ServeConfig(model=str(tiny_fixture.model_dir), sae_local_path=str(tiny_fixture.sae_path),
                         sae_layer=tiny_fixture.sae_layer, backend="torch-cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEUROSCOPE_CACHE", str(tmp / "cache"))
        calibrate.run(config, calibrate.RunOptions(corpus_path=str(write_corpus(tmp / "corpus", 30)), samples=30,
                                                   max_tokens_per_sample=64, output=str(tmp / "cal.json")))
    active = filters.build("combined", calibration.load(tmp / "cal.json"), 0.2)
    srv = RunningServer("torch-cpu", tiny_fixture, max_tokens=16, feature_filter=active)
    yield srv
    srv.stop()


def test_hover_shows_surprise_and_the_filtered_count(filtered_server, open_page):
    from playwright.sync_api import expect

    reader = SSEReader(f"{filtered_server.features}/v1/features/stream").start()
    p = open_page(f"{filtered_server.features}/")
    expect(p.page.locator("#connection")).to_have_attribute("data-state", "connected")
    rid = chat(p.page, "Tell me about the river and the old mill.", max_tokens=16)
    events = sse_events(reader, rid)
    assert len(events) == 16
    assert any(e["filtered_count"] > 0 for e in events), "the filter should hide something on this chat"
    for e in events[:6]:
        token(p.page, rid, e["token_index"]).hover()
        expect(p.page.locator("#feature-panel .token-head")).to_contain_text(f"{e['filtered_count']} filtered")
        shown = panel_features(p.page)
        assert [i for i, _, _ in shown] == [f["index"] for f in e["top_features"]]
        surprises = p.page.locator("#feature-panel .feat .fsurprise").all_text_contents()
        assert [float(s) for s in surprises] == pytest.approx([f["surprise"] for f in e["top_features"]], abs=0.006)
    assert p.errors == []
