"""The store's connection, and the lookups every part of it shares.

Holds :class:`StoreBase`: the engine, transactions (:meth:`StoreBase.tx`; SQLite's writers
queue on a lock), the caches of projects, users and memberships, and the
lookups the other parts build on: a project by name as a user may see it
(:meth:`StoreBase.project`), whether a user may use a project (workspace membership), and
workspace ids by name. Also ``_iso``, the timestamps' shape in JSON.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import StoreError, bad_character
from ..tables import DEFAULT_WORKSPACE, MAX_NAME, Member, Project, User, Workspace, migrate
from .engine import _make_engine, normalize_url

# Another process (the CLI) changing a user is seen by a running server within this time.
USER_CACHE_S = 5.0


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="seconds")


class StoreBase:
    """The connection and the shared lookups; :class:`~rlhfkit.feedback.store.Store` adds the rest.

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

    # -- lookups every part uses ------------------------------------------------------

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
