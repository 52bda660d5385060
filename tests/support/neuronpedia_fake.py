"""A loopback fake of Neuronpedia: the per-feature API and the public dataset bucket, with faults on demand.

It speaks the real wire format: ``GET /api/feature/{modelId}/{sourceId}/{index}`` answers a feature object whose
``explanations`` each have a ``description`` and ``scores`` (``[{"value", "explanationScoreTypeName"}]``);
``GET /v1/{modelId}/{sourceId}/explanations/batch-N.jsonl.gz`` answers gzipped JSON lines (one explanation each,
``index`` a string), and 404 past the last batch. It runs on its own event loop thread.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Seen:
    path: str
    at: float
    headers: dict[str, str]


@dataclass
class FakeNeuronpedia:
    model_id: str = "gemma-2-2b"
    source_id: str = "20-gemmascope-res-16k"
    # index -> explanations (a list of dicts); an index not here answers 404
    features: dict[int, list[dict]] = field(default_factory=dict)
    # index -> faults answered before the real answer, one per request: "429", "500", "hang", "garbage"
    faults: dict[int, list[str]] = field(default_factory=dict)
    retry_after: str = "1"
    batches: list[list[dict]] = field(default_factory=list)  # the bulk export's batches
    batch_faults: dict[int, list[str]] = field(default_factory=dict)  # batch -> faults ("500", "403")
    batch_delay: float = 0.0  # seconds before each batch is answered
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: asyncio.Event | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.port = 0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the fake did not start"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------------------------------ control
    def hold(self) -> None:
        """Feature answers wait until :meth:`release`."""
        self._loop.call_soon_threadsafe(self._held.clear)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._held.set)

    def feature_requests(self, index: int | None = None) -> list[Seen]:
        prefix = f"/api/feature/{self.model_id}/{self.source_id}/"
        return [s for s in self.seen if s.path.startswith(prefix)
                and (index is None or s.path == f"{prefix}{index}")]

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._held.set)
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    # ------------------------------------------------------------------------------------------ server
    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._held = asyncio.Event()
        self._held.set()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/api/feature/{model}/{source}/{index}", self._feature)
        app.router.add_get("/v1/{model}/{source}/explanations/{name}", self._batch)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def _note(self, request: web.Request) -> None:
        self.seen.append(Seen(request.path, time.monotonic(), dict(request.headers)))

    async def _feature(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        m, s, index = request.match_info["model"], request.match_info["source"], int(request.match_info["index"])
        await self._held.wait()
        queue = self.faults.get(index)
        if queue:
            fault = queue.pop(0)
            if fault == "429":
                return web.json_response({"error": "rate limited"}, status=429, headers={"Retry-After": self.retry_after})
            if fault == "500":
                return web.json_response({"error": "internal"}, status=500)
            if fault == "hang":
                await asyncio.sleep(3600)
            if fault == "garbage":
                return web.Response(text="<html>not json", content_type="text/html")
        if (m, s) != (self.model_id, self.source_id) or index not in self.features:
            return web.json_response({"message": "Feature not found"}, status=404)
        return web.json_response({"modelId": m, "layer": s, "index": str(index), "density": 0.01,
                                  "explanations": self.features[index]})

    async def _batch(self, request: web.Request) -> web.Response:
        self._note(request)
        m, s, name = request.match_info["model"], request.match_info["source"], request.match_info["name"]
        if (m, s) != (self.model_id, self.source_id) or not (name.startswith("batch-") and name.endswith(".jsonl.gz")):
            return web.Response(status=403, text="AccessDenied")
        n = int(name[len("batch-"):-len(".jsonl.gz")])
        await asyncio.sleep(self.batch_delay)
        queue = self.batch_faults.get(n)
        if queue:
            fault = queue.pop(0)
            return web.Response(status=int(fault), text="fault")
        if n >= len(self.batches):
            return web.Response(status=404, text="NoSuchKey")
        lines = "\n".join(json.dumps(row) for row in self.batches[n]) + "\n"
        return web.Response(body=gzip.compress(lines.encode()), content_type="application/gzip")


def explanation(description: str, *scores: float, index: int | None = None, model: str = "gpt-4o-mini") -> dict:
    """One explanation as Neuronpedia writes it (``index`` as a string in export lines)."""
    e = {"description": description, "typeName": "oai_token-act-pair", "explanationModelName": model,
         "scores": [{"value": v, "explanationScoreTypeName": "eleuther_recall"} for v in scores]}
    if index is not None:
        e.update(modelId="gemma-2-2b", layer="20-gemmascope-res-16k", index=str(index))
    return e
