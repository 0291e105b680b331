"""``/docs`` that works offline: Swagger UI from a pinned package, not a CDN.

FastAPI's default ``/docs`` page loads Swagger UI's script and stylesheet from
jsDelivr, so on a machine without internet (most machines in a computing
centre) it is a blank page. The same assets come here from the
``swagger-ui-bundle`` wheel (Swagger UI 4.15.5, Apache-2.0: its licence ships
in the wheel's metadata) and are served by the service itself. ReDoc has no
such package, so ``/redoc`` is not offered rather than offered blank.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

ASSETS = "/docs/assets"
#: the files the page loads, and nothing else of the package's directory
FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def add_docs(app: FastAPI) -> None:
    """``GET /docs`` and the assets it loads, all from this process (no token: the
    OpenAPI schema is public, as FastAPI serves it)."""
    root = Path(swagger_ui_path)

    @app.get("/docs", include_in_schema=False)
    def _docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )

    @app.get(ASSETS + "/{name}", include_in_schema=False)
    def _asset(name: str) -> FileResponse:
        kind = FILES.get(name)
        if kind is None:
            raise HTTPException(404, f"no such asset {name!r}")
        return FileResponse(root / name, media_type=kind)
