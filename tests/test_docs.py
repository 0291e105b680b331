"""``/docs`` offline: the page and everything it loads come from the service."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from suanli.api import create_app
from suanli.store import Store


def test_docs_load_nothing_from_outside_this_service(tmp_path: Path) -> None:
    client = TestClient(create_app(Store.sqlite(tmp_path)))
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
    assert urls and not [u for u in urls if "://" in u or u.startswith("//")], urls
    for url in urls:  # the script, the stylesheet, the icon, the schema: all served here
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 100, url
    assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text
    # only the files the page needs, and no ReDoc (it would load from a CDN)
    assert client.get("/docs/assets/index.html").status_code == 404
    assert client.get("/docs/assets/..%2F__init__.py").status_code == 404
    assert client.get("/redoc").status_code == 404
