"""The web page: one static HTML file, a script and a style sheet, served as they are (no build step, no CDN).

The page holds no data, so it is served without a key; everything it shows comes from the native API,
which it calls with the key the user enters (sent as `Authorization: Bearer`, never in a URL).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.params import Depends
from fastapi.responses import FileResponse

from imagegen.server.service import Service

STATIC_DIR = Path(__file__).parent / "static"
# The only files served besides the page.
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "icon.svg": "image/svg+xml"}
# Scripts and styles from our own files only (no inline ones), so a prompt that slipped into the page as
# markup still could not run; images are blob: URLs because /v1/images needs the key, which <img> cannot send.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' blob:; media-src 'self' blob:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def router(service: Service, auth: Depends) -> APIRouter:
    """GET / (the page), GET /web/<asset> and GET /favicon.ico. `auth` is not applied: the page and its code are
    public, the API calls they make are what the key protects."""
    routes = APIRouter(include_in_schema=False)

    @routes.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=HEADERS)

    @routes.get("/web/{name}")
    def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404, f"no file {name!r}")
        return FileResponse(STATIC_DIR / name, media_type=ASSETS[name], headers=HEADERS)

    @routes.get("/favicon.ico")
    def favicon() -> FileResponse:
        """The page links its icon, but browsers still ask for /favicon.ico on the server's other pages (a JSON
        answer opened in a tab): the same icon, so that their consoles show no 404."""
        return asset("icon.svg")

    return routes
