"""The feedback store's labels going out: as JSON, as rows for export, and as counts.

Holds :class:`ExportStore`: a project's labels as the API shows them, every label with its
item and annotator (what :mod:`rlhfkit.feedback.transfer` turns into records and the report
and agreement read), and progress counts per project and per annotator. ``_label_json`` is
the one shape of a label in JSON, also used by the answers to a submission.
"""

from __future__ import annotations

from sqlalchemy import func, select

from ..tables import Item, Label, User
from .base import StoreBase, _iso


def _label_json(label: Label, project: str, annotator: str) -> dict:
    """One label as the API shows it (and as a submission is answered)."""
    return {"id": label.id, "project": project, "item_id": label.item_id,
            "annotator": annotator, "submission_key": label.submission_key,
            "answers": label.answers, "order": label.order, "time_ms": label.time_ms,
            "server_ms": label.server_ms, "created_at": _iso(label.created_at)}


class ExportStore(StoreBase):
    """Labels, label rows and progress (a part of :class:`~rlhfkit.feedback.store.Store`)."""

    def labels(self, project: str, user: User | None = None) -> list[dict]:
        """Labels of a project as JSON (only ``user``'s when given), oldest first."""
        p = self.project(project, user)
        q = (select(Label, User.name).join(User, User.id == Label.user_id)
             .where(Label.project_id == p.id).order_by(Label.id))
        if user is not None:
            q = q.where(Label.user_id == user.id)
        with self.tx() as s:
            return [_label_json(lab, p.name, name) for lab, name in s.execute(q)]

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
