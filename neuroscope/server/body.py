"""Reading a JSON request body safely: every bad body is a clean 4xx, big ones are decoded off the event loop.

The raw bytes are read on the loop (with a deadline, so a client that trickles its body is cut off); gunzip /
inflate (bounded: a small bomb cannot grow past the size limit), UTF-8 decoding and JSON parsing run in the
caller's executor. Refused: another charset than UTF-8, an unknown or corrupt ``Content-Encoding``, JSON nested
deeper than ``MAX_DEPTH``, integers of more than 4,300 digits (Python's own limit), lone surrogates in strings.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import zlib
from concurrent.futures import Executor
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from neuroscope.server.errors import APIError

MAX_DEPTH = 64
_UTF8 = {"utf-8", "utf8"}


def unsupported_media_type(got: str | None) -> APIError:
    said = f"it was sent as {got!r}" if got else "it was sent without a Content-Type"
    return APIError(f"the request body must be JSON sent with 'Content-Type: application/json'; {said}",
                    status=415, code="unsupported_media_type")


async def read_json(request: web.Request, executor: Executor | None, *, max_size: int, timeout: float) -> Any:
    """The request's JSON body, or an :class:`APIError` (400 / 413 / 415 / 408)."""
    if request.content_type != "application/json":  # a cross-site form or text/plain POST cannot make us generate
        raise unsupported_media_type(request.headers.get("Content-Type"))
    charset = request.charset
    if charset is not None and charset.lower() not in _UTF8:
        try:
            known = codecs.lookup(charset).name
        except LookupError:
            known = None
        what = "an unknown charset" if known is None else "not UTF-8"
        raise APIError(f"charset {charset!r} is {what}: the request body must be UTF-8 JSON",
                       status=415, param=None, code="unsupported_charset")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
        raise APIError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)",
                       status=415, code="unsupported_content_encoding")
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        raise APIError(f"the request body did not arrive within {timeout:g} s", status=408,
                       code="request_timeout", close=True) from None
    except RequestPayloadError as exc:  # e.g. broken chunked framing
        raise APIError(f"the request body could not be read: {exc}", code="bad_request", close=True) from None
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, decode_json, raw, encoding, max_size)


def decode_json(raw: bytes, encoding: str, max_size: int) -> Any:
    """Decompress, decode and parse ``raw`` (runs on a worker thread)."""
    if encoding in ("gzip", "x-gzip", "deflate"):
        raw = _decompress(raw, encoding, max_size)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(f"the request body is not valid UTF-8: {exc}", code="invalid_json") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise _too_deep() from None
    except json.JSONDecodeError as exc:
        raise APIError(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise APIError(f"the request body holds a number that cannot be read: {exc}", code="invalid_json") from None
    _check(body)
    return body


def _decompress(raw: bytes, encoding: str, max_size: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(raw, max_size + 1)
        if len(out) > max_size or d.unconsumed_tail:
            raise APIError(f"the decompressed request body is larger than {max_size} bytes", status=413,
                           code="request_too_large")
        out += d.flush()
        if not d.eof:
            raise zlib.error("truncated stream")
    except zlib.error as exc:
        raise APIError(f"the request body is not valid {encoding} data ({exc})", code="invalid_content_encoding") from None
    return out


def _too_deep() -> APIError:
    return APIError(f"the request body is nested more than {MAX_DEPTH} levels deep", code="invalid_json")


def _check(body: Any) -> None:
    """Depth limit and no lone surrogates (they cannot be encoded, tokenized or sent back), without recursion."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, (list, dict)):
            if depth > MAX_DEPTH:
                raise _too_deep()
            if isinstance(value, dict):
                for k, v in value.items():
                    _check_text(k)
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in value)


def _check_text(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(f"the request body holds a string that is not valid Unicode (a lone surrogate at "
                       f"character {exc.start})", code="invalid_json") from None
