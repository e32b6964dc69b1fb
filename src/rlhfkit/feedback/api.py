# ruff: noqa: B008  (FastAPI declares dependencies as default values)
"""The JSON API of the feedback app (OpenAPI at ``/docs``); the pages use exactly these calls."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from . import report
from . import transfer as T
from .errors import INT32_MAX, StoreError
from .store import (
    DEFAULT_WORKSPACE,
    MAX_GOLD_EVERY,
    MAX_LOCK_SECONDS,
    MAX_OVERLAP,
    MAX_TIME_MS,
    User,
)
from .web import Web, project_json, user_json

ItemId = PathParam(ge=1, le=INT32_MAX, description="an item id from a task")

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
    time_ms: int | None = Field(default=None, ge=0, le=MAX_TIME_MS,
                                description="time the annotator spent, as measured by the client")
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
    questions: list[str] = Field(max_length=20)
    overlap: int = Field(default=1, ge=1, le=MAX_OVERLAP)
    guidelines: str = Field(default="", max_length=50_000)
    lock_seconds: int = Field(default=600, ge=1, le=MAX_LOCK_SECONDS)
    gold_every: int = Field(default=0, ge=0, le=MAX_GOLD_EVERY)
    categories: list[str] | None = Field(default=None, max_length=50)
    arena: bool = False
    workspace: str = Field(default=DEFAULT_WORKSPACE, max_length=64,
                           description="the workspace it belongs to: only its members label it")
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
    workspaces: list[str] | None = Field(default=None, max_length=100,
                                         description="workspaces it joins (default: the default one)")


class InviteIn(BaseModel):
    """A new one-time invite link."""

    name: str = Field(max_length=64)
    role: Literal["admin", "annotator"] = "annotator"
    workspaces: list[str] | None = Field(default=None, max_length=100)


class WorkspaceIn(BaseModel):
    """A new workspace."""

    name: str = Field(max_length=64)


class MemberIn(BaseModel):
    """An account to add to a workspace."""

    user: str = Field(max_length=64)


# -- routes ---------------------------------------------------------------------------------


def add_routes(app: FastAPI, web: Web) -> None:
    """Add every ``/api/...`` route."""
    _account_routes(app, web)
    _annotator_routes(app, web)
    _admin_routes(app, web)
    _workspace_routes(app, web)


def _account_routes(app: FastAPI, web: Web) -> None:
    @app.get("/api/health", tags=["api"])
    def health() -> dict:
        """Liveness check."""
        return {"ok": True}

    @app.post("/api/login", tags=["api"], response_model=LoginOut)
    def api_login(body: LoginIn, request: Request, response: Response):
        """Log in; the token works as a cookie (set here) or as a Bearer header."""
        user = web.try_login(request, body.username, body.password)
        if user is None:
            raise StoreError("wrong user name or password", 401)
        token = web.login(response, request, user)
        return {"token": token, "csrf_token": web.browser_csrf(request), "user": user_json(user)}

    @app.post("/api/logout", tags=["api"])
    def api_logout(request: Request, response: Response, user: User = Depends(web.api_user)) -> dict:
        """End this session."""
        web.logout(request, response)
        return {"ok": True}

    @app.get("/api/me", tags=["api"])
    def api_me(user: User = Depends(web.api_user)) -> dict:
        """Who is logged in."""
        return user_json(user)


def _annotator_routes(app: FastAPI, web: Web) -> None:
    store = web.store

    @app.get("/api/projects", tags=["api"])
    def api_projects(user: User = Depends(web.api_user)) -> list[dict]:
        """The projects of your workspaces (admins: all) with your own progress."""
        return [project_json(p, store.user_progress(user, p.name)) for p in store.list_projects(user)]

    @app.get("/api/projects/{project}/next", tags=["api"],
             responses={204: {"description": "nothing left for you in this project"}})
    def api_next(project: str, user: User = Depends(web.api_user)):
        """Your next item, locked for you until ``lock_expires_at``; 204 when you are done."""
        task = store.next_task(user, project)
        if task is None:
            return Response(status_code=204)
        return task.to_json()

    @app.post("/api/projects/{project}/items/{item_id}/labels", tags=["api"], status_code=201,
              responses={200: {"description": "this submission_key was already stored; nothing new written"}})
    def api_submit(project: str, body: SubmitIn, response: Response, item_id: int = ItemId,
                   user: User = Depends(web.api_user)) -> dict:
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
    def api_release(project: str, item_id: int = ItemId, user: User = Depends(web.api_user)) -> dict:
        """Give an item back without labelling it (skip)."""
        store.release(user, project, item_id)
        return {"ok": True}

    @app.get("/api/projects/{project}/labels", tags=["api"])
    def api_labels(project: str, all: bool = False, user: User = Depends(web.api_user)) -> list[dict]:
        """Your own labels; admins may ask for everyone's with ``?all=true``."""
        if all and user.role != "admin":
            raise StoreError("only admins may read other annotators' labels", 403)
        return store.labels(project, None if all else user)


