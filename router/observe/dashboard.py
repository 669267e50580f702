"""The KV hit-rate dashboard: ``GET /dashboard`` and its assets under ``/dashboard/``.

The page is static (``router/observe/static/``: HTML, CSS and our own JavaScript, no third-party code).
In the browser it polls the router's ``/metrics`` once a second and draws everything from that
text, so what it shows agrees with ``/metrics`` by construction; the server side hands out files
and the router's recent totals (``/dashboard/history``, see ``router.observe.history``) to start the
over-time charts from. The files are read once, when the router is built: a missing one fails at startup.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

STATIC_DIR = Path(__file__).with_name("static")
PAGE = "index.html"
ASSETS = {  # name under /dashboard/ -> media type
    "app.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "panels.js": "text/javascript; charset=utf-8",
    "prom.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Always revalidate: after an upgrade the page and its scripts must not mix versions.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def dashboard_router(static_dir: Path = STATIC_DIR) -> APIRouter:
    """Routes for the page and its assets. Raises ``FileNotFoundError`` if a file is missing."""
    page = (static_dir / PAGE).read_bytes()
    assets = {name: (static_dir / name).read_bytes() for name in ASSETS}
    router = APIRouter(include_in_schema=False)

    @router.get("/dashboard")
    async def dashboard() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_HEADERS)

    @router.get("/dashboard/history")
    async def history(request: Request) -> JSONResponse:
        """The router's recent totals (``router.observe.history``), which the page starts its charts from."""
        history = getattr(request.app.state, "history", None)
        if history is None:
            raise HTTPException(503, "no history yet: the router is starting")
        return JSONResponse(history.to_json(), headers=_HEADERS)

    @router.get("/dashboard/{name}")
    async def asset(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404, f"no dashboard asset {name!r}")
        return Response(assets[name], media_type=ASSETS[name], headers=_HEADERS)

    return router
