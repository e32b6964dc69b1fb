"""The feedback store's projects and the items in them.

Holds :class:`ItemStore`: creating a project (with its first items, in one transaction),
listing projects, adding items (each checked by the project's question types before any is
stored) and reading them back in position order.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from .. import questions as Q
from ..errors import StoreError
from ..tables import DEFAULT_WORKSPACE, Item, Project, User
from .base import StoreBase
from .checks import _item_row, _new_project


class ItemStore(StoreBase):
    """Projects and items (a part of :class:`~rlhfkit.feedback.store.Store`)."""

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
