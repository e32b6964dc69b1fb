"""The feedback web app: server-rendered pages plus the JSON API they use (OpenAPI at /docs).

Start it with ``rlhfkit label serve --db sqlite:///feedback.db`` or build it in Python::

    from rlhfkit.feedback.server import create_app
    app = create_app("sqlite:///feedback.db")

Security model:
    * a session is a random token kept (hashed) in the store and signed with the server's key,
      in an HttpOnly, SameSite=Lax cookie (Secure over HTTPS), or an ``Authorization: Bearer``
      header for machine annotators; logging out or changing the password ends it at once;
    * failed logins are throttled per account and per address (429 with ``Retry-After``);
    * annotators see, take and label only the projects of their workspaces (others: 404);
    * every state-changing request authenticated by cookie must echo the CSRF token (a form
      field ``csrf_token`` or the ``X-CSRF-Token`` header); JSON endpoints also require a JSON
      content type, which a cross-site form cannot send;
    * templates autoescape everything, and a Content-Security-Policy forbids inline scripts,
      so a ``<script>`` inside a prompt or response is shown as text;
    * request bodies are capped (413 with a message), inputs are validated (422 with a
      message), and SQL goes through SQLAlchemy's bound parameters only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from . import api, pages
from .errors import StoreError
from .security import load_secret
from .store import Store
from .web import CSRF_COOKIE, HERE, CsrfFailed, NotLoggedIn, TooManyLogins, Web

MAX_JSON_BODY = 1_000_000  # bytes, any API request
MAX_UPLOAD_BODY = 20_000_000  # bytes, project creation and item upload
UPLOAD_PATHS = ("/admin/projects", "/api/projects")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


# -- middleware -----------------------------------------------------------------------------


class BodyLimit:
    """Refuse request bodies over the limit with 413 before the app reads them."""

    def __init__(self, app, max_json: int, max_upload: int):
        self.app, self.max_json, self.max_upload = app, max_json, max_upload

    async def __call__(self, scope, receive, send):
        """ASGI entry point."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        limit = self.max_upload if (path.startswith(UPLOAD_PATHS) and "/labels" not in path) else self.max_json
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                return await _send_json(send, 400, {"detail": "Content-Length is not a number"})
            if too_big:
                return await _send_json(send, 413, {"detail": f"request body is over the limit of {limit} bytes"})
            return await self.app(scope, receive, send)
        # No Content-Length (chunked): read it here, counting, then replay it.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await _send_json(send, 413, {"detail": f"request body is over the limit of {limit} bytes"})
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class SecurityHeaders:
    """Add the security headers (and a new browser's CSRF cookie) to every response.

    Plain ASGI rather than ``BaseHTTPMiddleware``: cheap per request.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        """ASGI entry point."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        path = scope["path"]
        cookies = b"; ".join(v for k, v in scope["headers"] if k == b"cookie")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if not path.startswith(("/docs", "/redoc")):  # Swagger UI needs its own scripts
                    headers.append((b"content-security-policy", CSP.encode()))
                headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"same-origin")]
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                new = state.get("new_csrf")
                if new and CSRF_COOKIE.encode() + b"=" not in cookies:
                    secure = "; Secure" if state.get("secure_cookie") else ""
                    headers.append((b"set-cookie", f"{CSRF_COOKIE}={new}; HttpOnly; Path=/; "
                                                   f"SameSite=Strict{secure}".encode()))
                message = dict(message, headers=headers)
            await send(message)

        return await self.app(scope, receive, send_with_headers)


async def _send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# -- the app --------------------------------------------------------------------------------


def create_app(store: Store | str, *, secure_cookies: bool | None = None,
               session_ttl_s: int = 14 * 86400, max_json: int = MAX_JSON_BODY,
               max_upload: int = MAX_UPLOAD_BODY, secret: str | None = None,
               secret_file: str | os.PathLike | None = None, trust_proxy: bool = False,
               clock: Callable[[], float] | None = None) -> FastAPI:
    """Build the web app over a store (or a database URL).

    Args:
        store: a :class:`Store` or a database URL.
        secure_cookies: mark cookies Secure; None = only when the request came over HTTPS.
        session_ttl_s: how long a login lasts.
        max_json: byte limit of any API request body.
        max_upload: byte limit of project/item uploads.
        secret: the key that signs sessions and CSRF tokens (at least 32 characters).
        secret_file: a file holding that key. Without either, ``RLHFKIT_SECRET_FILE`` or
            ``RLHFKIT_SECRET``; without those, a key kept in the database (see
            :meth:`Store.secret`).
        trust_proxy: believe ``X-Forwarded-Proto`` and ``X-Forwarded-For``; only behind a
            reverse proxy that sets (and overwrites) them.
        clock: monotonic seconds for the login throttle (tests pass their own).
    """
    if isinstance(store, str):
        store = Store(store)
    key = load_secret(secret, secret_file) or store.secret()
    web = Web(store, key, secure_cookies=secure_cookies, session_ttl_s=session_ttl_s,
              trust_proxy=trust_proxy, clock=clock)
    app = FastAPI(title="rlhfkit feedback", version="0.1.0",
                  description="Collect human (and machine) feedback for RLHF. The pages of this "
                              "app use exactly this API.")
    app.state.store = store
    app.state.web = web
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, max_json=max_json, max_upload=max_upload)
    _error_handlers(app, web)
    api.add_routes(app, web)
    pages.add_routes(app, web)
    return app


def _error_handlers(app: FastAPI, web: Web) -> None:
    """Refusals as JSON for the API and as a page for browsers."""

    @app.exception_handler(StoreError)
    async def on_store_error(request: Request, exc: StoreError):
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyLogins) else None
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)
        page = web.render(request, "message.html", status=exc.status, title="Cannot do that",
                          message=str(exc))
        page.headers.update(headers or {})
        return page

    @app.exception_handler(CsrfFailed)
    async def on_csrf(request: Request, exc: CsrfFailed):
        msg = "missing or invalid CSRF token: reload the page and try again"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": msg}, status_code=403)
        return web.render(request, "message.html", status=403, title="Form expired", message=msg)

    @app.exception_handler(NotLoggedIn)
    async def on_not_logged_in(request: Request, exc: NotLoggedIn):
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors()[:10]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            problems.append(f"{where or 'body'}: {err.get('msg')}")
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, status_code=422)
