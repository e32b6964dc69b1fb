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
import io
import json
import os
import re
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..data import io as data_io
from ..data import records as R
from . import questions as Q
from .store import (
    DEFAULT_WORKSPACE,
    Item,
    Label,
    Store,
    StoreError,
    User,
    _iso,
    normalize_url,
    split_project_url,
)


def label_records(label: Label, item: Item, user: User, project: str,
                  include_gold: bool = False) -> list[R.Record]:
    """The records one stored label stands for, one per question (see the module table).

    ``meta`` carries the item's own ``meta`` and then the app's provenance keys (project,
    question, item and label ids, display order, times, models), which an item's ``meta`` can
    never overwrite: where the two share a key (an item made from an earlier export), the
    item's value is kept under ``meta.item_meta``. A honeypot's records (only with
    ``include_gold``) also carry ``meta.gold = True`` and ``meta.gold_answer``, the honeypot's
    answer in the record's terms (see :meth:`QuestionType.gold_record`).
    """
    if item.is_gold and not include_gold:
        return []
    texts = [r["text"] for r in item.responses]
    common = {"annotator": user.name, "source": user.source, "created_at": _iso(label.created_at)}
    item_meta = dict(item.meta or {})
    out: list[R.Record] = []
    for question, ans in label.answers.items():
        qt = Q.get(question)
        provenance = {
            "project": project, "question": question, "item_id": item.id,
            "item_ref": item.external_id, "label_id": label.id, "order": label.order,
            "time_ms": label.time_ms, "server_ms": label.server_ms,
            "models": [r.get("model") for r in item.responses],
        }
        if item.is_gold:
            provenance["gold"] = True
            if item.gold and question in item.gold:
                provenance["gold_answer"] = qt.gold_record(item.gold[question], texts)
        clash = {k: item_meta[k] for k in item_meta if k in provenance or k in APP_META}
        meta = {**{k: v for k, v in item_meta.items() if k not in clash}, **provenance}
        if clash:
            meta["item_meta"] = clash
        try:
            out.append(qt.to_record(item.prompt, texts, ans, meta,
                                    dict(common, id=f"{project}/{label.id}/{question}")))
        except R.RecordError as err:
            # e.g. an item stored before items were checked; say which label.
            raise StoreError(f"label {label.id} ({question}) is not a valid record: {err}") from err
    return out


APP_META = ("project", "question", "item_id", "item_ref", "label_id", "order", "time_ms",
            "server_ms", "models", "gold", "gold_answer", "item_meta", "instructions", "corrects",
            "both_bad")
"""``meta`` keys the app writes into exported records; an item's own ``meta`` never overrides them."""


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
    path = Path(path)
    data_io.write_records(records, path, format="hf" if path.suffix == "" else None)
    return len(records)


# -- items in ------------------------------------------------------------------------------


FORMATS = {".jsonl": "JSON lines", ".json": "JSON", ".csv": "CSV", ".txt": "text",
           ".parquet": "Parquet", ".pq": "Parquet"}


