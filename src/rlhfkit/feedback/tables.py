"""The store's tables, and the migration that brings an older database up to them.

:func:`migrate` runs every time a :class:`~rlhfkit.feedback.store.Store` opens a database. It
creates missing tables and adds the columns later versions introduced, in place, and it never
rewrites a label: a database made before workspaces keeps every row, its projects move into
the ``default`` workspace, and the accounts that existed then become its members.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MAX_NAME = 64
DEFAULT_WORKSPACE = "default"
"""Where projects go when none is named, and the workspace new accounts join by default."""


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""

    pass


class Setting(Base):
    """A key/value setting (the fallback session-signing key, when none is given outside)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    """An account: an admin or an annotator (human, simulated or AI)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    source: Mapped[str] = mapped_column(String(16), default="human")
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)  # bumped when the password changes
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class Invite(Base):
    """A one-time invite link (stored as a hash of its token)."""

    __tablename__ = "invites"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME))
    role: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    workspaces: Mapped[list | None] = mapped_column(JSON, nullable=True)  # None: the default one


class SessionRow(Base):
    """A login: the hash of its token, so the database alone does not hold usable tokens.

    Logging out deletes the row, and changing the password deletes all of the user's, so a
    copied token stops working at once (whether sent as a cookie or a Bearer header).
    """

    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class Workspace(Base):
    """A group of projects and the annotators who may work on them (as in Argilla)."""

    __tablename__ = "workspaces"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class Member(Base):
    """An annotator's membership of a workspace (admins need none: they see every workspace)."""

    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("workspace_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class Project(Base):
    """A set of items and the questions asked about each."""

    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME), unique=True)
    questions: Mapped[list] = mapped_column(JSON)
    guidelines: Mapped[str] = mapped_column(Text, default="")
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    lock_seconds: Mapped[int] = mapped_column(Integer, default=600)
    gold_every: Mapped[int] = mapped_column(Integer, default=0)
    categories: Mapped[list] = mapped_column(JSON)
    arena: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    # NULL only in a database made before workspaces, until migrate() fills it in
    workspace_id: Mapped[int | None] = mapped_column(ForeignKey("workspaces.id"), nullable=True)


class Item(Base):
    """A prompt and the responses to judge (the models that wrote them stay here)."""

    __tablename__ = "items"
    # the queue scans a project's regular items, most-labelled first, then by position
    __table_args__ = (Index("ix_items_queue", "project_id", "is_gold", text("n_done DESC"), "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    prompt: Mapped[Any] = mapped_column(JSON)  # a string or a list of chat messages
    responses: Mapped[list] = mapped_column(JSON)  # [{"text": str, "model": str | None}]
    gold: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # {question: canonical answer}
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    n_done: Mapped[int] = mapped_column(Integer, default=0)


class Assignment(Base):
    """An item handed to one annotator: its lock and the display order they saw."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),
                      Index("ix_assignments_held", "user_id", "project_id", "status"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | done | expired
    order: Mapped[list] = mapped_column(JSON)  # display position j shows response order[j]
    submission_key: Mapped[str] = mapped_column(String(64))  # suggested key for the page
    started_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class Label(Base):
    """One annotator's answers to every question of one item."""

    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("user_id", "submission_key"),
        UniqueConstraint("item_id", "user_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    submission_key: Mapped[str] = mapped_column(String(64))
    answers: Mapped[dict] = mapped_column(JSON)  # {question: canonical answer}
    order: Mapped[list] = mapped_column(JSON)
    time_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)  # as the client measured
    server_ms: Mapped[int] = mapped_column(Integer)  # from hand-out to submission
    created_at: Mapped[float] = mapped_column(Float)


def migrate(engine: Any, write_engine: Any) -> None:
    """Create missing tables and columns, then put workspace-less projects in ``default``.

    Args:
        engine: the store's engine.
        write_engine: the same with the write lock taken up front (SQLite ``BEGIN IMMEDIATE``),
            so two processes opening one database at once migrate it one after the other.
    """
    Base.metadata.create_all(engine)
    with write_engine.begin() as conn:
        pg = conn.dialect.name == "postgresql"
        columns = {t: {c["name"] for c in inspect(conn).get_columns(t)} for t in ("projects", "invites")}
        before_workspaces = "workspace_id" not in columns["projects"]
        exists = "IF NOT EXISTS " if pg else ""  # SQLite: serialised by the write lock instead
        if before_workspaces:
            conn.execute(text(f"ALTER TABLE projects ADD COLUMN {exists}workspace_id INTEGER "
                              "REFERENCES workspaces (id)"))
        if "workspaces" not in columns["invites"]:
            conn.execute(text(f"ALTER TABLE invites ADD COLUMN {exists}workspaces JSON"))
        ws = conn.execute(text("SELECT id FROM workspaces WHERE name = :n"),
                          {"n": DEFAULT_WORKSPACE}).scalar()
        if ws is None:
            conn.execute(text("INSERT INTO workspaces (name, created_at) VALUES (:n, :t)"),
                         {"n": DEFAULT_WORKSPACE, "t": time.time()})
            ws = conn.execute(text("SELECT id FROM workspaces WHERE name = :n"),
                              {"n": DEFAULT_WORKSPACE}).scalar()
        conn.execute(text("UPDATE projects SET workspace_id = :ws WHERE workspace_id IS NULL"), {"ws": ws})
        if before_workspaces:  # everyone could label everything before: keep it that way
            conn.execute(text(
                "INSERT INTO members (workspace_id, user_id, created_at) "
                "SELECT :ws, users.id, :t FROM users WHERE NOT EXISTS (SELECT 1 FROM members "
                "WHERE members.workspace_id = :ws AND members.user_id = users.id)"),
                {"ws": ws, "t": time.time()})
