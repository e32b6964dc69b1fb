"""The feedback store: projects, items, annotators, the work queue and labels, in SQL.

SQLite (WAL mode) is the default and needs no server; PostgreSQL works by URL
(``postgresql://user:pass@host/db``). Every submission is one transaction, and a submission
carries a client-chosen key: sending it again returns the label already stored instead of
creating a second one, so clients may retry freely after a timeout or a server crash.

The queue hands each annotator one item at a time with a lock that expires
(``Project.lock_seconds``); an item is offered until ``Project.overlap`` distinct annotators
have labelled it. Honeypot items carry gold answers and are slipped in every
``Project.gold_every`` items to measure each annotator's accuracy.
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import and_, create_engine, delete, event, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..data.records import SOURCES
from . import questions as Q
from .errors import (
    INT32_MAX,
    InputError,
    StoreError,
    bad_character,
    check_int,
    check_json,
    check_text,
)
from .security import (
    dummy_hash,
    hash_invite,
    hash_password,
    hash_token,
    new_secret,
    verify_password,
)
from .tables import (
    DEFAULT_WORKSPACE,
    MAX_NAME,
    Assignment,
    Base,
    Invite,
    Item,
    Label,
    Member,
    Project,
    SessionRow,
    Setting,
    User,
    Workspace,
    migrate,
)

ROLES = ("admin", "annotator")
# FULL (default): a commit reaches the disk before the client hears "stored", so labels
# survive a power cut, not only a killed server. NORMAL is safe against a killed process
# (WAL mode) and much faster on slow disks; set RLHFKIT_SQLITE_SYNC=NORMAL to choose it.
# Another process (the CLI) changing a user is seen by a running server within this time.
USER_CACHE_S = 5.0
SQLITE_SYNC = os.environ.get("RLHFKIT_SQLITE_SYNC", "FULL").upper()
if SQLITE_SYNC not in ("FULL", "NORMAL", "EXTRA"):
    raise ValueError(f"RLHFKIT_SQLITE_SYNC must be FULL, NORMAL or EXTRA, not {SQLITE_SYNC!r}")
MAX_PASSWORD = 1024
MAX_OVERLAP = 100
MAX_LOCK_SECONDS = 30 * 86400
MAX_GOLD_EVERY = 10_000
MAX_TIME_MS = 7 * 86400 * 1000
MAX_GUIDELINES = 50_000
MAX_MODEL_NAME = 200
__all__ = ["DEFAULT_WORKSPACE", "SOURCES", "Assignment", "Base", "Invite", "Item", "Label",
           "Member", "Project", "SessionRow", "Setting", "Store", "StoreError", "Task", "User",
           "Workspace"]


# ---------------------------------------------------------------------------------------
# URLs and engines


def split_project_url(url: str) -> tuple[str, str | None]:
    """Split ``sqlite:///f.db?project=NAME`` into the database URL and the project name.

    Other query parameters (e.g. PostgreSQL connection options) stay on the database URL.
    """
    if url.startswith("db:"):
        url = url[3:]
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    project = next((v for k, v in pairs if k == "project"), None)
    rest = urlencode([(k, v) for k, v in pairs if k != "project"])
    return (f"{base}?{rest}" if rest else base), project


def normalize_url(url: str) -> str:
    """Accept a bare file path for SQLite and plain ``postgresql://`` (psycopg 3 driver)."""
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _make_engine(url: str):
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False},
                               pool_size=20, max_overflow=40)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            # Take transaction control away from pysqlite so BEGIN IMMEDIATE is ours to send.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the client hears "stored" (survives power loss,
            # not only a killed process). https://www.sqlite.org/pragma.html#pragma_synchronous
            cur.execute(f"PRAGMA synchronous={SQLITE_SYNC}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            # Writers take the write lock up front: no deadlock-prone lock upgrade midway.
            immediate = conn.get_execution_options().get("rk_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="seconds")


@dataclass
class Task:
    """One item handed to one annotator: what the labeling page and the API show."""

    item_id: int
    project: str
    questions: list[str]
    prompt: Any
    responses: list[str]  # in this annotator's display order; which model wrote them is hidden
    guidelines: str
    categories: list[str]
    submission_key: str
    expires_at: float
    media: list[str | None] | None = None
    """Per displayed response, its image or animation (a data: URI) or None; None if no media."""

    def to_json(self) -> dict:
        """The task as the API sends it (``media`` only when a response has an image)."""
        out = {
            "item_id": self.item_id, "project": self.project, "questions": self.questions,
            "prompt": self.prompt, "responses": self.responses, "guidelines": self.guidelines,
            "categories": self.categories, "submission_key": self.submission_key,
            "lock_expires_at": _iso(self.expires_at),
        }
        if self.media is not None:
            out["media"] = self.media
        return out


class Store:
    """All reads and writes of the feedback app. Thread-safe; one instance per process.

    Opening a database migrates it to the current schema (:func:`~rlhfkit.feedback.tables.migrate`).

    Args:
        url: a SQLAlchemy URL (``sqlite:///feedback.db``, ``postgresql://…``) or a file path.
    """

    def __init__(self, url: str):
        self.url = normalize_url(url)
        self.engine = _make_engine(self.url)
        self.is_sqlite = self.url.startswith("sqlite")
        self._write_engine = self.engine.execution_options(rk_write=True)
        migrate(self.engine, self._write_engine)
        self._secret: str | None = None
        # SQLite has one writer at a time. Queueing writers on a lock here, rather than in
        # SQLite's busy handler (which sleeps with back-off), keeps tail latency low.
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._projects: dict[str, Project] = {}  # projects never change once created
        self._users: dict[int, tuple[float, User]] = {}
        self._memberships: dict[int, tuple[float, frozenset[int]]] = {}

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def tx(self, write: bool = False) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on error."""
        if write and self._write_lock is not None:
            with self._write_lock:
                with Session(self._write_engine, expire_on_commit=False) as s, s.begin():
                    yield s
            return
        with Session(self._write_engine if write else self.engine, expire_on_commit=False) as s:
            with s.begin():
                yield s

    # -- settings ---------------------------------------------------------------------

    def secret(self) -> str:
        """The fallback key that signs sessions and CSRF tokens: created once, kept in the database.

        Only for a server started without a key of its own (``--secret-file`` or
        ``RLHFKIT_SECRET``): with this one, whoever can read the database can sign tokens.
        """
        if self._secret is None:
            with self.tx(write=True) as s:
                row = s.get(Setting, "secret")
                if row is None:
                    row = Setting(key="secret", value=new_secret())
                    s.add(row)
                self._secret = row.value
        return self._secret

    # -- users ------------------------------------------------------------------------

    def create_user(self, name: str, password: str | None = None, role: str = "annotator",
                    source: str = "human", workspaces: list[str] | None = None) -> User:
        """Create an account; without a password it can only be entered by an invite link.

        Args:
            name: the account name (letters, digits, ``-``, ``_``, ``.``).
            password: at least 8 characters, or None.
            role: ``admin`` or ``annotator``.
            source: ``human``, ``simulated`` or ``ai``.
            workspaces: the workspaces it joins (default: the ``default`` workspace).
        """
        _check_name(name, "user name")
        if role not in ROLES:
            raise InputError(f"role must be one of {ROLES}, got {role!r}")
        if source not in SOURCES:
            raise InputError(f"source must be one of {SOURCES}, got {source!r}")
        pw_hash = hash_password(_check_password(password)) if password is not None else None
        try:
            with self.tx(write=True) as s:
                spaces = self._workspace_ids(s, workspaces)
                user = User(name=name, role=role, source=source, password_hash=pw_hash,
                            generation=0, active=True, created_at=time.time())
                s.add(user)
                s.flush()
                s.add_all(Member(workspace_id=w, user_id=user.id, created_at=time.time()) for w in spaces)
        except IntegrityError:
            raise StoreError(f"user {name!r} already exists", 409) from None
        return user

    def get_user(self, user_id: int) -> User | None:
        """A user by id, or None (cached for a few seconds: every request asks)."""
        hit = self._users.get(user_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        with self.tx() as s:
            user = s.get(User, user_id)
        if user is not None:
            self._users[user_id] = (time.monotonic() + USER_CACHE_S, user)
        return user

    def user_by_name(self, name: str) -> User | None:
        """A user by name, or None."""
        if not isinstance(name, str) or bad_character(name) or len(name) > MAX_NAME:
            return None
        with self.tx() as s:
            return s.scalars(select(User).where(User.name == name)).first()

    def list_users(self) -> list[User]:
        """Every account, oldest first."""
        with self.tx() as s:
            return list(s.scalars(select(User).order_by(User.id)))

    def authenticate(self, name: str, password: str) -> User | None:
        """The active user with this name and password, else None.

        The same work either way: an unknown, deactivated or passwordless account is checked
        against a dummy hash of the current cost, so timing does not tell them apart.
        """
        check_text(password, "password", max_chars=MAX_PASSWORD)
        user = self.user_by_name(name)
        if user is None or not user.active or not user.password_hash:
            verify_password(password, dummy_hash())
            return None
        return user if verify_password(password, user.password_hash) else None

    def set_password(self, user_id: int, password: str) -> None:
        """Set a password and end every session of the user."""
        pw_hash = hash_password(_check_password(password))
        with self.tx(write=True) as s:
            user = s.get(User, user_id)
            user.password_hash = pw_hash
            user.generation += 1
            s.execute(delete(SessionRow).where(SessionRow.user_id == user_id))
        self._users.pop(user_id, None)

    # -- sessions ---------------------------------------------------------------------

    def start_session(self, user: User, ttl_s: int) -> str:
        """A new session for ``user``; returns the token (the store keeps only its hash)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self.tx(write=True) as s:
            s.execute(delete(SessionRow).where(SessionRow.expires_at < now))
            s.add(SessionRow(token_hash=hash_token(token), user_id=user.id, created_at=now,
                             expires_at=now + ttl_s))
        return token

    def session_user(self, token: str) -> User | None:
        """The active user of an unexpired session, else None."""
        with self.tx() as s:
            row = s.get(SessionRow, hash_token(token))
        if row is None or row.expires_at < time.time():
            return None
        user = self.get_user(row.user_id)
        return user if user is not None and user.active else None

    def end_session(self, token: str) -> None:
        """Log a session out: its token stops working at once."""
        with self.tx(write=True) as s:
            s.execute(delete(SessionRow).where(SessionRow.token_hash == hash_token(token)))

    # -- invites ----------------------------------------------------------------------

    def create_invite(self, name: str, role: str = "annotator", ttl_s: int = 7 * 86400,
                      workspaces: list[str] | None = None) -> str:
        """A one-time invite token for a new account ``name``; the link is ``/invite/<token>``."""
        _check_name(name, "user name")
        if role not in ROLES:
            raise InputError(f"role must be one of {ROLES}, got {role!r}")
        if self.user_by_name(name) is not None:
            raise StoreError(f"user {name!r} already exists", 409)
        token = secrets.token_urlsafe(24)
        with self.tx(write=True) as s:
            self._workspace_ids(s, workspaces)  # they must exist
            s.add(Invite(token_hash=hash_invite(token), name=name, role=role,
                         expires_at=time.time() + ttl_s, workspaces=workspaces))
        return token

    def invite_info(self, token: str) -> Invite | None:
        """The unused, unexpired invite for a token, else None."""
        with self.tx() as s:
            inv = s.scalars(select(Invite).where(Invite.token_hash == hash_invite(token))).first()
        if inv is None or inv.used_at is not None or inv.expires_at < time.time():
            return None
        return inv

    def redeem_invite(self, token: str, password: str) -> User:
        """Create the invited account with this password; the token then stops working."""
        pw_hash = hash_password(_check_password(password))
        try:
            with self.tx(write=True) as s:
                inv = s.scalars(select(Invite).where(Invite.token_hash == hash_invite(token))
                                .with_for_update()).first()
                if inv is None or inv.used_at is not None or inv.expires_at < time.time():
                    raise StoreError("this invite link is invalid, used or expired", 404)
                inv.used_at = time.time()
                user = User(name=inv.name, role=inv.role, source="human", password_hash=pw_hash,
                            generation=0, active=True, created_at=time.time())
                s.add(user)
                s.flush()
                s.add_all(Member(workspace_id=w, user_id=user.id, created_at=time.time())
                          for w in self._workspace_ids(s, inv.workspaces))
        except IntegrityError:
            raise StoreError(f"user {inv.name!r} already exists", 409) from None
        return user

    # -- workspaces -------------------------------------------------------------------

    def create_workspace(self, name: str) -> Workspace:
        """A new, empty workspace."""
        _check_name(name, "workspace name")
        try:
            with self.tx(write=True) as s:
                ws = Workspace(name=name, created_at=time.time())
                s.add(ws)
                s.flush()
        except IntegrityError:
            raise StoreError(f"workspace {name!r} already exists", 409) from None
        return ws

    def workspaces(self) -> list[dict]:
        """Every workspace with its members' and projects' names, oldest first."""
        with self.tx() as s:
            spaces = list(s.scalars(select(Workspace).order_by(Workspace.id)))
            members = s.execute(select(Member.workspace_id, User.name).join(User, User.id == Member.user_id)
                                .order_by(User.name)).all()
            projects = s.execute(select(Project.workspace_id, Project.name).order_by(Project.id)).all()
        return [{"name": w.name, "members": [n for i, n in members if i == w.id],
                 "projects": [n for i, n in projects if i == w.id]} for w in spaces]

    def add_member(self, workspace: str, user_name: str) -> bool:
        """Let an account work on the workspace's projects; False if it already could."""
        with self.tx(write=True) as s:
            (ws,) = self._workspace_ids(s, [workspace])
            user = self._user_named(s, user_name)
            if s.scalars(select(Member).where(Member.workspace_id == ws, Member.user_id == user.id)).first():
                return False
            s.add(Member(workspace_id=ws, user_id=user.id, created_at=time.time()))
        self._memberships.pop(user.id, None)
        return True

    def remove_member(self, workspace: str, user_name: str) -> bool:
        """Take an account out of a workspace (its labels stay); False if it was not in it."""
        with self.tx(write=True) as s:
            (ws,) = self._workspace_ids(s, [workspace])
            user = self._user_named(s, user_name)
            gone = s.execute(delete(Member).where(Member.workspace_id == ws, Member.user_id == user.id))
        self._memberships.pop(user.id, None)
        return gone.rowcount > 0

    def member_of(self, user: User) -> frozenset[int]:
        """The ids of the workspaces ``user`` belongs to (cached for a few seconds)."""
        hit = self._memberships.get(user.id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        with self.tx() as s:
            ids = frozenset(s.scalars(select(Member.workspace_id).where(Member.user_id == user.id)))
        self._memberships[user.id] = (time.monotonic() + USER_CACHE_S, ids)
        return ids

    def may_use(self, user: User, p: Project) -> bool:
        """Whether ``user`` may see and label project ``p``: admins always, others as members."""
        return user.role == "admin" or p.workspace_id in self.member_of(user)

    def workspace_name(self, p: Project) -> str:
        """The name of the workspace project ``p`` belongs to."""
        with self.tx() as s:
            return s.get(Workspace, p.workspace_id).name

    @staticmethod
    def _workspace_ids(s: Session, names: list[str] | None) -> list[int]:
        names = [DEFAULT_WORKSPACE] if names is None else list(names)
        ids = []
        for name in names:
            ws = s.scalars(select(Workspace.id).where(Workspace.name == name)).first() \
                if isinstance(name, str) and not bad_character(name) else None
            if ws is None:
                raise StoreError(f"no workspace named {name!r}", 404)
            ids.append(ws)
        return ids

    @staticmethod
    def _user_named(s: Session, name: str) -> User:
        user = s.scalars(select(User).where(User.name == name)).first() \
            if isinstance(name, str) and not bad_character(name) else None
        if user is None:
            raise StoreError(f"no user named {name!r}", 404)
        return user

    # -- projects and items -----------------------------------------------------------

    def create_project(self, name: str, questions: list[str], *, overlap: int = 1,
                       guidelines: str = "", lock_seconds: int = 600, gold_every: int = 0,
                       categories: list[str] | None = None, arena: bool = False,
                       workspace: str = DEFAULT_WORKSPACE, items: Iterable[dict] = ()) -> Project:
        """Create a project asking ``questions`` (see :mod:`rlhfkit.feedback.questions`).

        ``items`` (as for :meth:`add_items`) are checked first and stored with the project in
        one transaction, so a bad item leaves no half-made project behind.
        """
        p = _new_project(name, questions, overlap=overlap, guidelines=guidelines,
                         lock_seconds=lock_seconds, gold_every=gold_every,
                         categories=categories, arena=arena)
        lo, hi = Q.check_questions(p.questions)
        rows = [_item_row(p, raw, n, lo, hi) for n, raw in enumerate(items)]
        try:
            with self.tx(write=True) as s:
                (p.workspace_id,) = self._workspace_ids(s, [workspace])
                s.add(p)
                s.flush()
                for i, row in enumerate(rows):
                    row.position, row.project_id = i, p.id
                    s.add(row)
        except IntegrityError:
            raise StoreError(f"project {name!r} already exists", 409) from None
        return p

    def project(self, name: str, user: User | None = None) -> Project:
        """A project by name; StoreError(404) if there is none, or ``user`` may not use it.

        A project outside the user's workspaces answers exactly as a missing one does, so
        its name is not given away.
        """
        p = self._projects.get(name)
        if p is None:
            if not isinstance(name, str) or bad_character(name) or len(name) > MAX_NAME:
                raise StoreError(f"no project named {name!r}", 404)
            with self.tx() as s:
                p = s.scalars(select(Project).where(Project.name == name)).first()
            if p is None:
                raise StoreError(f"no project named {name!r}", 404)
            self._projects[name] = p
        if user is not None and not self.may_use(user, p):
            raise StoreError(f"no project named {name!r}", 404)
        return p

    def list_projects(self, user: User | None = None) -> list[Project]:
        """Every project, oldest first (only those ``user`` may use, when given)."""
        with self.tx() as s:
            projects = list(s.scalars(select(Project).order_by(Project.id)))
        return [p for p in projects if user is None or self.may_use(user, p)]

    def add_items(self, project: str, items: Iterable[dict]) -> int:
        """Add items to a project and return how many were added.

        Each item is a dict with ``prompt`` (string or chat messages; may be empty for
        ``write_prompt``), ``responses`` (strings, or ``{"text", "model"}`` objects; the model
        name is never shown to annotators), and optionally ``gold`` (``{question: answer}`` in
        canonical terms, making it a honeypot), ``id`` and ``meta``. Every item is checked
        by the project's question types before any is stored.
        """
        p = self.project(project)
        lo, hi = Q.check_questions(p.questions)
        rows = [_item_row(p, raw, n, lo, hi) for n, raw in enumerate(items)]
        with self.tx(write=True) as s:
            start = s.scalar(select(func.coalesce(func.max(Item.position), -1))
                             .where(Item.project_id == p.id)) + 1
            for i, row in enumerate(rows):
                row.position = start + i
                s.add(row)
        return len(rows)

    def items(self, project: str) -> list[Item]:
        """Every item of a project in position order."""
        p = self.project(project)
        with self.tx() as s:
            return list(s.scalars(select(Item).where(Item.project_id == p.id).order_by(Item.position)))

    # -- the queue --------------------------------------------------------------------

    def next_task(self, user: User, project: str) -> Task | None:
        """Hand ``user`` their next item of ``project`` (locking it), or None when done.

        Order of preference: the item this user already holds; a honeypot every
        ``gold_every`` items; the regular item closest to its overlap target.
        """
        p = self.project(project, user)
        with self.tx(write=True) as s:
            return self._claim(s, user, p)

    def _lock_project(self, s: Session, p: Project) -> float:
        """Serialise queue changes in a project; returns the time, read once the lock is held.

        SQLite: the first statement opens the transaction with BEGIN IMMEDIATE (the database's
        one write lock). PostgreSQL: the project's row is locked FOR UPDATE. Reading the clock
        only after the lock is held matters: whether a lock has expired must be decided with
        the same clock by every transaction, in the order they commit.
        """
        q = select(Project.id).where(Project.id == p.id)
        s.execute(q if self.is_sqlite else q.with_for_update())
        return time.time()

    def _claim(self, s: Session, user: User, p: Project) -> Task | None:
        now = self._lock_project(s, p)
        held = s.scalars(select(Assignment).where(
            Assignment.project_id == p.id, Assignment.user_id == user.id,
            Assignment.status == "active").order_by(Assignment.id)).first()
        if held is not None:
            item = s.get(Item, held.item_id)
            if held.expires_at > now or item.is_gold or self._busy(s, item.id, now, user.id) < p.overlap:
                held.expires_at = now + p.lock_seconds
                return self._task(p, item, held)
            held.status = "expired"  # someone else took the slot meanwhile

        item = None
        if p.gold_every > 0:
            n_done = s.scalar(select(func.count()).select_from(Label).where(
                Label.project_id == p.id, Label.user_id == user.id))
            if (n_done + 1) % p.gold_every == 0:
                item = s.scalars(select(Item).where(
                    Item.project_id == p.id, Item.is_gold.is_(True),
                    ~exists().where(Assignment.item_id == Item.id, Assignment.user_id == user.id),
                ).order_by(Item.position).limit(1)).first()
        regular = self._pick_regular(s, p, user.id, now)
        if regular is None:
            return None  # no honeypots once the real work is done
        item = item or regular
        order = list(range(len(item.responses)))
        random.Random(f"{user.id}:{item.id}").shuffle(order)
        held = Assignment(project_id=p.id, item_id=item.id, user_id=user.id, status="active",
                          order=order, submission_key=secrets.token_urlsafe(16),
                          started_at=now, expires_at=now + p.lock_seconds)
        s.add(held)
        s.flush()
        return self._task(p, item, held)

    @staticmethod
    def _busy_expr(now: float, exclude_user: int | None = None):
        cond = [Assignment.item_id == Item.id,
                or_(Assignment.status == "done",
                    and_(Assignment.status == "active", Assignment.expires_at > now))]
        if exclude_user is not None:
            cond.append(Assignment.user_id != exclude_user)
        return select(func.count()).where(*cond).correlate(Item).scalar_subquery()

    def _busy(self, s: Session, item_id: int, now: float, exclude_user: int) -> int:
        return s.scalar(select(func.count()).select_from(Assignment).where(
            Assignment.item_id == item_id, Assignment.user_id != exclude_user,
            or_(Assignment.status == "done",
                and_(Assignment.status == "active", Assignment.expires_at > now))))

    def _pick_regular(self, s: Session, p: Project, user_id: int, now: float) -> Item | None:
        # Most-labelled first, so items reach their overlap (and agreement can be measured)
        # early; the busy count is only evaluated on rows met in that order.
        busy = self._busy_expr(now)
        return s.scalars(select(Item).where(
            Item.project_id == p.id, Item.is_gold.is_(False), Item.n_done < p.overlap,
            ~exists().where(Assignment.item_id == Item.id, Assignment.user_id == user_id),
            busy < p.overlap,
        ).order_by(Item.n_done.desc(), Item.position).limit(1)).first()

    @staticmethod
    def _task(p: Project, item: Item, a: Assignment) -> Task:
        texts = [item.responses[j]["text"] for j in a.order]
        media = [item.responses[j].get("media") for j in a.order]
        return Task(item_id=item.id, project=p.name, questions=list(p.questions),
                    prompt=item.prompt, responses=texts, guidelines=p.guidelines,
                    categories=list(p.categories), submission_key=a.submission_key,
                    expires_at=a.expires_at, media=media if any(media) else None)

    # -- labels -----------------------------------------------------------------------

    def submit(self, user: User, project: str, item_id: int, answers: dict, submission_key: str,
               time_ms: int | None = None) -> tuple[dict, bool]:
        """Store one annotator's answers to one item, in one transaction.

        Returns:
            ``(label, duplicate)``: the stored label as JSON, and True when this key had
            already been stored (nothing new was written).

        Raises:
            StoreError: 404 unknown project/item, 403 item not handed to this user,
                409 item already labelled under another key, 422 answers that do not fit.
        """
        label, duplicate, _ = self.submit_and_next(user, project, item_id, answers,
                                                   submission_key, time_ms, then_next=False)
        return label, duplicate

    def submit_and_next(self, user: User, project: str, item_id: int, answers: dict,
                        submission_key: str, time_ms: int | None = None,
                        then_next: bool = True) -> tuple[dict, bool, Task | None]:
        """:meth:`submit`, then hand out the next item in the same transaction.

        One commit and one round trip for the page or machine client.

        Returns:
            ``(label, duplicate, task)``; task is None when nothing is left (or not asked).
        """
        if not isinstance(submission_key, str) or not 8 <= len(submission_key) <= 64:
            raise InputError("submission_key must be a string of 8 to 64 characters")
        check_text(submission_key, "submission_key", max_chars=64)
        if time_ms is not None:
            check_int(time_ms, "time_ms", 0, MAX_TIME_MS)
        check_int(item_id, "item_id", 1, INT32_MAX)
        p = self.project(project, user)
        for attempt in range(3):
            try:
                return self._submit_once(user, p, item_id, answers, submission_key, time_ms, then_next)
            except IntegrityError:
                # A concurrent request with the same key won the race (PostgreSQL); the
                # next attempt finds its label and returns it as a duplicate.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _submit_once(self, user, p, item_id, answers, key, time_ms, then_next):
        with self.tx(write=True) as s:
            # The queue's lock, so a lock that runs out while this label is being stored
            # cannot also be handed to someone else.
            now = self._lock_project(s, p)
            old = s.scalars(select(Label).where(Label.user_id == user.id,
                                                Label.submission_key == key)).first()
            if old is not None:
                if old.item_id != item_id:
                    raise StoreError("this submission_key was already used for another item", 409)
                task = self._claim(s, user, p) if then_next else None
                return self._label_json(old, p.name, user.name), True, task
            a = s.scalars(select(Assignment).where(Assignment.item_id == item_id,
                                                   Assignment.user_id == user.id)).first()
            if a is None or a.project_id != p.id:
                raise StoreError("this item was not handed to you in this project", 403)
            if a.status == "done":
                raise StoreError("you already labelled this item (under another submission_key)", 409)
            item = s.get(Item, item_id)
            if not (a.status == "active" and a.expires_at > now) and not item.is_gold:
                # The lock expired (or was released): the slot may have gone to someone else
                # meanwhile. Accept the late label only if the item still has room, counted
                # exactly as the queue counts it, so no item ends up past its overlap.
                if self._busy(s, item_id, now, user.id) >= p.overlap:
                    raise StoreError(
                        "your lock on this item expired and other annotators have since "
                        f"labelled it {p.overlap} time(s), as many as the project needs; "
                        "this answer was not stored — take the next item", 409)
            canonical = _check_answers(p, item, answers, a.order)
            label = Label(project_id=p.id, item_id=item_id, user_id=user.id, submission_key=key,
                          answers=canonical, order=list(a.order), time_ms=time_ms,
                          server_ms=int((now - a.started_at) * 1000), created_at=now)
            s.add(label)
            a.status = "done"
            s.execute(update(Item).where(Item.id == item_id).values(n_done=Item.n_done + 1))
            s.flush()
            task = self._claim(s, user, p) if then_next else None
            return self._label_json(label, p.name, user.name), False, task

    def import_labels(self, project: str, new_items: list[dict], labels: list[dict], *,
                      create: dict | None = None) -> dict:
        """Store labels given elsewhere (another tool, an earlier export), in one transaction.

        Each imported label is stored as if its annotator had been handed the item and
        answered it: an assignment marked done, the label, and the item's count, so the queue
        and agreement treat it like any other. Annotator accounts that do not exist are
        created without a password (they cannot log in until an admin sets one). A label for
        an (item, annotator) that already has one is skipped, so importing a file twice adds
        nothing the second time.

        Args:
            project: the project to import into.
            new_items: items to add first, as for :meth:`add_items`.
            labels: dicts with ``item`` (``("new", index into new_items)`` or ``("id", item
                id)``), ``annotator``, ``source``, ``answers`` (display terms, responses shown
                in the item's own order), ``created_at`` (epoch seconds), ``time_ms`` (or
                None) and ``where`` (how to name it in an error, e.g. ``"record 3"``).
            create: create the project in the same transaction, with these keyword
                arguments of :meth:`create_project` (``questions``, ``overlap``, …).

        Returns:
            ``{"items": new items, "labels": labels stored, "duplicates": labels skipped,
            "users": accounts created}``.
        """
        if create is not None:
            create = dict(create)
            workspace = create.pop("workspace", DEFAULT_WORKSPACE)
            p = _new_project(project, **create)
        else:
            p = self.project(project)
        lo, hi = Q.check_questions(p.questions)
        rows = [_item_row(p, raw, n, lo, hi) for n, raw in enumerate(new_items)]
        sources: dict[str, str] = {}
        for lab in labels:
            _check_name(lab["annotator"], f"{lab['where']}: annotator")
            if lab["source"] not in SOURCES:
                raise StoreError(f"{lab['where']}: source must be one of {SOURCES}", 422)
            if sources.setdefault(lab["annotator"], lab["source"]) != lab["source"]:
                raise StoreError(f"{lab['where']}: annotator {lab['annotator']!r} has labels "
                                 f"from two sources ({sources[lab['annotator']]}, {lab['source']})", 422)
        stored = duplicates = 0
        with self.tx(write=True) as s:
            if create is not None:
                (p.workspace_id,) = self._workspace_ids(s, [workspace])
                s.add(p)
                try:
                    s.flush()
                except IntegrityError:
                    raise StoreError(f"project {project!r} already exists", 409) from None
            self._lock_project(s, p)
            start = s.scalar(select(func.coalesce(func.max(Item.position), -1))
                             .where(Item.project_id == p.id)) + 1
            for i, row in enumerate(rows):
                row.position, row.project_id = start + i, p.id
                s.add(row)
            s.flush()
            users, new_users = self._import_accounts(s, sources, p.workspace_id)
            for lab in labels:
                kind, ref = lab["item"]
                item = rows[ref] if kind == "new" else s.get(Item, ref)
                if item is None or item.project_id != p.id:
                    raise StoreError(f"{lab['where']}: no item {ref} in project {p.name!r}", 404)
                user = users[lab["annotator"]]
                if s.scalar(select(func.count()).select_from(Label).where(
                        Label.item_id == item.id, Label.user_id == user.id)):
                    duplicates += 1
                    continue
                order = list(range(len(item.responses)))
                try:
                    canonical = _check_answers(p, item, lab["answers"], order)
                except StoreError as e:
                    raise StoreError(f"{lab['where']}: {e}", e.status) from None
                when = lab["created_at"]
                held = s.scalars(select(Assignment).where(Assignment.item_id == item.id,
                                                          Assignment.user_id == user.id)).first()
                if held is None:  # the usual case; else they held it in the app: close that
                    held = Assignment(project_id=p.id, item_id=item.id, user_id=user.id,
                                      submission_key=secrets.token_urlsafe(16))
                    s.add(held)
                held.status, held.order, held.started_at, held.expires_at = "done", order, when, when
                s.add(Label(project_id=p.id, item_id=item.id, user_id=user.id,
                            submission_key="import-" + secrets.token_urlsafe(16), answers=canonical,
                            order=order, time_ms=lab.get("time_ms"), server_ms=0, created_at=when))
                item.n_done = (item.n_done or 0) + 1
                s.flush()
                stored += 1
        return {"items": len(rows), "labels": stored, "duplicates": duplicates, "users": len(new_users)}

    @staticmethod
    def _import_accounts(s: Session, sources: dict[str, str],
                         workspace_id: int) -> tuple[dict[str, User], list[User]]:
        """The accounts of imported labels by name, creating missing ones (without a password).

        New accounts join the project's workspace, so an admin who sets their password lets
        them go on labelling it.
        """
        users = {u.name: u for u in s.scalars(select(User).where(User.name.in_(list(sources))))}
        new_users = []
        for name, source in sources.items():
            if name not in users:
                users[name] = User(name=name, role="annotator", source=source, password_hash=None,
                                   generation=0, active=True, created_at=time.time())
                s.add(users[name])
                new_users.append(users[name])
            elif users[name].source != source:
                raise StoreError(f"annotator {name!r} exists with source {users[name].source!r}, "
                                 f"but the imported labels say {source!r}", 409)
        s.flush()
        s.add_all(Member(workspace_id=workspace_id, user_id=u.id, created_at=time.time())
                  for u in new_users)
        return users, new_users

    def release(self, user: User, project: str, item_id: int) -> None:
        """Give back a held item (skip) so another annotator can take it."""
        check_int(item_id, "item_id", 1, INT32_MAX)
        p = self.project(project, user)
        with self.tx(write=True) as s:
            a = s.scalars(select(Assignment).where(Assignment.item_id == item_id,
                                                   Assignment.user_id == user.id,
                                                   Assignment.project_id == p.id)).first()
            if a is None or a.status != "active":
                raise StoreError("you hold no lock on this item", 404)
            a.status = "expired"

    @staticmethod
    def _label_json(label: Label, project: str, annotator: str) -> dict:
        return {"id": label.id, "project": project, "item_id": label.item_id,
                "annotator": annotator, "submission_key": label.submission_key,
                "answers": label.answers, "order": label.order, "time_ms": label.time_ms,
                "server_ms": label.server_ms, "created_at": _iso(label.created_at)}

    def labels(self, project: str, user: User | None = None) -> list[dict]:
        """Labels of a project as JSON (only ``user``'s when given), oldest first."""
        p = self.project(project, user)
        q = (select(Label, User.name).join(User, User.id == Label.user_id)
             .where(Label.project_id == p.id).order_by(Label.id))
        if user is not None:
            q = q.where(Label.user_id == user.id)
        with self.tx() as s:
            return [self._label_json(lab, p.name, name) for lab, name in s.execute(q)]

    def label_rows(self, project: str) -> list[tuple[Label, Item, User]]:
        """Every label of a project with its item and annotator (for agreement and export)."""
        p = self.project(project)
        with self.tx() as s:
            rows = s.execute(select(Label, Item, User).join(Item, Item.id == Label.item_id)
                             .join(User, User.id == Label.user_id)
                             .where(Label.project_id == p.id).order_by(Label.id))
            return [(label, item, user) for label, item, user in rows]

    def progress(self, project: str) -> dict:
        """Item and label counts of a project."""
        p = self.project(project)
        with self.tx() as s:
            n_items = s.scalar(select(func.count()).select_from(Item).where(
                Item.project_id == p.id, Item.is_gold.is_(False)))
            n_gold = s.scalar(select(func.count()).select_from(Item).where(
                Item.project_id == p.id, Item.is_gold.is_(True)))
            n_complete = s.scalar(select(func.count()).select_from(Item).where(
                Item.project_id == p.id, Item.is_gold.is_(False), Item.n_done >= p.overlap))
            n_labels = s.scalar(select(func.count()).select_from(Label).where(Label.project_id == p.id))
        return {"items": n_items, "gold_items": n_gold, "complete_items": n_complete,
                "labels": n_labels, "overlap": p.overlap}

    def user_progress(self, user: User, project: str) -> int:
        """How many labels ``user`` has given in ``project``."""
        p = self.project(project, user)
        with self.tx() as s:
            return s.scalar(select(func.count()).select_from(Label).where(
                Label.project_id == p.id, Label.user_id == user.id))


def _new_project(name: str, questions: list[str], *, overlap: int = 1, guidelines: str = "",
                 lock_seconds: int = 600, gold_every: int = 0, categories: list[str] | None = None,
                 arena: bool = False) -> Project:
    """A checked, not yet stored project (every setting within the bounds the store can hold)."""
    _check_name(name, "project name")
    Q.check_questions(questions)
    check_int(overlap, "overlap", 1, MAX_OVERLAP)
    check_int(lock_seconds, "lock_seconds", 1, MAX_LOCK_SECONDS)
    check_int(gold_every, "gold_every", 0, MAX_GOLD_EVERY)
    check_text(guidelines, "guidelines", max_chars=MAX_GUIDELINES)
    cats = Q.check_categories(list(categories) if categories else None)
    return Project(name=name, questions=list(questions), guidelines=guidelines, overlap=overlap,
                   lock_seconds=lock_seconds, gold_every=gold_every, categories=cats,
                   arena=bool(arena), created_at=time.time())


def _check_name(name: Any, what: str) -> None:
    if (not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME
            or not all(c.isalnum() or c in "-_." for c in name)):
        raise InputError(f"{what} must be 1..{MAX_NAME} letters, digits, '-', '_' or '.'")


def _check_password(password: Any) -> str:
    check_text(password, "password", max_chars=MAX_PASSWORD)
    if len(password) < 8:
        raise StoreError("password must have at least 8 characters")
    return password


def _item_prompt(raw: dict, where: str) -> Any:
    prompt = raw.get("prompt", "")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str | list):
        raise InputError(f"{where}: 'prompt' must be a string or a list of chat messages")
    check_json(prompt, f"{where}: prompt", max_chars=Q.MAX_TEXT * 4)
    if isinstance(prompt, list) and not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt):
        raise InputError(f"{where}: chat prompt must be a list of {{role, content}} messages")
    return prompt


def _item_responses(raw: dict, where: str) -> list[dict]:
    given = raw.get("responses") or []
    if not isinstance(given, list) or len(given) > Q.MAX_K:
        raise InputError(f"{where}: 'responses' must be a list of at most {Q.MAX_K} responses")
    responses = []
    for j, r in enumerate(given):
        if isinstance(r, str):
            r = {"text": r}
        if not isinstance(r, dict) or not isinstance(r.get("text"), str):
            raise InputError(f"{where}: responses[{j}] must be a string or {{text, model}}")
        check_text(r["text"], f"{where}: responses[{j}]", max_chars=Q.MAX_TEXT)
        model = r.get("model")
        if model is not None:
            check_text(model, f"{where}: responses[{j}].model", max_chars=MAX_MODEL_NAME)
        responses.append({"text": r["text"], "model": model})
        if r.get("media") is not None:  # an image or animation shown above the text
            if not Q.is_media(r["media"]):
                raise InputError(f"{where}: responses[{j}].media must be a base64 data: URI of a "
                                 f"GIF, PNG, WebP or JPEG image of at most {Q.MAX_MEDIA} characters")
            responses[-1]["media"] = r["media"]
    return responses


def _item_row(p: Project, raw: dict, n: int, lo: int, hi: int) -> Item:
    """A checked item: its texts well-formed, its shape right for every question it is asked."""
    where = f"item {n}"
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected an object with 'prompt' and 'responses'")
    prompt = _item_prompt(raw, where)
    responses = _item_responses(raw, where)
    if not lo <= len(responses) <= hi:
        want = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise InputError(f"{where}: questions {p.questions} need {want} responses, got {len(responses)}")
    texts = [r["text"] for r in responses]
    for q in p.questions:
        Q.get(q).check_item(prompt, texts, where)
    gold = raw.get("gold")
    if gold is not None:
        gold = Q.check_gold(p.questions, gold, texts, p.categories, where)
    meta = raw.get("meta") or {}
    if not isinstance(meta, dict):
        raise InputError(f"{where}: 'meta' must be an object")
    check_json(meta, f"{where}: meta")
    ext = raw.get("id")
    if ext is not None:
        ext = check_text(str(ext) if isinstance(ext, int | float) else ext, f"{where}: id", max_chars=200)
    return Item(project_id=p.id, position=n, external_id=ext, prompt=prompt, responses=responses,
                gold=gold, is_gold=gold is not None, meta=meta, n_done=0)


def _check_answers(p: Project, item: Item, answers: Any, order: list[int]) -> dict:
    if not isinstance(answers, dict):
        raise InputError("answers must be an object {question type: answer}")
    check_json(answers, "answers")
    missing = [q for q in p.questions if q not in answers]
    extra = [q for q in answers if q not in p.questions]
    if missing or extra:
        raise InputError(f"answers must cover exactly the questions {p.questions}; "
                         f"missing {missing}, unexpected {extra}")
    texts = [r["text"] for r in item.responses]
    return {q: Q.get(q).validate(answers[q], order, texts, p.categories) for q in p.questions}
