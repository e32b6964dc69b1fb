"""The feedback store's labels coming in: submissions through the queue, and imports.

Holds :class:`LabelStore`: storing one annotator's answers to one item in one transaction
(idempotent under a client-chosen submission key, optionally handing out the next item in the
same transaction), and importing labels given elsewhere as if they had come through the queue.
"""

from __future__ import annotations

import secrets
import time

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ...data.records import SOURCES
from .. import questions as Q
from ..errors import INT32_MAX, InputError, StoreError, check_int, check_text
from ..tables import DEFAULT_WORKSPACE, Assignment, Item, Label, Member, Project, User
from .checks import MAX_TIME_MS, _check_answers, _check_name, _item_row, _new_project
from .export import _label_json
from .queue import QueueStore, Task


class LabelStore(QueueStore):
    """Submissions and imports (a part of :class:`~rlhfkit.feedback.store.Store`)."""

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
                return _label_json(old, p.name, user.name), True, task
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
            return _label_json(label, p.name, user.name), False, task

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
        sources = self._import_sources(labels)
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
                if self._import_label(s, p, rows, users, lab):
                    stored += 1
                else:
                    duplicates += 1
        return {"items": len(rows), "labels": stored, "duplicates": duplicates, "users": len(new_users)}

    @staticmethod
    def _import_sources(labels: list[dict]) -> dict[str, str]:
        """Each imported annotator's source, checking names and that no one has two sources."""
        sources: dict[str, str] = {}
        for lab in labels:
            _check_name(lab["annotator"], f"{lab['where']}: annotator")
            if lab["source"] not in SOURCES:
                raise StoreError(f"{lab['where']}: source must be one of {SOURCES}", 422)
            if sources.setdefault(lab["annotator"], lab["source"]) != lab["source"]:
                raise StoreError(f"{lab['where']}: annotator {lab['annotator']!r} has labels "
                                 f"from two sources ({sources[lab['annotator']]}, {lab['source']})", 422)
        return sources

    @staticmethod
    def _import_label(s: Session, p: Project, rows: list[Item], users: dict[str, User],
                      lab: dict) -> bool:
        """Store one imported label as done through the queue; False if its annotator had one."""
        kind, ref = lab["item"]
        item = rows[ref] if kind == "new" else s.get(Item, ref)
        if item is None or item.project_id != p.id:
            raise StoreError(f"{lab['where']}: no item {ref} in project {p.name!r}", 404)
        user = users[lab["annotator"]]
        if s.scalar(select(func.count()).select_from(Label).where(
                Label.item_id == item.id, Label.user_id == user.id)):
            return False
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
        return True

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
