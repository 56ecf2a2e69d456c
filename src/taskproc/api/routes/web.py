"""The web dashboard at /: a static page (plain ES modules and CSS, no build step) that talks to /api/v1.

The page itself is public; everything it shows comes from /api/v1 calls that carry the API key the user typed
(kept in the browser's sessionStorage only).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

# The page only loads its own files and only talks to its own origin: injected markup could not run or leak.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)
# StaticFiles answers conditional requests (ETag, 304) and refuses paths outside its directory.
_pages = StaticFiles(directory=WEB_DIR, check_dir=False)
_static = StaticFiles(directory=WEB_DIR / "static", check_dir=False)


def _no_cache(response: Response, *, page: bool = False) -> Response:
    # Revalidated on every load (cheap with the ETag), so an upgrade shows at once.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if page:
        response.headers.update(SECURITY_HEADERS)
    return response


@router.api_route("/", methods=["GET", "HEAD"])
async def index(request: Request) -> Response:
    return _no_cache(await _pages.get_response("index.html", request.scope), page=True)


@router.api_route("/favicon.ico", methods=["GET", "HEAD"])
async def favicon(request: Request) -> Response:
    return _no_cache(await _static.get_response("favicon.svg", request.scope))


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"])
async def static(path: str, request: Request) -> Response:
    """The dashboard's modules, styles and icons."""
    return _no_cache(await _static.get_response(path, request.scope))
