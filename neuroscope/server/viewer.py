"""The live viewer: the files of ``neuroscope/viewer/`` served as they are (no build step, nothing from a CDN)."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page talks to the chat port (another origin) and to its own; it runs no inline script or style.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' http: https:; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the feature stream URL may carry ?api_key=
    "Cache-Control": "no-cache",
}


def _assets() -> dict[str, tuple[bytes, str]]:
    """URL path -> (body, content type), read once from the package."""
    out: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("neuroscope.viewer").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in CONTENT_TYPES:
            out[f"/{entry.name}"] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    out["/"] = out.pop("/index.html")
    out["/favicon.ico"] = out["/favicon.svg"]  # what a browser asks for when a page names no icon
    return out


def add_viewer_routes(app: web.Application) -> frozenset[str]:
    """Serve the viewer at ``GET /``; returns its paths (they need no API key: the page asks for it)."""
    assets = _assets()

    def handler(body: bytes, content_type: str):
        async def serve(request: web.Request) -> web.Response:
            return web.Response(body=body, headers={"Content-Type": content_type, **PAGE_HEADERS})

        return serve

    for path, (body, content_type) in assets.items():
        app.router.add_get(path, handler(body, content_type))
    return frozenset(assets)
