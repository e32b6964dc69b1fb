# ruff: noqa: B008  (FastAPI declares dependencies and form fields as default values)
"""The server-rendered pages: login, invite, projects, labelling, admin."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse

from . import questions as Q
from . import report
from . import transfer as T
from .errors import StoreError
from .store import DEFAULT_WORKSPACE, User
from .web import TooManyLogins, Web

UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv", ".txt", ".parquet")


def add_routes(app: FastAPI, web: Web) -> None:
    """Add every page route."""
    _account_pages(app, web)
    _annotator_pages(app, web)
    _admin_pages(app, web)


def _account_pages(app: FastAPI, web: Web) -> None:
    store = web.store

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request):
        return web.render(request, "login.html", user=None, error=None)

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False,
              dependencies=[Depends(web.form_csrf)])
    def login_submit(request: Request, username: str = Form(max_length=64),
                     password: str = Form(max_length=1024)):
        try:
            user = web.try_login(request, username, password)
        except TooManyLogins as err:
            page = web.render(request, "login.html", status=429, user=None,
                              error=f"Too many failed logins: try again in {err.retry_after} s.")
            page.headers["Retry-After"] = str(err.retry_after)
            return page
        if user is None:
            return web.render(request, "login.html", status=401, user=None,
                              error="Wrong user name or password.")
        response = RedirectResponse("/", status_code=303)
        web.login(response, request, user)
        return response

    @app.post("/logout", include_in_schema=False, dependencies=[Depends(web.form_csrf)])
    def logout(request: Request):
        response = RedirectResponse("/login", status_code=303)
        web.logout(request, response)
        return response

    @app.get("/invite/{token}", response_class=HTMLResponse, include_in_schema=False)
    def invite_page(token: str, request: Request):
        inv = store.invite_info(token)
        if inv is None:
            raise StoreError("this invite link is invalid, used or expired", 404)
        return web.render(request, "invite.html", user=None, name=inv.name, error=None)

    @app.post("/invite/{token}", response_class=HTMLResponse, include_in_schema=False,
              dependencies=[Depends(web.form_csrf)])
    def invite_submit(token: str, request: Request, password: str = Form(max_length=1024)):
        inv = store.invite_info(token)
        if inv is None:
            raise StoreError("this invite link is invalid, used or expired", 404)
        try:
            user = store.redeem_invite(token, password)
        except StoreError as e:
            if e.status != 400:
                raise
            return web.render(request, "invite.html", status=422, user=None, name=inv.name,
                              error=str(e))
        response = RedirectResponse("/", status_code=303)
        web.login(response, request, user)
        return response


def _annotator_pages(app: FastAPI, web: Web) -> None:
    store = web.store

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request, user: User = Depends(web.page_user)):
        projects = [(p, store.user_progress(user, p.name), store.progress(p.name))
                    for p in store.list_projects(user)]
        return web.render(request, "home.html", projects=projects)

    @app.get("/p/{project}", response_class=HTMLResponse, include_in_schema=False)
    def label_page(project: str, request: Request, user: User = Depends(web.page_user)):
        p = store.project(project, user)
        task = store.next_task(user, project)
        if task is None:
            return web.render(request, "done.html", project=p,
                              mine=store.user_progress(user, project))
        return web.render(request, "label.html", project=p, task=task, task_json=task.to_json(),
                          view=Q.page_view(task.questions, len(task.responses)),
                          done=store.user_progress(user, project))


def _admin_pages(app: FastAPI, web: Web) -> None:
    store = web.store

    def admin_home(request: Request, **extra):
        projects = [(p, store.progress(p.name), store.workspace_name(p)) for p in store.list_projects()]
        ctx = {"invite_url": None, "message": None, **extra}
        return web.render(request, "admin.html", users=store.list_users(), projects=projects,
                          workspaces=store.workspaces(), question_types=Q.QUESTION_TYPES, **ctx)

    @app.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    def admin_page(request: Request, user: User = Depends(web.page_admin)):
        return admin_home(request)

    @app.post("/admin/users", response_class=HTMLResponse, include_in_schema=False,
              dependencies=[Depends(web.form_csrf)])
    def admin_add_user(request: Request, name: str = Form(max_length=64),
                       password: str = Form(default="", max_length=1024),
                       role: str = Form(default="annotator"), source: str = Form(default="human"),
                       workspace: str = Form(default=DEFAULT_WORKSPACE, max_length=64),
                       user: User = Depends(web.page_admin)):
        store.create_user(name, password or None, role, source,
                          workspaces=[workspace] if workspace else [])
        return RedirectResponse("/admin", status_code=303)

    @app.post("/admin/invites", response_class=HTMLResponse, include_in_schema=False,
              dependencies=[Depends(web.form_csrf)])
    def admin_invite(request: Request, name: str = Form(max_length=64),
                     role: str = Form(default="annotator"),
                     workspace: str = Form(default=DEFAULT_WORKSPACE, max_length=64),
                     user: User = Depends(web.page_admin)):
        token = store.create_invite(name, role, workspaces=[workspace] if workspace else [])
        url = str(request.base_url).rstrip("/") + f"/invite/{token}"
        return admin_home(request, invite_url=url,
                          message=f"Invite for {name} created: send them this link once.")

    @app.post("/admin/projects", response_class=HTMLResponse, include_in_schema=False,
              dependencies=[Depends(web.form_csrf)])
    async def admin_create_project(
            request: Request, name: str = Form(max_length=64), questions: list[str] = Form(),
            overlap: int = Form(default=1), guidelines: str = Form(default="", max_length=50_000),
            gold_every: int = Form(default=0), lock_seconds: int = Form(default=600),
            workspace: str = Form(default=DEFAULT_WORKSPACE, max_length=64),
            file: UploadFile = File(), user: User = Depends(web.page_admin)):
        upload = Path(file.filename or "items.jsonl").name
        suffix = Path(upload).suffix or ".jsonl"
        if suffix not in UPLOAD_SUFFIXES:
            raise StoreError(f"upload a {', '.join(UPLOAD_SUFFIXES)} file, not {suffix}", 415)
        data = await file.read()
        with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            tmp.write(data)
            tmp.flush()
            T.create_project_from_file(store, name, tmp.name, questions, shown_as=upload,
                                       overlap=overlap, guidelines=guidelines,
                                       gold_every=gold_every, lock_seconds=lock_seconds,
                                       workspace=workspace)
        return RedirectResponse(f"/admin/p/{name}", status_code=303)

    @app.get("/admin/p/{project}", response_class=HTMLResponse, include_in_schema=False)
    def admin_project(project: str, request: Request, user: User = Depends(web.page_admin)):
        p = store.project(project)
        stats = report.project_stats(store, project)
        arena = report.arena_stats(store, project) if "pairwise" in p.questions else None
        return web.render(request, "admin_project.html", project=p, stats=stats, arena=arena,
                          workspace=store.workspace_name(p))

    _workspace_pages(app, web)


def _workspace_pages(app: FastAPI, web: Web) -> None:
    store = web.store

    @app.post("/admin/workspaces", response_class=HTMLResponse, include_in_schema=False,
              dependencies=[Depends(web.form_csrf)])
    def admin_create_workspace(request: Request, name: str = Form(max_length=64),
                               user: User = Depends(web.page_admin)):
        store.create_workspace(name)
        return RedirectResponse("/admin#workspaces", status_code=303)

    @app.post("/admin/workspaces/{workspace}/members", response_class=HTMLResponse,
              include_in_schema=False, dependencies=[Depends(web.form_csrf)])
    def admin_member(workspace: str, request: Request, member: str = Form(max_length=64),
                     action: str = Form(default="add"), user: User = Depends(web.page_admin)):
        if action == "remove":
            store.remove_member(workspace, member)
        else:
            store.add_member(workspace, member)
        return RedirectResponse("/admin#workspaces", status_code=303)
