"""The API, called in-process with the viewer's token (see the package docstring)."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """A 4xx from the API: its message and problems, shown on the page as they are."""

    def __init__(self, status: int, body: Any) -> None:
        body = body if isinstance(body, dict) else {}
        self.status = status
        self.message = str(body.get("error") or f"HTTP {status}")
        self.problems = [str(p) for p in body.get("problems") or [self.message]]
        super().__init__(self.message)


class Api:
    """One viewer's calls to the app that serves the console (no network hop)."""

    def __init__(self, app: Any, token: str) -> None:
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://console.internal",
            headers={"Authorization": f"Bearer {token}"},
        )

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        r = await self.client.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"error": r.text[:500]}
            raise ApiError(r.status_code, body)
        if r.headers.get("content-type", "").startswith("application/json"):
            return r.json()
        return r.text

    async def get(self, path: str, **params: Any) -> Any:
        return await self.call(
            "GET", path, params={k: v for k, v in params.items() if v is not None}
        )

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.call("POST", path, json=body)
