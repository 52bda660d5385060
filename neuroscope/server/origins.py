"""Which browser origins may call the server (CORS), and which bind addresses are loopback. No aiohttp here.

An origin pattern is ``*`` (any origin), ``scheme://host``, ``scheme://host:port`` or ``scheme://host:*``
(any port). Loopback origins on any port are always allowed.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_PATTERNS = ("http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*")
ANY_PORT = -1
_HOST = re.compile(r"[a-z0-9._~%:-]+")  # a DNS name, an IPv4 address or an IPv6 one (brackets removed)


@dataclass(frozen=True)
class OriginPattern:
    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int  # ANY_PORT for ``:*``

    def matches(self, origin: tuple[str, str, int]) -> bool:
        scheme, host, port = origin
        return scheme == self.scheme and host == self.host and self.port in (ANY_PORT, port)


def parse_origin(value: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` as sent in an ``Origin`` header -> (scheme, host, port); None if it is not one
    (``null``, a path, garbage)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username or parts.password or not _HOST.fullmatch(parts.hostname.lower()):
        return None
    return parts.scheme, parts.hostname.lower(), port if port is not None else DEFAULT_PORTS[parts.scheme]


def host_of(authority: str) -> str | None:
    """The host name in a ``Host`` header (``name[:port]``), lower case, IPv6 without brackets; None if malformed."""
    parsed = parse_origin(f"http://{authority}")
    return parsed[1] if parsed else None


def parse_pattern(value: str) -> OriginPattern:
    """One ``--allowed-origins`` entry (other than ``*``); ``ValueError`` with a user-facing message."""
    text = value.strip().rstrip("/")
    any_port = text.endswith(":*")
    origin = parse_origin(text[:-2] + ":1" if any_port else text)
    if origin is None:
        raise ValueError(f"--allowed-origins: {value!r} is not an origin; use scheme://host[:port] "
                         "(e.g. http://example.com:3000, http://example.com:* for any port) or *")
    scheme, host, port = origin
    return OriginPattern(scheme, host, ANY_PORT if any_port else port)


def parse_allowed_origins(values: list[str] | tuple[str, ...]) -> tuple[bool, tuple[OriginPattern, ...]]:
    """(any origin allowed, patterns): loopback patterns first, then the given ones."""
    entries = [v.strip() for v in values if v.strip()]
    any_origin = "*" in entries
    patterns = [parse_pattern(p) for p in LOOPBACK_PATTERNS]
    patterns += [parse_pattern(v) for v in entries if v != "*"]
    return any_origin, tuple(patterns)


def split_origins(text: str) -> tuple[str, ...]:
    """``--allowed-origins a,b`` -> ("a", "b")."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def is_loopback_host(host: str) -> bool:
    """Whether binding to ``host`` keeps the server on this machine."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class OriginPolicy:
    any_origin: bool
    patterns: tuple[OriginPattern, ...]

    @classmethod
    def from_list(cls, values: list[str] | tuple[str, ...] = ()) -> "OriginPolicy":
        return cls(*parse_allowed_origins(values))

    def allows(self, origin_header: str) -> bool:
        if self.any_origin:
            return True
        origin = parse_origin(origin_header)
        return origin is not None and any(p.matches(origin) for p in self.patterns)
