"""Labels out of the store as rlhfkit records, and items (and labels) into it.

One label answers every question of its project, so it becomes one record per question:

| question      | record                                                                   |
|---------------|--------------------------------------------------------------------------|
| write_prompt  | ``PromptRecord`` (the instructions shown, if any, in ``meta``)           |
| demonstration | ``Demonstration``                                                        |
| binary        | ``BinaryFeedback`` (👍 = True)                                          |
| likert        | ``ScoreFeedback`` (score 1..7)                                           |
| spans         | ``SpanFeedback``                                                         |
| correction    | ``Demonstration`` of the corrected text (``meta.corrects`` = original)   |
| pairwise      | ``Comparison``; tie and both-bad are ``tie=True`` (``meta.both_bad``)    |
| rank          | ``Ranking`` with ``ranks`` (0 = best)                                    |

:func:`import_labels` goes the other way: labelled records (from another tool, or an earlier
export) become labels of a project, by the same table read backwards.

Every record carries ``annotator`` (the account name), ``source`` (human / simulated / ai),
``created_at`` and ``meta`` with the project, item, the display order the annotator saw,
the time spent and the models that wrote the responses (hidden from annotators, kept here).
Honeypot items are left out unless ``include_gold=True``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ..data import records as R
from . import questions as Q
from .store import Item, Label, Store, StoreError, User, _iso, split_project_url


def label_records(label: Label, item: Item, user: User, project: str,
                  include_gold: bool = False) -> list[R.Record]:
    """The records one stored label stands for, one per question (see the module table)."""
    if item.is_gold and not include_gold:
        return []
    texts = [r["text"] for r in item.responses]
    common = {"annotator": user.name, "source": user.source, "created_at": _iso(label.created_at)}
    out: list[R.Record] = []
    for question, ans in label.answers.items():
        meta = {
            "project": project, "question": question, "item_id": item.id,
            "item_ref": item.external_id, "label_id": label.id, "order": label.order,
            "time_ms": label.time_ms, "server_ms": label.server_ms,
            "models": [r.get("model") for r in item.responses], **(item.meta or {}),
        }
        if item.is_gold:
            meta["gold"] = True
        try:
            out.append(Q.get(question).to_record(item.prompt, texts, ans, meta,
                                                 dict(common, id=f"{project}/{label.id}/{question}")))
        except R.RecordError as err:
            # e.g. two identical responses cannot form a Comparison; say which label.
            raise StoreError(f"label {label.id} ({question}) is not a valid record: {err}") from err
    return out


def project_records(store: Store, project: str, include_gold: bool = False) -> list[R.Record]:
    """Every label of a project as records, oldest label first."""
    out: list[R.Record] = []
    for label, item, user in store.label_rows(project):
        out.extend(label_records(label, item, user, project, include_gold))
    return out


def write_records_any(records: list[R.Record], path: str | os.PathLike) -> int:
    """Write records by extension through :mod:`rlhfkit.data.io`; returns how many.

    A path without an extension becomes a HF ``datasets`` folder.
    """
    from ..data import io as data_io

    path = Path(path)
    data_io.write_records(records, path, format="hf" if path.suffix == "" else None)
    return len(records)


# -- items in ------------------------------------------------------------------------------


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL, JSON (a list) or CSV file, as dicts."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise StoreError(f"{path}:{n}: not valid JSON ({e.msg})", 422) from None
        return rows
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise StoreError(f"{path}: expected a JSON list of objects", 422)
        return data
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".txt":  # one prompt per line
        return [{"prompt": line.rstrip("\n")} for line in open(path, encoding="utf-8") if line.strip()]
    from ..data import io as data_io

    return [dict(r.to_dict(), kind=r.kind) for r in data_io.read_records(path)]


def row_responses(row: dict) -> list[dict]:
    """The responses a row offers, as ``{"text", "model"}`` dicts.

    Taken from ``responses``, ``response``/``completion``, or ``chosen`` + ``rejected``;
    ``models`` (a list) names who wrote each.
    """
    if isinstance(row.get("responses"), str):  # CSV cell holding a JSON list
        row = dict(row, responses=json.loads(row["responses"]))
    if row.get("responses"):
        resp = list(row["responses"])
    elif row.get("chosen") is not None and row.get("rejected") is not None:
        resp = [row["chosen"], row["rejected"]]
    elif row.get("response") or row.get("completion"):
        resp = [row.get("response") or row.get("completion")]
    else:
        resp = []
    models = row.get("models") or [None] * len(resp)
    out = []
    for r, m in zip(resp, list(models) + [None] * len(resp)):
        out.append(dict(r) if isinstance(r, dict) else {"text": r, "model": m})
    return out


def rows_to_items(rows: Iterable[dict], questions: list[str]) -> list[dict]:
    """Shape rows into items for a project's questions.

    A row with more responses than a question shows is split: one item per response for
    single-response questions, one per pair for ``pairwise``; a ranking takes them all.
    """
    lo, hi = Q.check_questions(questions)
    items = []
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise StoreError(f"row {n}: expected an object", 422)
        base = {"prompt": row.get("prompt") if row.get("prompt") is not None else row.get("messages", ""),
                "meta": dict(row.get("meta") or {})}
        if isinstance(base["prompt"], str) and base["prompt"].startswith("["):
            try:  # a CSV cell holding chat messages
                base["prompt"] = json.loads(base["prompt"])
            except json.JSONDecodeError:
                pass
        if row.get("id") is not None:
            base["id"] = row["id"]
        if row.get("gold"):
            base["gold"] = row["gold"] if isinstance(row["gold"], dict) else json.loads(row["gold"])
        resp = row_responses(row)
        if len(resp) < lo:
            raise StoreError(f"row {n}: questions {questions} need at least {lo} responses per "
                             f"item, the row has {len(resp)}", 422)
        if hi == 0:
            items.append(dict(base, responses=[]))
        elif lo == hi == 1:
            items.extend(dict(base, responses=[r]) for r in resp)
        elif lo == hi == 2:
            items.extend(dict(base, responses=[a, b]) for a, b in combinations(resp, 2))
        else:
            items.append(dict(base, responses=resp))
    return items


def create_project_from_file(store: Store, name: str, path: str | os.PathLike,
                             questions: list[str], **options: Any) -> int:
    """Create a project and fill it from a file of prompts (and optional responses).

    Returns:
        the number of items created.
    """
    items = rows_to_items(read_rows(path), questions)
    store.create_project(name, questions, **options)
    return store.add_items(name, items)


def add_items_from_file(store: Store, project: str, path: str | os.PathLike) -> int:
    """Add the items of a file (items or rlhfkit records) to an existing project."""
    p = store.project(project)
    return store.add_items(project, rows_to_items(read_rows(path), p.questions))


def records_to_items(records: Iterable[R.Record], questions: list[str]) -> list[dict]:
    """Items to label made from records (their existing labels are not copied)."""
    rows = []
    for r in records:
        d = r.to_dict()
        if isinstance(r, R.Ranking):
            d = {"prompt": r.prompt, "responses": list(r.responses)}
        rows.append({k: v for k, v in d.items() if k in (
            "prompt", "responses", "response", "chosen", "rejected", "id", "meta")})
    return rows_to_items(rows, questions)


def import_records(store: Store, project: str, records: Iterable[R.Record]) -> int:
    """Add items built from records to an existing project; returns how many."""
    p = store.project(project)
    return store.add_items(project, records_to_items(records, p.questions))


# -- labels in: records from another tool (or an earlier export) ----------------------------

def _epoch(created_at: str | None, where: str) -> float:
    import datetime as dt
    import time

    if created_at is None:
        return time.time()
    try:
        when = dt.datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        raise StoreError(f"{where}: created_at {created_at!r} is not an ISO 8601 time", 422) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def import_labels(store: Store, project: str, records: Iterable[R.Record], *,
                  questions: list[str] | None = None, overlap: int | None = None,
                  default_annotator: str = "imported", default_source: str = "human") -> dict:
    """Bring labelled records into a project, as labels by their annotators.

    Each record becomes the answer to the question its kind maps to (comparison ->
    pairwise, tie and ``meta.both_bad`` kept; ranking -> rank; binary; score -> likert;
    span -> spans; demonstration -> demonstration, or correction when ``meta.corrects`` holds the
    original; prompt -> write_prompt with ``meta.instructions`` as the item). Records about
    the same prompt and the same set of responses share an item, whichever order they list
    the responses in, so several annotators' labels of one item are measured for agreement;
    one annotator's records on one item make one label, which must answer every question of
    the project. The annotator is the record's ``annotator`` (else ``default_annotator``),
    with the record's ``source`` (else ``default_source``).

    The project is created when missing, asking the questions the records answer (or
    ``questions``), with ``overlap`` = the most annotators any item has (or ``overlap``).

    Returns:
        ``{"items", "labels", "duplicates", "users"}`` counts (see :meth:`Store.import_labels`).

    Raises:
        StoreError: naming the record (0-based, in file order) that does not fit.
    """
    records = list(records)
    if not records:
        raise StoreError("no records to import", 422)
    asked = []
    for n, r in enumerate(records):
        try:
            asked.append(Q.question_for_record(r).name)
        except Q.AnswerError as err:
            raise StoreError(f"record {n}: {err}", 422) from None
    try:
        p = store.project(project)
    except StoreError:
        p = None
    wanted = list(questions) if questions else [q for q in Q.QUESTION_TYPES if q in asked]
    if p is not None:
        wanted = list(p.questions)
    for n, q in enumerate(asked):
        if q not in wanted:
            raise StoreError(f"record {n} ({records[n].kind}) answers {q!r}, which project "
                             f"{project!r} does not ask (it asks {', '.join(wanted)})", 422)
    try:
        Q.check_questions(wanted)
    except Q.AnswerError as e:
        raise StoreError(f"{e}. The file holds {', '.join(sorted(set(asked)))} labels: import "
                         "each kind into its own project (--kind)", 422) from None

    def key(prompt, responses) -> tuple:
        return (json.dumps(prompt, sort_keys=True), tuple(sorted(responses)))

    existing = {}
    if p is not None:
        for item in store.items(project):
            if not item.is_gold:
                existing.setdefault(key(item.prompt, [x["text"] for x in item.responses]),
                                    (("id", item.id), [x["text"] for x in item.responses]))
    new_items: list[dict] = []
    items: dict[tuple, tuple] = dict(existing)
    groups: dict[tuple, dict] = {}
    for n, (r, q) in enumerate(zip(records, asked)):
        where = f"record {n}"
        prompt, responses = Q.get(q).record_item(r)
        k = key(prompt, responses)
        if k not in items:
            items[k] = (("new", len(new_items)), responses)
            new_items.append({"prompt": prompt, "responses": responses})
        ref, texts = items[k]
        who = r.annotator or default_annotator
        g = groups.setdefault((k, who), {"item": ref, "annotator": who,
                                         "source": r.source or default_source, "answers": {},
                                         "created_at": _epoch(r.created_at, where), "where": where,
                                         "time_ms": None})
        if q in g["answers"]:
            raise StoreError(f"{where}: {who} answered {q!r} for this item already in {g['where']}", 422)
        if (r.source or default_source) != g["source"]:
            raise StoreError(f"{where}: source {r.source!r} differs from {g['where']}'s", 422)
        try:
            g["answers"][q] = Q.get(q).record_answer(r, texts)
        except StoreError as e:
            raise StoreError(f"{where}: {e}", e.status) from None
        t = r.meta.get("time_ms")
        if isinstance(t, int) and not isinstance(t, bool) and t >= 0:
            g["time_ms"] = t
    for g in groups.values():
        missing = [q for q in wanted if q not in g["answers"]]
        if missing:
            raise StoreError(f"{g['where']}: {g['annotator']}'s label of this item has no "
                             f"{', '.join(missing)} answer, and the project asks {', '.join(wanted)}", 422)
    create = None
    if p is None:
        per_item: dict = {}
        for (k, who) in groups:
            per_item.setdefault(k, set()).add(who)
        create = {"questions": wanted,
                  "overlap": overlap or min(100, max(len(v) for v in per_item.values()))}
    return store.import_labels(project, new_items, list(groups.values()), create=create)


def import_labels_file(store: Store, project: str, path: str | os.PathLike, *,
                       kind: str | None = None, **options: Any) -> dict:
    """:func:`import_labels` from a records file (any format :mod:`rlhfkit.data.io` reads).

    Args:
        store: the store.
        project: the project to import into (created when missing).
        path: the records file.
        kind: import only the records of these kinds (comma-separated, e.g. ``binary,score``).
        **options: passed to :func:`import_labels`.
    """
    from ..data import io as data_io

    records = data_io.read_records(path)
    if kind:
        kinds = {k.strip() for k in kind.split(",") if k.strip()}
        unknown = kinds - set(Q.record_kinds())
        if unknown:
            raise StoreError(f"--kind {', '.join(sorted(unknown))}: expected record kinds among "
                             f"{', '.join(Q.record_kinds())}", 422)
        records = [r for r in records if r.kind in kinds]
    return import_labels(store, project, records, **options)


# -- the entry points named in the data IO contract -----------------------------------------


def _existing_store(db_url: str) -> Store:
    """Open a store that must already exist (reading must not create an empty SQLite file)."""
    from sqlalchemy.engine import make_url

    from .store import normalize_url

    url = make_url(normalize_url(db_url))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if not Path(url.database).exists():
            raise FileNotFoundError(f"no feedback database at {url.database} (from {db_url})")
    return Store(db_url)


def read_project_records(url: str, include_gold: bool = False) -> list[R.Record]:
    """A project's labels as rlhfkit records.

    ``url`` is ``sqlite:///feedback.db?project=NAME`` or a PostgreSQL URL with
    ``?project=NAME``; a leading ``db:`` is accepted. This is what training calls for
    ``--data db:...``, so its failures (no project named, no such project, an unreachable
    server) are :class:`~rlhfkit.data.records.RecordError` naming the URL (password hidden),
    as for any other source of records; a missing SQLite file is a ``FileNotFoundError``
    (reading never creates a database).

    Args:
        url: the store URL with ``?project=NAME``.
        include_gold: also return the labels of honeypot items (``meta.gold`` is then True
            and ``meta.gold_answer`` holds the honeypot's answer).
    """
    shown = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)
    db_url, project = split_project_url(url)
    try:
        if not project:
            raise StoreError(f"{url}: name the project, e.g. sqlite:///feedback.db?project=NAME")
        store = _existing_store(db_url)
        try:
            return project_records(store, project, include_gold)
        finally:
            store.close()
    except StoreError as err:
        raise R.RecordError(str(err), file=shown) from err
    except SQLAlchemyError as err:
        cause = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise R.RecordError(f"cannot read the feedback store: {cause}", file=shown) from err


def export_project(url: str, project: str | None, path: str | os.PathLike,
                   include_gold: bool = False) -> int:
    """Write a project's labels to ``path``; returns the number of records written.

    ``.jsonl``, ``.parquet``, ``.csv``, or a path without extension for a HF dataset folder.
    """
    db_url, from_url = split_project_url(url)
    project = project or from_url
    if not project:
        raise StoreError("name the project to export")
    store = _existing_store(db_url)
    try:
        records = project_records(store, project, include_gold)
    finally:
        store.close()
    return write_records_any(records, path)
