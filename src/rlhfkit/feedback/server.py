# ruff: noqa: B008  (FastAPI declares dependencies and form fields as default values)
"""The feedback web app: server-rendered pages plus the JSON API they use (OpenAPI at /docs).

Start it with ``rlhfkit label serve --db sqlite:///feedback.db`` or build it in Python::

    from rlhfkit.feedback.server import create_app
    app = create_app("sqlite:///feedback.db")

Security model:
    * a session is a signed token in an HttpOnly, SameSite=Lax cookie (Secure over HTTPS), or
      an ``Authorization: Bearer`` header for machine annotators;
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
import secrets
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from . import questions as Q
from .security import check_csrf, csrf_token, make_session_token, read_session_token
from .store import Store, StoreError, User

HERE = Path(__file__).parent
SESSION_COOKIE = "rk_session"
CSRF_COOKIE = "rk_csrf"
MAX_JSON_BODY = 1_000_000  # bytes, any API request
MAX_UPLOAD_BODY = 20_000_000  # bytes, project creation and item upload
UPLOAD_PATHS = ("/admin/projects", "/api/projects")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class NotLoggedIn(Exception):
    """Raised by page dependencies: the handler sends the browser to the login page."""


class CsrfFailed(Exception):
    """A state-changing request without a valid CSRF token."""


# -- request and response bodies (they make up the OpenAPI schema at /docs) -----------------


class LoginIn(BaseModel):
    """Login request."""

    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class LoginOut(BaseModel):
    """Login answer."""

    token: str = Field(description="send as `Authorization: Bearer <token>` (machines)")
    csrf_token: str = Field(description="echo as `X-CSRF-Token` when using the cookie")
    user: dict


class SubmitIn(BaseModel):
    """One submission: the answers to every question of an item."""

    answers: dict[str, Any] = Field(description="{question type: answer in display terms}")
    submission_key: str = Field(min_length=8, max_length=64,
                                description="client-chosen; a retry with the same key is not stored twice")
    time_ms: int | None = Field(default=None, ge=0, description="time the annotator spent, as measured by the client")
    next: bool = Field(default=False, description="also hand out your next item (in the same transaction)")


class ItemIn(BaseModel):
    """An item to label (see Store.add_items)."""

    prompt: str | list[dict[str, Any]] = ""
    responses: list[str | dict[str, Any]] = []
    gold: dict[str, Any] | None = None
    id: str | None = None
    meta: dict[str, Any] = {}


class ProjectIn(BaseModel):
    """A new project and, optionally, its first items."""

    name: str = Field(max_length=64)
    questions: list[str]
    overlap: int = Field(default=1, ge=1, le=100)
    guidelines: str = Field(default="", max_length=50_000)
    lock_seconds: int = Field(default=600, ge=1)
    gold_every: int = Field(default=0, ge=0)
    categories: list[str] | None = None
    arena: bool = False
    items: list[ItemIn] = []


class ItemsIn(BaseModel):
    """Items to add to a project."""

    items: list[ItemIn]


class UserIn(BaseModel):
    """A new account."""

    name: str = Field(max_length=64)
    password: str | None = Field(default=None, max_length=1024)
    role: Literal["admin", "annotator"] = "annotator"
    source: Literal["human", "simulated", "ai"] = "human"


class InviteIn(BaseModel):
    """A new one-time invite link."""

    name: str = Field(max_length=64)
    role: Literal["admin", "annotator"] = "annotator"


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
               max_upload: int = MAX_UPLOAD_BODY) -> FastAPI:
    """Build the web app over a store (or a database URL).

    Args:
        store: a :class:`Store` or a database URL.
        secure_cookies: mark cookies Secure; None = only when the request came over HTTPS.
        session_ttl_s: how long a login lasts.
        max_json: byte limit of any API request body.
        max_upload: byte limit of project/item uploads.
    """
    if isinstance(store, str):
        store = Store(store)
    secret = store.secret()
    app = FastAPI(title="rlhfkit feedback", version="0.1.0",
                  description="Collect human (and machine) feedback for RLHF. The pages of this "
                              "app use exactly this API.")
    app.state.store = store
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["questions_help"] = QUESTION_HELP
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # ---- plumbing ----

    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, max_json=max_json, max_upload=max_upload)

    def _secure(request: Request) -> bool:
        if secure_cookies is not None:
            return secure_cookies
        return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"

    def browser_csrf(request: Request) -> str:
        """This browser's CSRF token (creating its cookie on first visit)."""
        cookie = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", None)
        if cookie is None:
            cookie = secrets.token_urlsafe(24)
            request.state.new_csrf = cookie
            request.state.secure_cookie = _secure(request)
        return csrf_token(secret, cookie)

    def authenticate(request: Request) -> tuple[User | None, str]:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            token, how = header[7:].strip(), "bearer"
        else:
            token, how = request.cookies.get(SESSION_COOKIE), "cookie"
        parsed = read_session_token(secret, token)
        if parsed is None:
            return None, how
        user = store.get_user(parsed[0])
        if user is None or not user.active or user.generation != parsed[1]:
            return None, how
        return user, how

    def require_csrf(request: Request, how: str, token: str | None) -> None:
        if how == "bearer":
            return  # a header a browser never adds on its own
        if not check_csrf(secret, request.cookies.get(CSRF_COOKIE), token):
            raise CsrfFailed()

    async def api_user(request: Request) -> User:
        user, how = authenticate(request)
        if user is None:
            raise StoreError("not logged in: send a valid session cookie or Bearer token", 401)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            ctype = request.headers.get("content-type", "")
            if not ctype.startswith("application/json"):
                raise StoreError("send the body as application/json", 415)
            require_csrf(request, how, request.headers.get("x-csrf-token"))
        return user

    async def api_admin(user: User = Depends(api_user)) -> User:
        if user.role != "admin":
            raise StoreError("admins only", 403)
        return user

    async def page_user(request: Request) -> User:
        user, _ = authenticate(request)
        if user is None:
            raise NotLoggedIn()
        return user

    async def page_admin(user: User = Depends(page_user)) -> User:
        if user.role != "admin":
            raise StoreError("admins only", 403)
        return user

    async def form_csrf(request: Request) -> None:
        form = await request.form()
        _, how = authenticate(request)
        require_csrf(request, "cookie", form.get("csrf_token"))

    def render(request: Request, template: str, status: int = 200, **ctx) -> HTMLResponse:
        user, _ = authenticate(request)
        ctx.setdefault("user", user)
        ctx["csrf"] = browser_csrf(request)
        ctx["request"] = request
        return templates.TemplateResponse(request, template, ctx, status_code=status)

    @app.exception_handler(StoreError)
    async def on_store_error(request: Request, exc: StoreError):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        return render(request, "message.html", status=exc.status, title="Cannot do that",
                      message=str(exc))

    @app.exception_handler(CsrfFailed)
    async def on_csrf(request: Request, exc: CsrfFailed):
        msg = "missing or invalid CSRF token: reload the page and try again"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": msg}, status_code=403)
        return render(request, "message.html", status=403, title="Form expired", message=msg)

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

    def login_response(response: Response, request: Request, user: User) -> str:
        token = make_session_token(secret, user.id, user.generation, session_ttl_s)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax",
                            secure=_secure(request), max_age=session_ttl_s)
        return token

    # ---- JSON API ----

    @app.get("/api/health", tags=["api"])
    def health() -> dict:
        """Liveness check."""
        return {"ok": True}

    @app.post("/api/login", tags=["api"], response_model=LoginOut)
    def api_login(body: LoginIn, request: Request, response: Response):
        """Log in; the token works as a cookie (set here) or as a Bearer header."""
        user = store.authenticate(body.username, body.password)
        if user is None:
            raise StoreError("wrong user name or password", 401)
        token = login_response(response, request, user)
        return {"token": token, "csrf_token": browser_csrf(request), "user": _user_json(user)}

    @app.post("/api/logout", tags=["api"])
    def api_logout(response: Response, user: User = Depends(api_user)) -> dict:
        """Forget the session cookie."""
        response.delete_cookie(SESSION_COOKIE)
        return {"ok": True}

    @app.get("/api/me", tags=["api"])
    def api_me(user: User = Depends(api_user)) -> dict:
        """Who is logged in."""
        return _user_json(user)

    @app.get("/api/projects", tags=["api"])
    def api_projects(user: User = Depends(api_user)) -> list[dict]:
        """Projects with your own progress."""
        return [_project_json(p, store.user_progress(user, p.name)) for p in store.list_projects()]

    @app.post("/api/projects", tags=["admin"], status_code=201)
    def api_create_project(body: ProjectIn, user: User = Depends(api_admin)) -> dict:
        """Create a project (admin), optionally with its items."""
        p = store.create_project(body.name, body.questions, overlap=body.overlap,
                                 guidelines=body.guidelines, lock_seconds=body.lock_seconds,
                                 gold_every=body.gold_every, categories=body.categories,
                                 arena=body.arena)
        n = store.add_items(p.name, [i.model_dump() for i in body.items]) if body.items else 0
        return dict(_project_json(p), items_added=n)

    @app.post("/api/projects/{project}/items", tags=["admin"], status_code=201)
    def api_add_items(project: str, body: ItemsIn, user: User = Depends(api_admin)) -> dict:
        """Add items to a project (admin)."""
        return {"items_added": store.add_items(project, [i.model_dump() for i in body.items])}

    @app.get("/api/projects/{project}/next", tags=["api"],
             responses={204: {"description": "nothing left for you in this project"}})
    def api_next(project: str, user: User = Depends(api_user)):
        """Your next item, locked for you until ``lock_expires_at``; 204 when you are done."""
        task = store.next_task(user, project)
        if task is None:
            return Response(status_code=204)
        return task.to_json()

    @app.post("/api/projects/{project}/items/{item_id}/labels", tags=["api"], status_code=201,
              responses={200: {"description": "this submission_key was already stored; nothing new written"}})
    def api_submit(project: str, item_id: int, body: SubmitIn, response: Response,
                   user: User = Depends(api_user)) -> dict:
        """Submit your answers to one item (one transaction; idempotent by submission_key)."""
        label, duplicate, task = store.submit_and_next(user, project, item_id, body.answers,
                                                       body.submission_key, body.time_ms,
                                                       then_next=body.next)
        if duplicate:
            response.status_code = 200
        out = {"label": label, "duplicate": duplicate}
        if body.next:
            out["next"] = task.to_json() if task else None
        return out

    @app.post("/api/projects/{project}/items/{item_id}/release", tags=["api"])
    def api_release(project: str, item_id: int, user: User = Depends(api_user)) -> dict:
        """Give an item back without labelling it (skip)."""
        store.release(user, project, item_id)
        return {"ok": True}

    @app.get("/api/projects/{project}/labels", tags=["api"])
    def api_labels(project: str, all: bool = False, user: User = Depends(api_user)) -> list[dict]:
        """Your own labels; admins may ask for everyone's with ``?all=true``."""
        if all and user.role != "admin":
            raise StoreError("only admins may read other annotators' labels", 403)
        return store.labels(project, None if all else user)

    @app.get("/api/projects/{project}/stats", tags=["admin"])
    def api_stats(project: str, user: User = Depends(api_admin)) -> dict:
        """Progress, agreement per question, per-annotator agreement and honeypot accuracy."""
        from .report import project_stats

        return project_stats(store, project)

    @app.get("/api/projects/{project}/arena", tags=["admin"])
    def api_arena(project: str, user: User = Depends(api_admin)) -> dict:
        """Bradley–Terry ratings with bootstrap intervals and the win/tie/lose table."""
        from .report import arena_stats

        return arena_stats(store, project)

    @app.get("/api/projects/{project}/export", tags=["admin"])
    def api_export(project: str, include_gold: bool = False, user: User = Depends(api_admin)):
        """The project's labels as rlhfkit records, one JSON object per line."""
        from .transfer import project_records

        lines = [json.dumps({"kind": r.kind, **r.to_dict()}, ensure_ascii=False)
                 for r in project_records(store, project, include_gold)]
        return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""),
                                 media_type="application/x-ndjson",
                                 headers={"Content-Disposition": f'attachment; filename="{project}.jsonl"'})

    @app.post("/api/users", tags=["admin"], status_code=201)
    def api_create_user(body: UserIn, user: User = Depends(api_admin)) -> dict:
        """Create an account (admin); machine annotators use source=simulated or ai."""
        return _user_json(store.create_user(body.name, body.password, body.role, body.source))

    @app.post("/api/invites", tags=["admin"], status_code=201)
    def api_invite(body: InviteIn, request: Request, user: User = Depends(api_admin)) -> dict:
        """Create a one-time invite link for a new account (admin)."""
        token = store.create_invite(body.name, body.role)
        return {"url": str(request.base_url).rstrip("/") + f"/invite/{token}"}

    # ---- pages ----

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request):
        return render(request, "login.html", user=None, error=None)

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False,
              dependencies=[Depends(form_csrf)])
    def login_submit(request: Request, username: str = Form(max_length=64),
                     password: str = Form(max_length=1024)):
        user = store.authenticate(username, password)
        if user is None:
            return render(request, "login.html", status=401, user=None,
                          error="Wrong user name or password.")
        response = RedirectResponse("/", status_code=303)
        login_response(response, request, user)
        return response

    @app.post("/logout", include_in_schema=False, dependencies=[Depends(form_csrf)])
    def logout(request: Request):
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request, user: User = Depends(page_user)):
        projects = [(p, store.user_progress(user, p.name), store.progress(p.name))
                    for p in store.list_projects()]
        return render(request, "home.html", projects=projects)

    @app.get("/p/{project}", response_class=HTMLResponse, include_in_schema=False)
    def label_page(project: str, request: Request, user: User = Depends(page_user)):
        p = store.project(project)
        task = store.next_task(user, project)
        if task is None:
            return render(request, "done.html", project=p,
                          mine=store.user_progress(user, project))
        return render(request, "label.html", project=p, task=task,
                      task_json=task.to_json(), done=store.user_progress(user, project))

    @app.get("/invite/{token}", response_class=HTMLResponse, include_in_schema=False)
    def invite_page(token: str, request: Request):
        inv = store.invite_info(token)
        if inv is None:
            raise StoreError("this invite link is invalid, used or expired", 404)
        return render(request, "invite.html", user=None, name=inv.name, error=None)

    @app.post("/invite/{token}", response_class=HTMLResponse, include_in_schema=False,
              dependencies=[Depends(form_csrf)])
    def invite_submit(token: str, request: Request, password: str = Form(max_length=1024)):
        inv = store.invite_info(token)
        if inv is None:
            raise StoreError("this invite link is invalid, used or expired", 404)
        try:
            user = store.redeem_invite(token, password)
        except StoreError as e:
            if e.status != 400:
                raise
            return render(request, "invite.html", status=422, user=None, name=inv.name, error=str(e))
        response = RedirectResponse("/", status_code=303)
        login_response(response, request, user)
        return response

    @app.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    def admin_page(request: Request, user: User = Depends(page_admin), invite: str | None = None):
        projects = [(p, store.progress(p.name)) for p in store.list_projects()]
        return render(request, "admin.html", users=store.list_users(), projects=projects,
                      invite_url=None, message=None, question_types=Q.QUESTION_TYPES)

    @app.post("/admin/users", response_class=HTMLResponse, include_in_schema=False,
              dependencies=[Depends(form_csrf)])
    def admin_add_user(request: Request, name: str = Form(max_length=64),
                       password: str = Form(default="", max_length=1024),
                       role: str = Form(default="annotator"), source: str = Form(default="human"),
                       user: User = Depends(page_admin)):
        store.create_user(name, password or None, role, source)
        return RedirectResponse("/admin", status_code=303)

    @app.post("/admin/invites", response_class=HTMLResponse, include_in_schema=False,
              dependencies=[Depends(form_csrf)])
    def admin_invite(request: Request, name: str = Form(max_length=64),
                     role: str = Form(default="annotator"), user: User = Depends(page_admin)):
        token = store.create_invite(name, role)
        projects = [(p, store.progress(p.name)) for p in store.list_projects()]
        url = str(request.base_url).rstrip("/") + f"/invite/{token}"
        return render(request, "admin.html", users=store.list_users(), projects=projects,
                      invite_url=url, message=f"Invite for {name} created: send them this link once.",
                      question_types=Q.QUESTION_TYPES)

    @app.post("/admin/projects", response_class=HTMLResponse, include_in_schema=False,
              dependencies=[Depends(form_csrf)])
    async def admin_create_project(
            request: Request, name: str = Form(max_length=64), questions: list[str] = Form(),
            overlap: int = Form(default=1), guidelines: str = Form(default="", max_length=50_000),
            gold_every: int = Form(default=0), lock_seconds: int = Form(default=600),
            file: UploadFile = File(), user: User = Depends(page_admin)):
        import tempfile

        from .transfer import create_project_from_file

        suffix = Path(file.filename or "items.jsonl").suffix or ".jsonl"
        if suffix not in (".jsonl", ".json", ".csv", ".txt", ".parquet"):
            raise StoreError(f"upload a .jsonl, .json, .csv, .txt or .parquet file, not {suffix}", 415)
        data = await file.read()
        with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            tmp.write(data)
            tmp.flush()
            create_project_from_file(store, name, tmp.name, questions, overlap=overlap,
                                     guidelines=guidelines, gold_every=gold_every,
                                     lock_seconds=lock_seconds)
        return RedirectResponse(f"/admin/p/{name}", status_code=303)

    @app.get("/admin/p/{project}", response_class=HTMLResponse, include_in_schema=False)
    def admin_project(project: str, request: Request, user: User = Depends(page_admin)):
        from .report import arena_stats, project_stats

        p = store.project(project)
        stats = project_stats(store, project)
        arena = arena_stats(store, project) if "pairwise" in p.questions else None
        return render(request, "admin_project.html", project=p, stats=stats, arena=arena)

    return app


QUESTION_HELP = {
    "write_prompt": "Write a prompt",
    "demonstration": "Write the response you would want",
    "binary": "Is this response good?",
    "pairwise": "Which response do you prefer?",
    "rank": "Rank the responses from best to worst",
    "likert": "Rate the response (1 = very bad, 7 = excellent)",
    "spans": "Mark problems in the response",
    "correction": "Correct the response",
}


def _user_json(user: User) -> dict:
    return {"id": user.id, "name": user.name, "role": user.role, "source": user.source}


def _project_json(p, mine: int | None = None) -> dict:
    out = {"name": p.name, "questions": p.questions, "overlap": p.overlap,
           "guidelines": p.guidelines, "gold_every": p.gold_every,
           "lock_seconds": p.lock_seconds, "categories": p.categories, "arena": p.arena}
    if mine is not None:
        out["my_labels"] = mine
    return out