def _text_of(path: Path, shown: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise StoreError(f"{shown} is not UTF-8 text: byte {err.start} is {data[err.start]:#04x} "
                         "(save the file as UTF-8)", 422) from None


def read_rows(path: str | os.PathLike, shown_as: str | None = None) -> list[dict]:
    """Rows of a JSONL, JSON (a list), CSV or text file, or the records of any other file, as dicts.

    Args:
        path: the file.
        shown_as: how errors name the file (an upload's own name rather than a temporary one).

    Raises:
        StoreError: (422) naming the file, and the line where there is one, when the file is
            not UTF-8, not valid JSON / CSV, or not a readable table.
    """
    path = Path(path)
    shown = shown_as or str(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(_text_of(path, shown).splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except (json.JSONDecodeError, RecursionError) as e:
                    raise StoreError(f"{shown}, line {n}: not valid JSON ({getattr(e, 'msg', e)})", 422) from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(_text_of(path, shown))
        except (json.JSONDecodeError, RecursionError) as e:
            raise StoreError(f"{shown}: not valid JSON ({getattr(e, 'msg', e)})", 422) from None
        if not isinstance(data, list):
            raise StoreError(f"{shown}: expected a JSON list of objects", 422)
        return data
    if suffix == ".csv":
        try:
            return list(csv.DictReader(io.StringIO(_text_of(path, shown), newline="")))
        except csv.Error as e:
            raise StoreError(f"{shown}: not valid CSV ({e})", 422) from None
    if suffix == ".txt":  # one prompt per line
        return [{"prompt": line} for line in _text_of(path, shown).splitlines() if line.strip()]
    try:
        return [dict(r.to_dict(), kind=r.kind) for r in data_io.read_records(path)]
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError, as is RecordError
        what = FORMATS.get(suffix, "records")
        detail = str(err).replace(str(path), shown).strip().splitlines()[0][:300]
        raise StoreError(f"{shown} is not a readable {what} file: {detail}", 422) from None


def _json_cell(value: Any, field: str, where: str) -> Any:
    """A CSV cell holding JSON (a list of responses, a gold answer) decoded; other values as they are."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        raise StoreError(f"{where}: '{field}' holds {value[:40]!r}, which is not JSON", 422) from None


def row_responses(row: dict, where: str = "row") -> list[dict]:
    """The responses a row offers, as ``{"text", "model"}`` dicts.

    Taken from ``responses``, ``response``/``completion``, or ``chosen`` + ``rejected``;
    ``models`` (a list) names who wrote each.
    """
    given = _json_cell(row.get("responses"), "responses", where)  # CSV cell holding a JSON list
    if given:
        if not isinstance(given, list):
            raise StoreError(f"{where}: 'responses' must be a list", 422)
        resp = list(given)
    elif row.get("chosen") is not None and row.get("rejected") is not None:
        resp = [row["chosen"], row["rejected"]]
    elif row.get("response") or row.get("completion"):
        resp = [row.get("response") or row.get("completion")]
    else:
        resp = []
    models = _json_cell(row.get("models"), "models", where) or []
    if not isinstance(models, list):
        raise StoreError(f"{where}: 'models' must be a list naming who wrote each response", 422)
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
        where = f"row {n}"
        if not isinstance(row, dict):
            raise StoreError(f"{where}: expected an object", 422)
        meta = _json_cell(row.get("meta"), "meta", where) or {}
        if not isinstance(meta, dict):
            raise StoreError(f"{where}: 'meta' must be an object", 422)
        base = {"prompt": row.get("prompt") if row.get("prompt") is not None else row.get("messages", ""),
                "meta": dict(meta)}
        if isinstance(base["prompt"], str) and base["prompt"].startswith("["):
            try:  # a CSV cell holding chat messages
                base["prompt"] = json.loads(base["prompt"])
            except (json.JSONDecodeError, RecursionError):
                pass
        if row.get("id") is not None:
            base["id"] = row["id"]
        if row.get("gold"):
            base["gold"] = _json_cell(row["gold"], "gold", where)
        resp = row_responses(row, where)
        if len(resp) < lo:
            raise StoreError(f"{where}: questions {questions} need at least {lo} responses per "
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
                             questions: list[str], *, shown_as: str | None = None,
                             **options: Any) -> int:
    """Create a project and fill it from a file of prompts (and optional responses).

    The file is read and every item checked before the project is created; the project and
    its items are then stored in one transaction.

    Args:
        store: the store.
        name: the new project's name.
        path: the file (see :func:`read_rows`).
        questions: the project's question types.
        shown_as: how errors name the file.
        **options: as for :meth:`Store.create_project` (``overlap``, ``workspace``, ...).

    Returns:
        the number of items created.
    """
    items = rows_to_items(read_rows(path, shown_as), questions)
    store.create_project(name, questions, items=items, **options)
    return len(items)


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
                  default_annotator: str = "imported", default_source: str = "human",
                  workspace: str = DEFAULT_WORKSPACE) -> dict:
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
        create = {"questions": wanted, "workspace": workspace,
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
                   include_gold: bool = False, *, format: str = "records",
                   kinds: list[str] | None = None) -> int:
    """Write a project's labels to ``path``; returns the number of records (or TRL rows) written.

    Args:
        url: the store URL (``?project=NAME`` may name the project).
        project: the project (overrides the URL's).
        path: ``.jsonl``, ``.parquet``, ``.csv``, or a path without extension for a HF
            dataset folder.
        include_gold: also export the labels of honeypot items.
        format: ``records`` (rlhfkit records) or ``trl`` (see :func:`trl_rows`).
        kinds: only records of these kinds (``comparison``, ``ranking``, ``binary``, ...).
    """
    if format not in ("records", "trl"):
        raise StoreError(f"format must be 'records' or 'trl', not {format!r}", 422)
    db_url, from_url = split_project_url(url)
    project = project or from_url
    if not project:
        raise StoreError("name the project to export")
    store = _existing_store(db_url)
    try:
        records = project_records(store, project, include_gold)
    finally:
        store.close()
    if kinds:
        unknown = set(kinds) - set(R.KINDS)
        if unknown:
            raise StoreError(f"unknown record kinds {sorted(unknown)}; expected some of {', '.join(R.KINDS)}", 422)
        records = [r for r in records if r.kind in kinds]
    if format == "trl":
        return write_trl(trl_rows(records), path)
    return write_records_any(records, path)


# -- TRL's dataset formats ---------------------------------------------------------------------

TRL_LAYOUT = {"comparison": "preference", "ranking": "preference",
              "demonstration": "prompt-completion", "binary": "unpaired preference",
              "prompt": "prompt-only"}
"""The TRL dataset layout each record kind becomes (TRL docs, "Dataset formats and types")."""


def trl_rows(records: Iterable[R.Record]) -> list[dict]:
    """Records as rows that TRL's trainers read as they are.

    | records                 | columns                          | trainers                         |
    |-------------------------|----------------------------------|----------------------------------|
    | comparison, ranking     | ``prompt, chosen, rejected``     | ``DPOTrainer``, ``RewardTrainer`` |
    | demonstration           | ``prompt, completion``           | ``SFTTrainer``                    |
    | binary                  | ``prompt, completion, label``    | ``KTOTrainer``                    |
    | prompt                  | ``prompt``                       | ``GRPOTrainer``, ``RLOOTrainer``  |

    A ranking becomes its C(K, 2) pairs. Tied pairs (tie and both-bad answers, equal ranks)
    are left out: TRL has no tie and would train them as strict preferences. There is no
    ``margin`` column (TRL's RewardTrainer would read it on every row). When any prompt is a
    chat, every row is conversational (a string prompt becomes one user message, responses
    become assistant messages), as TRL needs one format per dataset.

    Raises:
        StoreError: a kind no TRL trainer reads (score, span), or kinds of two layouts at
            once (export them one kind at a time).
    """
    records = list(records)
    kinds = sorted({r.kind for r in records})
    unsupported = [k for k in kinds if k not in TRL_LAYOUT]
    if unsupported:
        raise StoreError(f"no TRL trainer reads {', '.join(unsupported)} records; export them "
                         "with --format records (or leave them out with --kind)", 422)
    layouts = sorted({TRL_LAYOUT[k] for k in kinds})
    if len(layouts) > 1:
        raise StoreError(f"these labels make {len(layouts)} kinds of TRL dataset ({', '.join(layouts)}); "
                         f"export one at a time with --kind (the records are {', '.join(kinds)})", 422)
    chat = any(isinstance(getattr(r, "prompt", None), list) for r in records)

    def prompt(p: Any) -> Any:
        if not chat:
            return p
        if isinstance(p, str):
            return [{"role": "user", "content": p}]
        return [{"role": m["role"], "content": m["content"]} for m in p]

    def said(text: str) -> Any:
        return [{"role": "assistant", "content": text}] if chat else text

    rows: list[dict] = []
    for r in records:
        if isinstance(r, R.Comparison | R.Ranking):
            for c in ([r] if isinstance(r, R.Comparison) else r.to_comparisons()):
                if not c.tie:
                    rows.append({"prompt": prompt(c.prompt), "chosen": said(c.chosen),
                                 "rejected": said(c.rejected)})
        elif isinstance(r, R.Demonstration):
            rows.append({"prompt": prompt(r.prompt), "completion": said(r.response)})
        elif isinstance(r, R.BinaryFeedback):
            rows.append({"prompt": prompt(r.prompt), "completion": said(r.response), "label": r.label})
        else:  # prompt records
            rows.append({"prompt": prompt(r.prompt)})
    return rows


def write_trl(rows: list[dict], path: str | os.PathLike) -> int:
    """Write TRL rows as JSONL, Parquet, CSV (plain-text prompts only) or a HF dataset folder."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not rows and suffix != ".jsonl":
        raise StoreError("nothing to export: no labels of these kinds (or only ties)", 422)
    if suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".csv":
        if any(isinstance(v, list) for v in rows[0].values()):
            raise StoreError("chat prompts do not fit in CSV cells: export TRL rows as .jsonl, "
                             ".parquet or a folder", 422)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == "":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    else:
        raise StoreError(f"write TRL rows to .jsonl, .parquet, .csv or a folder, not {suffix}", 422)
    return len(rows)
