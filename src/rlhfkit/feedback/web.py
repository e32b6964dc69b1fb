"""What every route of the web app shares: the store, who is asking, CSRF, page rendering.

:class:`Web` is built once per app by :func:`rlhfkit.feedback.server.create_app`; its
methods are the FastAPI dependencies the routes declare (``Depends(web.api_user)``).
"""

from __future__ import annotations

import math
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from .errors import StoreError
from .security import LoginThrottle, check_csrf, csrf_token, read_session, sign_session
from .store import Store, User

HERE = Path(__file__).parent
SESSION_COOKIE = "rk_session"
CSRF_COOKIE = "rk_csrf"


class NotLoggedIn(Exception):
    """Raised by page dependencies: the handler sends the browser to the login page."""


class CsrfFailed(Exception):
    """A state-changing request without a valid CSRF token."""


class TooManyLogins(StoreError):
    """Too many failed logins for an account or from an address (HTTP 429, ``Retry-After``)."""

    def __init__(self, wait_s: float):
        self.retry_after = max(1, math.ceil(wait_s))
        super().__init__(f"too many failed logins for this account or from this address; "
                         f"try again in {self.retry_after} s", 429)


class Web:
    """The app's shared state and its request dependencies.

    Args:
        store: the feedback store.
        secret: the key that signs sessions and CSRF tokens.
        secure_cookies: mark cookies Secure; None = only when the request came over HTTPS.
        session_ttl_s: how long a login lasts.
        trust_proxy: believe ``X-Forwarded-Proto`` / ``X-Forwarded-For`` (only behind a
            reverse proxy that sets them; any client can send them).
        clock: the login throttle's clock (tests pass their own).
    """

    def __init__(self, store: Store, secret: str, *, secure_cookies: bool | None,
                 session_ttl_s: int, trust_proxy: bool = False, clock=None):
        self.store = store
        self.secret = secret
        self.secure_cookies = secure_cookies
        self.session_ttl_s = session_ttl_s
        self.trust_proxy = trust_proxy
        self.throttle = LoginThrottle(clock=clock or time.monotonic)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    # -- requests ---------------------------------------------------------------------

    def secure(self, request: Request) -> bool:
        """Whether cookies set in answer to this request are marked Secure."""
        if self.secure_cookies is not None:
            return self.secure_cookies
        if self.trust_proxy and request.headers.get("x-forwarded-proto") == "https":
            return True
        return request.url.scheme == "https"

    def client_address(self, request: Request) -> str:
        """Who is asking, for the login throttle: the proxy's word only with ``trust_proxy``."""
        if self.trust_proxy:
            forwarded = request.headers.get("x-forwarded-for", "").split(",")[-1].strip()
            if forwarded:
                return forwarded
        return request.client.host if request.client else "unknown"

    def browser_csrf(self, request: Request) -> str:
        """This browser's CSRF token (creating its cookie on first visit)."""
        cookie = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", None)
        if cookie is None:
            cookie = secrets.token_urlsafe(24)
            request.state.new_csrf = cookie
            request.state.secure_cookie = self.secure(request)
        return csrf_token(self.secret, cookie)

    def session_token(self, request: Request) -> tuple[str | None, str]:
        """The session token a request carries (signature checked) and how (``bearer`` / ``cookie``)."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            value, how = header[7:].strip(), "bearer"
        else:
            value, how = request.cookies.get(SESSION_COOKIE), "cookie"
        return read_session(self.secret, value), how

    def authenticate(self, request: Request) -> tuple[User | None, str]:
        """The logged-in user (or None) and how they authenticated (``bearer`` / ``cookie``)."""
        token, how = self.session_token(request)
        return (None if token is None else self.store.session_user(token)), how

    def try_login(self, request: Request, username: str, password: str) -> User | None:
        """Check a password under the login throttle; None if it is wrong.

        Raises:
            TooManyLogins: this account or address failed too often lately (the password
                is not even checked).
        """
        address = self.client_address(request)
        wait = self.throttle.wait(username, address)
        if wait > 0:
            raise TooManyLogins(wait)
        user = self.store.authenticate(username, password)
        if user is None:
            self.throttle.failed(username, address)
        else:
            self.throttle.succeeded(username)
        return user

    def require_csrf(self, request: Request, how: str, token: str | None) -> None:
        """Refuse a cookie-authenticated change without this browser's CSRF token."""
        if how == "bearer":
            return  # a header a browser never adds on its own
        if not check_csrf(self.secret, request.cookies.get(CSRF_COOKIE), token):
            raise CsrfFailed()

    # -- dependencies -----------------------------------------------------------------

    async def api_user(self, request: Request) -> User:
        """Any logged-in user; a change must be JSON and carry the CSRF token (cookie sessions)."""
        user, how = self.authenticate(request)
        if user is None:
            raise StoreError("not logged in: send a valid session cookie or Bearer token", 401)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            ctype = request.headers.get("content-type", "")
            # DELETE carries no body, and no cross-site form can send one
            if request.method != "DELETE" and not ctype.startswith("application/json"):
                raise StoreError("send the body as application/json", 415)
            self.require_csrf(request, how, request.headers.get("x-csrf-token"))
        return user

    async def api_admin(self, request: Request) -> User:
        """An admin, else 403."""
        user = await self.api_user(request)
        if user.role != "admin":
            raise StoreError("admins only", 403)
        return user

    async def page_user(self, request: Request) -> User:
        """A logged-in user, else a redirect to the login page."""
        user, _ = self.authenticate(request)
        if user is None:
            raise NotLoggedIn()
        return user

    async def page_admin(self, request: Request) -> User:
        """An admin (page), else 403."""
        user = await self.page_user(request)
        if user.role != "admin":
            raise StoreError("admins only", 403)
        return user

    async def form_csrf(self, request: Request) -> None:
        """Every form post carries this browser's CSRF token."""
        form = await request.form()
        self.require_csrf(request, "cookie", form.get("csrf_token"))

    # -- responses --------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        """A page from ``templates/`` with the user and this browser's CSRF token."""
        if "user" not in ctx:
            ctx["user"], _ = self.authenticate(request)
        ctx["csrf"] = self.browser_csrf(request)
        ctx["request"] = request
        return self.templates.TemplateResponse(request, template, ctx, status_code=status)

    def login(self, response: Response, request: Request, user: User) -> str:
        """Start a session for ``user``: set the cookie and return the signed token."""
        value = sign_session(self.secret, self.store.start_session(user, self.session_ttl_s))
        response.set_cookie(SESSION_COOKIE, value, httponly=True, samesite="lax",
                            secure=self.secure(request), max_age=self.session_ttl_s)
        return value

    def logout(self, request: Request, response: Response) -> None:
        """End the session in the store (the token stops working everywhere) and drop the cookie."""
        token, _ = self.session_token(request)
        if token is not None:
            self.store.end_session(token)
        response.delete_cookie(SESSION_COOKIE)


def user_json(user: User) -> dict:
    """An account as the API shows it."""
    return {"id": user.id, "name": user.name, "role": user.role, "source": user.source}


def project_json(p: Any, mine: int | None = None) -> dict:
    """A project as the API shows it (``my_labels``: the caller's own count)."""
    out = {"name": p.name, "questions": p.questions, "overlap": p.overlap,
           "guidelines": p.guidelines, "gold_every": p.gold_every,
           "lock_seconds": p.lock_seconds, "categories": p.categories, "arena": p.arena}
    if mine is not None:
        out["my_labels"] = mine
    return out