def _admin_routes(app: FastAPI, web: Web) -> None:
    store = web.store

    @app.post("/api/projects", tags=["admin"], status_code=201)
    def api_create_project(body: ProjectIn, user: User = Depends(web.api_admin)) -> dict:
        """Create a project (admin), optionally with its items."""
        p = store.create_project(body.name, body.questions, overlap=body.overlap,
                                 guidelines=body.guidelines, lock_seconds=body.lock_seconds,
                                 gold_every=body.gold_every, categories=body.categories,
                                 arena=body.arena, workspace=body.workspace,
                                 items=[i.model_dump() for i in body.items])
        return dict(project_json(p), workspace=body.workspace, items_added=len(body.items))

    @app.post("/api/projects/{project}/items", tags=["admin"], status_code=201)
    def api_add_items(project: str, body: ItemsIn, user: User = Depends(web.api_admin)) -> dict:
        """Add items to a project (admin)."""
        return {"items_added": store.add_items(project, [i.model_dump() for i in body.items])}

    @app.get("/api/projects/{project}/stats", tags=["admin"])
    def api_stats(project: str, user: User = Depends(web.api_admin)) -> dict:
        """Progress, agreement per question, per-annotator agreement and honeypot accuracy."""
        return report.project_stats(store, project)

    @app.get("/api/projects/{project}/arena", tags=["admin"])
    def api_arena(project: str, user: User = Depends(web.api_admin)) -> dict:
        """Bradley–Terry ratings with bootstrap intervals and the win/tie/lose table."""
        return report.arena_stats(store, project)

    @app.get("/api/projects/{project}/export", tags=["admin"])
    def api_export(project: str, include_gold: bool = False, user: User = Depends(web.api_admin)):
        """The project's labels as rlhfkit records, one JSON object per line."""
        lines = [json.dumps({"kind": r.kind, **r.to_dict()}, ensure_ascii=False)
                 for r in T.project_records(store, project, include_gold)]
        return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""),
                                 media_type="application/x-ndjson",
                                 headers={"Content-Disposition": f'attachment; filename="{project}.jsonl"'})

    @app.post("/api/users", tags=["admin"], status_code=201)
    def api_create_user(body: UserIn, user: User = Depends(web.api_admin)) -> dict:
        """Create an account (admin); machine annotators use source=simulated or ai."""
        return user_json(store.create_user(body.name, body.password, body.role, body.source,
                                           workspaces=body.workspaces))

    @app.post("/api/invites", tags=["admin"], status_code=201)
    def api_invite(body: InviteIn, request: Request, user: User = Depends(web.api_admin)) -> dict:
        """Create a one-time invite link for a new account (admin)."""
        token = store.create_invite(body.name, body.role, workspaces=body.workspaces)
        return {"url": str(request.base_url).rstrip("/") + f"/invite/{token}"}


def _workspace_routes(app: FastAPI, web: Web) -> None:
    store = web.store

    @app.get("/api/workspaces", tags=["api"])
    def api_workspaces(user: User = Depends(web.api_user)) -> list[dict]:
        """Workspaces with their members and projects (admin: all; others: their own, names only)."""
        spaces = store.workspaces()
        if user.role == "admin":
            return spaces
        return [{"name": w["name"]} for w in spaces if user.name in w["members"]]

    @app.post("/api/workspaces", tags=["admin"], status_code=201)
    def api_create_workspace(body: WorkspaceIn, user: User = Depends(web.api_admin)) -> dict:
        """Create a workspace (admin)."""
        return {"name": store.create_workspace(body.name).name, "members": [], "projects": []}

    @app.post("/api/workspaces/{workspace}/members", tags=["admin"], status_code=201)
    def api_add_member(workspace: str, body: MemberIn, response: Response,
                       user: User = Depends(web.api_admin)) -> dict:
        """Let an account label the workspace's projects (admin); 200 if it already could."""
        if not store.add_member(workspace, body.user):
            response.status_code = 200
        return {"workspace": workspace, "user": body.user}

    @app.delete("/api/workspaces/{workspace}/members/{member}", tags=["admin"])
    def api_remove_member(workspace: str, member: str, user: User = Depends(web.api_admin)) -> dict:
        """Take an account out of a workspace (admin); the labels it gave stay."""
        if not store.remove_member(workspace, member):
            raise StoreError(f"{member!r} is not a member of workspace {workspace!r}", 404)
        return {"workspace": workspace, "user": member, "removed": True}
