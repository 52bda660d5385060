"""How long an HTTP client waits before it asks again: a server's ``Retry-After``, else exponential back-off."""

from __future__ import annotations

import math
import random
import time
from email.utils import parsedate_to_datetime


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for — delay-seconds or an HTTP date (RFC 9110) — at least 0; None when
    it is absent or neither."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff(base: float, attempt: int, cap: float = math.inf) -> float:
    """``base`` doubled per attempt (from 0), at most ``cap``, times a jitter of 0.5..1.5 so that clients that
    failed together do not all ask again together."""
    return min(cap, base * 2 ** attempt) * (0.5 + random.random())
