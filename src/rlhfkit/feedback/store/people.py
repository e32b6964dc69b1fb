"""The feedback store's people: accounts, logins, invites and workspaces.

Holds :class:`PeopleStore`: the key that signs sessions (``secret``), users (create, look up,
authenticate, set a password), login sessions (start, look up, end), one-time invites, and
workspaces with their members (who may see which projects).
"""

from __future__ import annotations

import secrets
import time

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ...data.records import SOURCES
from ..errors import InputError, StoreError, bad_character, check_text
from ..security import (
    dummy_hash,
    hash_invite,
    hash_password,
    hash_token,
    new_secret,
    verify_password,
)
from ..tables import MAX_NAME, Invite, Member, Project, SessionRow, Setting, User, Workspace
from .base import USER_CACHE_S, StoreBase
from .checks import MAX_PASSWORD, ROLES, _check_name, _check_password


class PeopleStore(StoreBase):
    """Accounts, sessions, invites and workspaces (a part of :class:`~rlhfkit.feedback.store.Store`)."""

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

    def workspace_name(self, p: Project) -> str:
        """The name of the workspace project ``p`` belongs to."""
        with self.tx() as s:
            return s.get(Workspace, p.workspace_id).name

    @staticmethod
    def _user_named(s: Session, name: str) -> User:
        user = s.scalars(select(User).where(User.name == name)).first() \
            if isinstance(name, str) and not bad_character(name) else None
        if user is None:
            raise StoreError(f"no user named {name!r}", 404)
        return user
