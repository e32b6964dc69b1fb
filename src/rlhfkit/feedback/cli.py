"""``rlhfkit label …``: run the feedback app and manage its store from the command line.

The main CLI calls :func:`register` with its sub-parsers and the function that builds a
policy sampler (the app itself never loads a model); each leaf sets ``_run`` (a function of
the parsed arguments returning an exit code).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from .questions import QUESTION_TYPES
from .tables import DEFAULT_WORKSPACE

DEFAULT_DB = "sqlite:///feedback.db"


def register(subparsers: argparse._SubParsersAction,
             sampler: Callable[[argparse.Namespace], Any] | None = None) -> None:
    """Add ``label serve | create-project | add-user | workspace | import | export | stats``.

    Args:
        subparsers: The main parser's sub-commands.
        sampler: ``sampler(args)`` -> ``generate(prompts, k)`` for ``create-project
            --generate-from`` (:func:`rlhfkit.feedback.generate.create_project_from_policy`).
    """
    label = subparsers.add_parser(
        "label", help="the feedback web app and its store",
        description="Collect feedback from people and machines: run the web app, make projects "
                    "and accounts, group them in workspaces, import and export labels.")
    sub = label.add_subparsers(dest="label_command", metavar="ACTION", required=True)
    _serve_parser(sub)
    _create_project_parser(sub, sampler)
    for add in (_add_user_parser, _workspace_parser, _import_parser, _export_parser, _stats_parser):
        add(sub)


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB,
                   help=f"database URL: sqlite:///FILE (default {DEFAULT_DB}) or postgresql://…")


def _serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="start the web app",
        description="Serve the labelling pages, the admin pages and the JSON API (OpenAPI at "
                    "/docs) over the store. Sessions are signed with the key from --secret-file, "
                    "RLHFKIT_SECRET_FILE or RLHFKIT_SECRET; without one, with a key kept in the "
                    "database (then anyone who can read the database can sign sessions).")
    _db_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--secure-cookies", action="store_true",
                   help="always mark cookies Secure (set this behind an HTTPS proxy)")
    p.add_argument("--secret-file", metavar="FILE",
                   help="file holding the key that signs sessions (at least 32 characters)")
    p.add_argument("--trust-proxy", action="store_true",
                   help="believe X-Forwarded-Proto / X-Forwarded-For (only behind a reverse proxy "
                        "that sets them; otherwise any client could)")
    p.set_defaults(_run=_serve)


def _create_project_parser(sub, sampler) -> None:
    p = sub.add_parser(
        "create-project", help="create a project from a file of prompts (and responses, or --generate-from a policy)",
        description="Create a project asking one or more question types about each item. Items "
                    "come from --file (prompts, with optional responses), or the responses are "
                    "sampled from a policy with --generate-from. Every item is checked by the "
                    "project's question types before anything is stored.")
    _db_arg(p)
    p.add_argument("--name", required=True, help="project name (letters, digits, - _ .)")
    p.add_argument("--questions", required=True, help=f"comma-separated: {', '.join(QUESTION_TYPES)}")
    p.add_argument("--file", help="items: .jsonl/.json/.csv/.txt/.parquet with prompt and optional responses")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE,
                   help=f"the workspace it belongs to; only its members label it (default {DEFAULT_WORKSPACE})")
    p.add_argument("--overlap", type=int, default=1, help="annotators per item (default 1)")
    p.add_argument("--guidelines", default="", help="guidelines text, or @FILE to read it from a file")
    p.add_argument("--gold-every", type=int, default=0, help="a honeypot every N items (0 = none)")
    p.add_argument("--lock-seconds", type=int, default=600, help="how long a handed-out item stays locked")
    p.add_argument("--categories", default="", help="comma-separated span categories (default: irrelevant,untruthful,missing-information)")
    g = p.add_argument_group("responses written by a policy (--file then holds the prompts)")
    g.add_argument("--generate-from", metavar="MODEL",
                   help="sample the responses from this model: HF id, folder, .gguf or smollm2-135m")
    g.add_argument("--k", type=int, default=4, help="responses per prompt (default 4)")
    g.add_argument("--model-name", help="name stored with each response, hidden from annotators (default MODEL)")
    g.add_argument("--max-new-tokens", type=int, default=128, help="longest response in tokens (default 128)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0 = off)")
    g.add_argument("--system-prompt", default=None, help="system message for prompts that have none")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.set_defaults(_run=_create_project, _sampler=sampler)


def _add_user_parser(sub) -> None:
    p = sub.add_parser(
        "add-user", help="create an account (password asked, or --invite for a one-time link)",
        description="Create an admin or annotator account, human or machine (simulated, ai). "
                    "It joins the workspaces named with --workspace (default: the default one).")
    _db_arg(p)
    p.add_argument("--name", required=True, help="account name (letters, digits, - _ .)")
    p.add_argument("--role", choices=["admin", "annotator"], default="annotator",
                   help="admins manage projects, accounts and workspaces (default annotator)")
    p.add_argument("--source", choices=["human", "simulated", "ai"], default="human",
                   help="who gives this account's labels; exported with them (default human)")
    p.add_argument("--password", help="the password (default: asked on the terminal)")
    p.add_argument("--invite", action="store_true", help="print a one-time invite path instead")
    p.add_argument("--workspace", action="append", default=None, metavar="NAME",
                   help=f"a workspace to join (repeat for several; default {DEFAULT_WORKSPACE})")
    p.set_defaults(_run=_add_user)


def _workspace_parser(sub) -> None:
    p = sub.add_parser(
        "workspace", help="create a workspace, or add and remove its members",
        description="Workspaces group projects and the annotators who may label them (admins see "
                    "all). With no --add/--remove it creates NAME if missing; --list prints every "
                    "workspace with its members and projects.")
    _db_arg(p)
    p.add_argument("name", nargs="?", help="the workspace")
    p.add_argument("--add", action="append", default=[], metavar="USER", help="make USER a member (repeatable)")
    p.add_argument("--remove", action="append", default=[], metavar="USER",
                   help="take USER out (their labels stay; repeatable)")
    p.add_argument("--list", action="store_true", help="print every workspace as JSON")
    p.set_defaults(_run=_workspace)


def _import_parser(sub) -> None:
    p = sub.add_parser(
        "import", help="add items to label (--file), or existing labels (--labels), to a project",
        description="--file FILE adds items to label (records or items; the project is created "
                    "with --questions if missing). --labels FILE brings labelled records from "
                    "another tool or an export in as labels: comparison -> pairwise, ranking -> "
                    "rank, binary, score -> likert, span -> spans, demonstration, prompt -> write_prompt; "
                    "annotator and source come from each record.")
    _db_arg(p)
    p.add_argument("--project", required=True, help="the project (created when missing)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--file", help="items to label: records or items file")
    what.add_argument("--labels", help="labelled records to import as labels (.jsonl, .parquet, …)")
    p.add_argument("--questions", default="",
                   help="questions of the project if it does not exist (--labels: default the ones the records answer)")
    p.add_argument("--overlap", type=int, default=None,
                   help="annotators per item for a new project (default 1; --labels: the most any item has)")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="workspace of a new project")
    p.add_argument("--kind", default=None,
                   help="--labels: import only records of these kinds (comma-separated, e.g. binary,score,span)")
    p.add_argument("--annotator", default="imported", help="--labels: annotator of records that name none")
    p.set_defaults(_run=_import)


def _export_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a project's labels as rlhfkit records (or TRL datasets)",
        description="--format records (default): one rlhfkit record per answer, with annotator, "
                    "source and provenance; rlhfkit training and `label import` read them back. "
                    "--format trl: the columns TRL's trainers read as they are (prompt/chosen/"
                    "rejected for DPOTrainer and RewardTrainer, prompt/completion for SFTTrainer, "
                    "prompt/completion/label for KTOTrainer); tied pairs are left out, since TRL "
                    "would train them as strict preferences.")
    _db_arg(p)
    p.add_argument("--project", required=True, help="the project")
    p.add_argument("--out", required=True, help="output: .jsonl, .parquet, .csv or a folder (HF dataset)")
    p.add_argument("--format", choices=["records", "trl"], default="records",
                   help="records (default) or trl (see above)")
    p.add_argument("--kind", default=None,
                   help="only records of these kinds (comma-separated, e.g. comparison,ranking)")
    p.add_argument("--include-gold", action="store_true", help="also export honeypot labels")
    p.set_defaults(_run=_export)


def _stats_parser(sub) -> None:
    p = sub.add_parser(
        "stats", help="print a project's progress and agreement as JSON",
        description="Progress, agreement per question (Cohen's and Fleiss' kappa, Krippendorff's "
                    "alpha), and per annotator: labels, time, agreement with the majority, "
                    "honeypot accuracy and estimated reliability.")
    _db_arg(p)
    p.add_argument("--project", required=True, help="the project")
    p.add_argument("--arena", action="store_true", help="print arena ratings instead")
    p.set_defaults(_run=_stats)


def _fail(msg: str) -> int:
    print(f"rlhfkit label: error: {msg}", file=sys.stderr)
    return 1


def _guarded(fn):
    def run(args) -> int:
        from .store import StoreError

        try:
            return fn(args)
        except (StoreError, FileNotFoundError, ValueError) as e:
            return _fail(str(e))
    return run


def _serve(args) -> int:
    import uvicorn

    from .server import create_app
    from .store import Store

    store = Store(args.db)
    try:
        app = create_app(store, secure_cookies=True if args.secure_cookies else None,
                         secret_file=args.secret_file, trust_proxy=args.trust_proxy)
    except ValueError as err:
        return _fail(str(err))
    if not (args.secret_file or os.environ.get("RLHFKIT_SECRET_FILE") or os.environ.get("RLHFKIT_SECRET")):
        print("Sessions are signed with the key kept in the database; pass --secret-file for a "
              "key kept outside it.", file=sys.stderr)
    if not store.list_users():
        print("No accounts yet: create an admin with\n"
              f"  rlhfkit label add-user --db {args.db} --name admin --role admin", file=sys.stderr)
    print(f"rlhfkit feedback app on http://{args.host}:{args.port}  (API docs at /docs)")
    # the app reads proxy headers itself, and only with --trust-proxy
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", proxy_headers=False)
    return 0


@_guarded
def _create_project(args) -> int:
    from .store import Store
    from .transfer import create_project_from_file

    questions = [q.strip() for q in args.questions.split(",") if q.strip()]
    guidelines = args.guidelines
    if guidelines.startswith("@"):
        guidelines = open(guidelines[1:], encoding="utf-8").read()
    options = dict(overlap=args.overlap, guidelines=guidelines, gold_every=args.gold_every,
                   lock_seconds=args.lock_seconds, workspace=args.workspace,
                   categories=[c.strip() for c in args.categories.split(",") if c.strip()] or None)
    store = Store(args.db)
    if args.generate_from:
        from .generate import create_project_from_policy

        if not args.file:
            return _fail("--generate-from needs --file with the prompts")
        if args._sampler is None:
            return _fail("--generate-from needs the rlhfkit command (it loads the policy)")
        sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_p=args.top_p, system_prompt=args.system_prompt, seed=args.seed)
        try:
            n = create_project_from_policy(store, args.name, args.file, questions,
                                           args._sampler(args), args.k,
                                           model_name=args.model_name or args.generate_from,
                                           sampling=sampling, **options)
        except RuntimeError as e:  # the policy could not be loaded (ModelLoadError)
            return _fail(str(e))
    elif args.file:
        n = create_project_from_file(store, args.name, args.file, questions, **options)
    else:
        store.create_project(args.name, questions, **options)
        n = 0
    print(f"project {args.name}: {n} items, questions {', '.join(questions)}")
    return 0


@_guarded
def _add_user(args) -> int:
    from .store import Store

    store = Store(args.db)
    if args.invite:
        token = store.create_invite(args.name, args.role, workspaces=args.workspace)
        print(f"one-time invite for {args.name}: /invite/{token}  (prefix it with the app's address)")
        return 0
    password = args.password or getpass.getpass(f"password for {args.name}: ")
    user = store.create_user(args.name, password, args.role, args.source, workspaces=args.workspace)
    print(f"user {user.name} ({user.role}, {user.source}) created, in "
          f"{', '.join(args.workspace or [DEFAULT_WORKSPACE])}")
    return 0


@_guarded
def _workspace(args) -> int:
    from .store import Store

    store = Store(args.db)
    if args.list:
        print(json.dumps(store.workspaces(), indent=2, ensure_ascii=False))
        return 0
    if not args.name:
        return _fail("name the workspace (or pass --list)")
    if args.name not in {w["name"] for w in store.workspaces()}:
        store.create_workspace(args.name)
        print(f"workspace {args.name} created")
    for user in args.add:
        added = store.add_member(args.name, user)
        print(f"{user} {'added to' if added else 'was already in'} {args.name}")
    for user in args.remove:
        removed = store.remove_member(args.name, user)
        print(f"{user} {'removed from' if removed else 'was not in'} {args.name}")
    return 0


@_guarded
def _export(args) -> int:
    from .transfer import export_project

    kinds = [k.strip() for k in args.kind.split(",") if k.strip()] if args.kind else None
    n = export_project(args.db, args.project, args.out, include_gold=args.include_gold,
                       format=args.format, kinds=kinds)
    print(f"wrote {n} {'rows' if args.format == 'trl' else 'records'} to {args.out}")
    return 0


@_guarded
def _import(args) -> int:
    from .store import Store, StoreError
    from .transfer import add_items_from_file, import_labels_file

    store = Store(args.db)
    questions = [q.strip() for q in args.questions.split(",") if q.strip()]
    if args.labels:
        got = import_labels_file(store, args.project, args.labels, kind=args.kind,
                                 questions=questions or None, overlap=args.overlap,
                                 default_annotator=args.annotator, workspace=args.workspace)
        print(f"imported {got['labels']} labels into {args.project} ({got['items']} new items, "
              f"{got['users']} new annotator accounts, {got['duplicates']} already there)")
        return 0
    try:
        store.project(args.project)
    except StoreError:
        if not questions:
            return _fail(f"no project {args.project!r}: pass --questions to create it")
        store.create_project(args.project, questions, overlap=args.overlap or 1,
                             workspace=args.workspace)
    n = add_items_from_file(store, args.project, args.file)
    print(f"added {n} items to {args.project}")
    return 0


@_guarded
def _stats(args) -> int:
    from .report import arena_stats, project_stats
    from .store import Store

    store = Store(args.db)
    out = arena_stats(store, args.project) if args.arena else project_stats(store, args.project)
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0
