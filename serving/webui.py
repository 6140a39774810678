"""GET /ui: the web page for people who classify galaxies (serving/ui/: HTML, CSS and plain JavaScript).

Static files shipped in the package: no build step and nothing from a CDN (the machines may be offline).
The page calls the service's own endpoints (/models, /classify, /explain, /feedback) from the browser;
it holds no data, so API keys (serving/auth.py) do not guard it, only the endpoints it calls.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

UI_DIR = Path(__file__).with_name("ui")
PAGE = "/ui"  # the page; its files are under PAGE/ (serving/auth.py leaves both open)
PAGE_HEADERS = {
    # the page runs only its own script and talks only to this server
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


async def page(request: Request) -> Response:
    return FileResponse(UI_DIR / "index.html", headers=PAGE_HEADERS)


def ui_app() -> Starlette:
    """GET /ui (the page) and GET /ui/<file> (its script and style sheet), to mount at the server's root."""
    return Starlette(
        routes=[
            Route(PAGE, page, methods=["GET", "HEAD"]),
            Mount(PAGE, StaticFiles(directory=UI_DIR), name="ui-files"),
        ]
    )
