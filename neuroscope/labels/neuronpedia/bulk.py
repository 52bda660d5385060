"""``labels fetch --source neuronpedia``: every explanation of one SAE into the Neuronpedia cache.

First Neuronpedia's public bulk export, ``{base}/v1/{modelId}/{sourceId}/explanations/batch-N.jsonl.gz`` (gzipped
JSON lines, one explanation each, ``index`` a string), N = 0, 1, 2, … until a 404 / 403. Each batch is appended to
the cache (fsynced) and then recorded as merged in ``export.json`` (atomically), so a killed run skips the batches
it already merged. Then the per-feature API for the features the export lacks (or all of them when the export
cannot be reached); answers already cached are not asked again.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from dataclasses import dataclass

import aiohttp

from neuroscope.labels import retrying
from neuroscope.labels.neuronpedia.cache import Answer, NeuronpediaCache, now_iso
from neuroscope.labels.neuronpedia.client import ClientSettings, NeuronpediaClient, Unreachable, best_explanation
from neuroscope.labels.neuronpedia.registry import NeuronpediaIds
from neuroscope.progress import JobProgress
from neuroscope.store import atomic, paths

DATASETS_URL = "https://neuronpedia-datasets.s3.amazonaws.com"
DATASETS_ENV = "NEURONPEDIA_DATASETS_URL"
API_CHUNK = 64  # features asked between two cache appends
STATE_FORMAT = "neuroscope-neuronpedia-export/1"


def datasets_url() -> str:
    return (os.environ.get(DATASETS_ENV) or DATASETS_URL).rstrip("/")


@dataclass
class FetchResult:
    batches_merged: int = 0  # this run
    batches_skipped: int = 0  # merged by an earlier run
    export_complete: bool = False  # the export's end (a 404 / 403) was reached
    export_labels: int = 0  # features labelled by the batches merged this run
    export_error: str | None = None
    api_asked: int = 0
    api_labels: int = 0
    api_none: int = 0
    api_gave_up: int = 0
    api_error: str | None = None
    cached: int = 0  # features with a label in the cache at the end


def parse_batch(data: bytes, d_sae: int) -> list[Answer]:
    """One export batch: the best explanation per feature index (lines outside the SAE are skipped)."""
    if data[:2] == b"\x1f\x8b":  # served as a .gz body (a server may also have decoded it already)
        data = gzip.decompress(data)
    by_index: dict[int, list[dict]] = {}
    for raw in data.splitlines():
        if not raw.strip():
            continue
        row = json.loads(raw)
        try:
            i = int(row["index"])
        except (KeyError, TypeError, ValueError):
            continue
        if 0 <= i < d_sae:
            by_index.setdefault(i, []).append(row)
    stamp = now_iso()
    out = []
    for i in sorted(by_index):
        best = best_explanation(by_index[i])
        if best is not None:
            out.append(Answer(i, best[0], best[1], stamp))
    return out


class _State:
    def __init__(self, ids: NeuronpediaIds, base: str):
        self.path = paths.neuronpedia_export_state_file(ids.model_id, ids.source_id)
        self.base = base
        data: dict = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        same = isinstance(data, dict) and data.get("format") == STATE_FORMAT and data.get("base") == base
        self.merged: set[int] = set(data.get("merged", [])) if same else set()
        self.end: int | None = data.get("end") if same else None

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.path, {"format": STATE_FORMAT, "base": self.base, "merged": sorted(self.merged),
                                      "end": self.end})


async def _get(session: aiohttp.ClientSession, url: str, settings: ClientSettings) -> tuple[int, bytes]:
    """GET with retries on 429 / 5xx / timeouts; connection errors propagate at once."""
    timeout = aiohttp.ClientTimeout(total=max(settings.timeout_s, 60.0))
    for attempt in range(settings.tries):
        try:
            async with session.get(url, timeout=timeout, auto_decompress=False) as resp:
                if resp.status == 200:
                    return 200, await resp.read()
                if resp.status not in (429,) and resp.status < 500:
                    return resp.status, b""
                status = resp.status
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            raise
        except (asyncio.TimeoutError, aiohttp.ClientError):
            status = 0
        if attempt + 1 < settings.tries:
            await asyncio.sleep(retrying.backoff(settings.backoff_s, attempt))
    return status, b""


async def fetch(ids: NeuronpediaIds, *, settings: ClientSettings, base: str, api: bool = True,
                progress: JobProgress | None = None) -> FetchResult:
    progress = progress or JobProgress(None)
    cache = NeuronpediaCache(ids.model_id, ids.source_id, ids.d_sae)
    result = FetchResult()
    state = _State(ids, base)
    async with aiohttp.ClientSession() as session:
        await _export(session, ids, cache, state, settings, progress, result)
        if api:
            await _api(session, ids, cache, settings, progress, result)
    result.cached = sum(1 for a in cache.load().values() if a.label is not None)
    return result


async def _export(session, ids, cache, state, settings, progress, result) -> None:
    bar = progress.items(f"export {ids}", None)
    n = 0
    while True:
        if state.end is not None and n >= state.end:
            result.export_complete = True
            return
        if n in state.merged:
            result.batches_skipped += 1
            bar.advance()
            n += 1
            continue
        url = f"{state.base}/v1/{ids.model_id}/{ids.source_id}/explanations/batch-{n}.jsonl.gz"
        try:
            status, body = await _get(session, url, settings)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            result.export_error = f"cannot reach {state.base}: {exc}"
            return
        if status in (403, 404):
            state.end = n
            state.save()
            result.export_complete = True
            return
        if status != 200:
            result.export_error = f"{url} answered {status or 'nothing (timed out)'}"
            return
        try:
            answers = parse_batch(body, ids.d_sae)
        except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
            result.export_error = f"{url} is not gzipped JSON lines: {exc}"
            return
        await asyncio.to_thread(cache.append, answers)
        state.merged.add(n)
        await asyncio.to_thread(state.save)
        result.batches_merged += 1
        result.export_labels += len(answers)
        bar.advance()
        n += 1


async def _api(session, ids, cache, settings, progress, result) -> None:
    have = cache.load()
    missing = [i for i in range(ids.d_sae) if i not in have or not have[i].fresh()]
    if not missing:
        return
    client = NeuronpediaClient(ids, settings, session, stop_when_unreachable=True)
    bar = progress.items(f"API {ids}", len(missing))
    for start in range(0, len(missing), API_CHUNK):
        chunk = missing[start:start + API_CHUNK]
        unreachable: Unreachable | None = None
        try:
            async with asyncio.TaskGroup() as tg:  # one unreachable answer cancels the rest of the chunk
                tasks = [tg.create_task(client.feature(i)) for i in chunk]
        except* Unreachable as group:
            unreachable = group.exceptions[0]
        if unreachable is not None:
            result.api_error = str(unreachable)
            break
        got = [a for t in tasks if (a := t.result()) is not None]
        await asyncio.to_thread(cache.append, got)
        result.api_asked += len(chunk)
        result.api_labels += sum(a.label is not None for a in got)
        result.api_none += sum(a.label is None for a in got)
        result.api_gave_up += len(chunk) - len(got)
        bar.advance(len(chunk))
