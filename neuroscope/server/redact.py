"""Credentials never leave the process: what a raw request line or header could carry is removed from every log
record of the server (and of aiohttp's server side) and from the answer to a request aiohttp cannot parse.

aiohttp's parser errors quote the offending raw line (``Invalid header value char: b'Authorization: Bearer
...\\x01'``, ``Invalid char in url query: b'GET /...?api_key=...'``); at ``--log-level debug`` those would be
logged, and a 400 that repeats them would echo the key to whoever sent it (or to a proxy's log).
"""

from __future__ import annotations

import logging
import re
import threading

REDACTED = "[redacted]"
# values that end at a quote or a line end (the parser quotes the raw line): everything after the marker goes
_PATTERNS = (
    re.compile(r"(?i)(\b(?:proxy-)?authorization\s*:\s*)[^'\"\r\n]*"),
    re.compile(r"(?i)(\bbearer\s+)[^'\"\r\n]*"),
    re.compile(r"(?i)(\bbasic\s+)[A-Za-z0-9+/=]{8,}"),
    re.compile(r"(?i)(\bapi_key=)[^&#'\"\r\n]*"),
)
# loggers whose records may quote a request: aiohttp's server side and this package's
LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.internal", "neuroscope.server",
           "neuroscope.engine")

_secrets: set[str] = set()
_lock = threading.Lock()


def redact(text: str) -> str:
    """``text`` with every credential-looking value (and every registered secret) replaced by ``[redacted]``."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    for secret in tuple(_secrets):
        text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record (message and traceback) when it holds something to redact; leaves others as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler
            return True
        trace = ""
        if record.exc_info:
            trace = logging.Formatter().formatException(record.exc_info)
        elif record.exc_text:
            trace = record.exc_text
        clean_message, clean_trace = redact(message), redact(trace)
        if clean_message != message or clean_trace != trace:
            record.msg = clean_message + ("\n" + clean_trace if clean_trace else "")
            record.args = ()
            record.exc_info = record.exc_text = None
        return True


_FILTER = RedactingFilter()


def install(secret: str | None = None) -> None:
    """Put the filter on the server's loggers (once) and register ``secret`` to be removed wherever it appears."""
    with _lock:
        if secret:
            _secrets.add(secret)
        for name in LOGGERS:
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)


def parse_error_text(message: str | None, exc: BaseException | None) -> str:
    """A request aiohttp could not parse, described without the raw bytes it quotes (they may hold a key)."""
    text = message or (str(exc) if exc is not None else "") or ""
    first = text.strip().split("\n", 1)[0]
    first = re.split(r"""\s*:?\s*b?['"]""", first, maxsplit=1)[0].rstrip(": ").strip()
    if not re.match(r"[A-Za-z]", first):  # the raw target or line itself, no description
        first = type(exc).__name__ if exc is not None else "bad request"
    return redact(first) or "bad request"
