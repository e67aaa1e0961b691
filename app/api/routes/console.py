"""GET / and /console: the web console (one page, its script and stylesheet, shipped in the
package: no CDN, no build step). The page holds no data; its script reads and acts through the
/v1 API with the key the user gives it, so these routes are public and every action keeps its scope."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from app.api.auth import public
from app.errors import NotFound

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "console"
PAGE = "index.html"
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
CONSOLE_URL = "/console"
HEADERS = {
    # Only this server's own script, styles and API; nothing inline, no frames.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["console"], include_in_schema=False)


@router.get("/", dependencies=[public()])
async def root() -> RedirectResponse:
    """The console is the front page."""
    return RedirectResponse(CONSOLE_URL, status_code=307)


@router.get(CONSOLE_URL, dependencies=[public()])
async def console_page() -> FileResponse:
    return FileResponse(CONSOLE_DIR / PAGE, media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get(CONSOLE_URL + "/{asset}", dependencies=[public()])
async def console_asset(asset: str) -> FileResponse:
    if asset not in ASSETS:
        raise NotFound(f"no console asset {asset!r}; there are {sorted(ASSETS)}")
    return FileResponse(CONSOLE_DIR / asset, media_type=ASSETS[asset], headers=HEADERS)
