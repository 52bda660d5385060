"""Which browser origins may call the server (CORS), which ``Host`` names it answers to, and which bind addresses
are loopback. No aiohttp here.

An origin pattern is ``*`` (any origin), ``scheme://host``, ``scheme://host:port`` or ``scheme://host:*``
(any port). Loopback origins on any port are always allowed.

A ``Host`` check stops DNS rebinding: a page on a foreign name that re-resolves to 127.0.0.1 sends its own
name as ``Host``. On a loopback bind only loopback names and the bind address are answered (any port), plus
the ``--allowed-hosts`` names; a bind to another address answers any name unless ``--allowed-hosts`` is given.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_PATTERNS = ("http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*")
ANY_PORT = -1
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")  # a DNS name or an IPv4 address
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


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
            or parts.fragment or parts.username or parts.password or not _valid_host(parts.hostname.lower()):
        return None
    return parts.scheme, parts.hostname.lower(), port if port is not None else DEFAULT_PORTS[parts.scheme]


def _valid_host(host: str) -> bool:
    """A DNS name, an IPv4 address or an IPv6 one (brackets removed); no percent-encoding, no zone id."""
    if "%" in host:
        return False
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return _NAME.fullmatch(host) is not None


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


def parse_allowed_hosts(values: list[str] | tuple[str, ...]) -> tuple[bool, frozenset[str]]:
    """``--allowed-hosts`` entries -> (any host allowed, names): a host name or IP address without a port
    (IPv6 with or without brackets), or ``*``; ``ValueError`` with a user-facing message."""
    entries = [v.strip() for v in values if v.strip()]
    names = set()
    for value in entries:
        if value == "*":
            continue
        name = value.lower()
        name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
        if not _valid_host(name):
            raise ValueError(f"--allowed-hosts: {value!r} is not a host name; use a name or an IP address without "
                             "a port (e.g. neuroscope.example.com, 192.0.2.7), or *")
        names.add(name)
    return "*" in entries, frozenset(names)


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` names the server answers to (any port)."""

    any_host: bool
    names: frozenset[str]

    @classmethod
    def for_bind(cls, bind_host: str, allowed: list[str] | tuple[str, ...] = ()) -> "HostPolicy":
        any_host, names = parse_allowed_hosts(allowed)
        if not allowed and not is_loopback_host(bind_host):
            any_host = True  # a public bind without --allowed-hosts answers any name
        bind = bind_host.strip().strip("[]").lower()
        return cls(any_host, frozenset({*LOOPBACK_NAMES, *names, *([bind] if bind else [])}))

    def allows(self, host_header: str | None) -> bool:
        """Whether a request with this ``Host`` header is answered; none at all (not a browser) always is."""
        if self.any_host or host_header is None:
            return True
        host = host_of(host_header)
        return host is not None and host in self.names
