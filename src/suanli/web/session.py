"""Signing in to the console with an API token.

The token is kept in an HttpOnly, SameSite=Strict cookie scoped to ``/ui``: the
page's scripts cannot read it, and another site cannot make the browser send it.
Every form that changes something also carries a token derived from it (``csrf``),
checked on each POST, as a second line against cross-site requests.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import parse_qs

from fastapi import Request

COOKIE = "suanli_console"
MAX_FORM_BYTES = 1 << 20  # the Guard in front of the app refuses larger bodies already


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the token the pages call the API with, its role and owner."""

    token: str
    role: str
    owner: str

    @property
    def csrf(self) -> str:
        return csrf_for(self.token)


class SignInNeeded(Exception):
    """No cookie, or one whose token is unknown (revoked): the page asks to sign in."""


class BadForm(Exception):
    """A POST without the form token of the signed-in viewer (a cross-site request)."""


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), b"suanli-console-form", hashlib.sha256).hexdigest()[:32]


async def form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the last value of each); no multipart is accepted.
    A form a browser posts from another site is refused here, the sign-in form too
    (else a site could sign a visitor in as its own tenant and read what they submit)."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if (site is not None and site not in ("same-origin", "none")) or (
        origin is not None and origin != own
    ):
        raise BadForm("this form came from another site; open the console and post it there")
    body = (await request.body())[:MAX_FORM_BYTES].decode("utf-8", "replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


def check_form(viewer: Viewer, fields: dict[str, str]) -> None:
    if not hmac.compare_digest(fields.get("csrf", "").encode(), viewer.csrf.encode()):
        raise BadForm("this form is stale or came from another site; reload the page")
