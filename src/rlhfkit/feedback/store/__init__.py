"""The feedback store: projects, items, annotators, the work queue and labels, in SQL.

SQLite (WAL mode) is the default and needs no server; PostgreSQL works by URL
(``postgresql://user:pass@host/db``). Every submission is one transaction, and a submission
carries a client-chosen key: sending it again returns the label already stored instead of
creating a second one, so clients may retry freely after a timeout or a server crash.

The queue hands each annotator one item at a time with a lock that expires
(``Project.lock_seconds``); an item is offered until ``Project.overlap`` distinct annotators
have labelled it. Honeypot items carry gold answers and are slipped in every
``Project.gold_every`` items to measure each annotator's accuracy.

:class:`Store` is composed of one part per thing it keeps; import everything from here
(``from rlhfkit.feedback.store import Store``), not from the modules:

- ``engine``: database URLs and engines (:func:`split_project_url`, :func:`normalize_url`).
- ``checks``: the limits (``MAX_*``, :data:`ROLES`) and the checks of names, passwords,
  projects, items and answers.
- ``base``: :class:`~rlhfkit.feedback.store.base.StoreBase`, the connection, transactions,
  caches and the lookups every part shares (a project by name, workspace membership).
- ``people``: accounts, login sessions, invites and workspaces.
- ``items``: projects and their items.
- ``queue``: :class:`Task` and the work queue with its locks.
- ``labels``: submissions and imports of labels.
- ``export``: labels as JSON and as rows, and progress counts.
"""

from __future__ import annotations

# Every rlhfkit name the single-module store.py had stays importable from here, as before.
from ...data.records import SOURCES
from .. import questions as Q  # noqa: F401
from ..errors import INT32_MAX as INT32_MAX
from ..errors import InputError as InputError
from ..errors import StoreError
from ..errors import bad_character as bad_character
from ..errors import check_int as check_int
from ..errors import check_json as check_json
from ..errors import check_text as check_text
from ..security import dummy_hash as dummy_hash
from ..security import hash_invite as hash_invite
from ..security import hash_password as hash_password
from ..security import hash_token as hash_token
from ..security import new_secret as new_secret
from ..security import verify_password as verify_password
from ..tables import (
    DEFAULT_WORKSPACE,
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
)
from ..tables import MAX_NAME as MAX_NAME
from ..tables import migrate as migrate
from .base import USER_CACHE_S as USER_CACHE_S
from .base import _iso as _iso
from .checks import MAX_GOLD_EVERY as MAX_GOLD_EVERY
from .checks import MAX_GUIDELINES as MAX_GUIDELINES
from .checks import MAX_LOCK_SECONDS as MAX_LOCK_SECONDS
from .checks import MAX_MODEL_NAME as MAX_MODEL_NAME
from .checks import MAX_OVERLAP as MAX_OVERLAP
from .checks import MAX_PASSWORD as MAX_PASSWORD
from .checks import MAX_TIME_MS as MAX_TIME_MS
from .checks import ROLES as ROLES
from .checks import _check_answers as _check_answers
from .checks import _check_name as _check_name
from .checks import _check_password as _check_password
from .checks import _item_prompt as _item_prompt
from .checks import _item_responses as _item_responses
from .checks import _item_row as _item_row
from .checks import _new_project as _new_project
from .engine import SQLITE_SYNC as SQLITE_SYNC
from .engine import _make_engine as _make_engine
from .engine import normalize_url as normalize_url
from .engine import split_project_url as split_project_url
from .export import ExportStore
from .items import ItemStore
from .labels import LabelStore
from .people import PeopleStore
from .queue import Task

__all__ = ["DEFAULT_WORKSPACE", "SOURCES", "Assignment", "Base", "Invite", "Item", "Label",
           "Member", "Project", "SessionRow", "Setting", "Store", "StoreError", "Task", "User",
           "Workspace"]


class Store(PeopleStore, ItemStore, LabelStore, ExportStore):
    """All reads and writes of the feedback app. Thread-safe; one instance per process.

    Opening a database migrates it to the current schema (:func:`~rlhfkit.feedback.tables.migrate`).
    The methods come from its parts: accounts, sessions, invites and workspaces
    (``people``), projects and items (``items``), the queue (``queue``), submissions and
    imports (``labels``) and reading labels out (``export``), over the shared connection
    (``base``).

    Args:
        url: a SQLAlchemy URL (``sqlite:///feedback.db``, ``postgresql://…``) or a file path.
    """
