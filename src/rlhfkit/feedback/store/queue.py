"""The feedback store's work queue: which item each annotator gets next, under a lock.

Holds :class:`Task` (one item as handed to one annotator, responses in their shuffled order)
and :class:`QueueStore`: handing out the next item (the one already held, a honeypot every
``gold_every`` items, else the regular item nearest its overlap), the per-project lock that
serialises queue changes, the count of an item's live slots, and giving a held item back.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from ..errors import INT32_MAX, StoreError, check_int
from ..tables import Assignment, Item, Label, Project, User
from .base import StoreBase, _iso


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


class QueueStore(StoreBase):
    """The queue and its locks (a part of :class:`~rlhfkit.feedback.store.Store`)."""

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
