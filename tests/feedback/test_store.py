"""The store without HTTP: files in, records out, `db:` paths, concurrency, the CLI."""

from __future__ import annotations

import json
import threading

import pytest

from rlhfkit.data import records as R
from rlhfkit.data.io import read_records, write_records
from rlhfkit.feedback.report import arena_stats, create_arena, project_stats
from rlhfkit.feedback.store import Store, StoreError
from rlhfkit.feedback.transfer import (
    create_project_from_file,
    export_project,
    import_records,
    read_project_records,
)
from rlhfkit.train.inputs import read_source


def label_all(store, user, project, answer):
    n = 0
    while (t := store.next_task(user, project)) is not None:
        store.submit(user, project, t.item_id, answer(t), t.submission_key, time_ms=100)
        n += 1
    return n


def test_project_from_jsonl_file_splits_rows_for_the_questions(sqlite_store, tmp_path):
    f = tmp_path / "items.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "p1", "responses": ["a", "b", "c"], "models": ["m1", "m2", "m3"]},
        {"prompt": "p2", "chosen": "yes", "rejected": "no"},
    ]) + "\n")
    # pairwise: 3 responses -> 3 pairs, chosen/rejected -> 1 pair
    assert create_project_from_file(sqlite_store, "pairs", f, ["pairwise"]) == 4
    # binary: one item per response
    assert create_project_from_file(sqlite_store, "thumbs", f, ["binary"]) == 5
    # rank: all responses of a row together (K = 3 and K = 2)
    assert create_project_from_file(sqlite_store, "ranks", f, ["rank"]) == 2
    items = sqlite_store.items("pairs")
    assert items[0].responses == [{"text": "a", "model": "m1"}, {"text": "b", "model": "m2"}]


def test_project_from_csv_and_txt(sqlite_store, tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,response\nHello?,Hi there\nBye?,See you\n")
    assert create_project_from_file(sqlite_store, "c", csv, ["likert", "spans"]) == 2
    txt = tmp_path / "prompts.txt"
    txt.write_text("Write a haiku\nExplain tides\n")
    assert create_project_from_file(sqlite_store, "t", txt, ["demonstration"]) == 2
    with pytest.raises(StoreError, match="need at least 1 responses"):
        create_project_from_file(sqlite_store, "t2", txt, ["binary"])


def test_export_and_read_back_through_data_io(sqlite_store, tmp_path):
    s = sqlite_store
    ann = s.create_user("ann", "password-1", source="simulated")
    s.create_project("cmp", ["pairwise"])
    s.add_items("cmp", [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(3)])
    label_all(s, ann, "cmp", lambda t: {"pairwise": {"choice": "left"}})
    url = f"{s.url}?project=cmp"
    recs = read_project_records(url)
    assert len(recs) == 3 and all(isinstance(r, R.Comparison) for r in recs)
    assert all(r.source == "simulated" and r.annotator == "ann" for r in recs)
    # the data IO module reads db: paths through read_project_records
    via_io = read_source(f"db:{url}", kind="comparison")
    assert [r.to_dict() for r in via_io] == [r.to_dict() for r in recs]
    for suffix in ("out.jsonl", "out.parquet", "hf-folder"):
        path = tmp_path / suffix
        assert export_project(s.url, "cmp", path) == 3
        back = read_records(path)
        assert [(r.prompt, r.chosen, r.rejected) for r in back] == [(r.prompt, r.chosen, r.rejected) for r in recs]


def test_import_records_makes_items_to_label(sqlite_store):
    recs = [R.Comparison(prompt="p", chosen="good", rejected="bad"),
            R.Ranking(prompt="q", responses=["x", "y", "z"], ranks=[0, 1, 2])]
    sqlite_store.create_project("imp", ["pairwise"])
    assert import_records(sqlite_store, "imp", recs) == 1 + 3  # ranking of 3 -> 3 pairs
    sqlite_store.create_project("imp-rank", ["rank"])
    assert import_records(sqlite_store, "imp-rank", recs) == 2


def test_url_with_project_and_errors(sqlite_store, tmp_path):
    """Failures of a db: source are RecordErrors naming the URL, like any source of records."""
    with pytest.raises(R.RecordError, match="name the project"):
        read_project_records(sqlite_store.url)
    with pytest.raises(R.RecordError, match="no project named"):
        read_source(f"db:{sqlite_store.url}?project=missing")
    missing = tmp_path / "typo.db"
    with pytest.raises(FileNotFoundError, match="no feedback database"):
        read_source(f"db:sqlite:///{missing}?project=p")
    assert not missing.exists()  # reading never creates an empty database
    with pytest.raises(R.RecordError, match=r"postgresql://u:\*\*\*@127.0.0.1:1/x.*cannot read the feedback store"):
        read_source("db:postgresql://u:secret@127.0.0.1:1/x?project=p&connect_timeout=2")


def test_concurrent_annotators_never_exceed_overlap(store):
    """16 threads take and label items at once; each item gets exactly `overlap` labels."""
    store.create_project("race", ["binary"], overlap=3)
    store.add_items("race", [{"prompt": f"p{i}", "responses": ["r"]} for i in range(20)])
    users = [store.create_user(f"u{i}", "password-1") for i in range(16)]
    errors = []

    def work(u):
        try:
            label_all(store, u, "race", lambda t: {"binary": {"value": "up"}})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    per_item = {}
    for lab in store.labels("race"):
        per_item.setdefault(lab["item_id"], set()).add(lab["annotator"])
    assert len(per_item) == 20 and all(len(v) == 3 for v in per_item.values())
    assert len(store.labels("race")) == 60


def test_arena_end_to_end_with_a_machine_preference(sqlite_store):
    s = sqlite_store
    prompts = [f"prompt {i}" for i in range(30)]
    responses = {"sft": [f"short {i}" for i in range(30)],
                 "rlhf": [f"a much longer and more helpful answer {i}" for i in range(30)],
                 "base": [f"meh {i}" for i in range(30)]}
    assert create_arena(s, "arena", prompts, responses) == 90
    judge = s.create_user("judge", "password-1", source="ai")
    # a judge that prefers the longer response, ties when equal length

    def prefer_longer(t):
        a, b = (len(x) for x in t.responses)
        return {"pairwise": {"choice": "left" if a > b else "right" if b > a else "tie"}}

    assert label_all(s, judge, "arena", prefer_longer) == 90
    res = arena_stats(s, "arena", rounds=50)
    assert [r["model"] for r in res["ratings"]] == ["rlhf", "sft", "base"]
    row = next(r for r in res["table"] if (r["a"], r["b"]) == ("rlhf", "sft"))
    assert row == {"a": "rlhf", "b": "sft", "win": 1.0, "tie": 0.0, "lose": 0.0, "n": 30}
    assert project_stats(s, "arena")["annotators"][0]["source"] == "ai"


def test_two_annotators_agreement_in_stats(sqlite_store):
    s = sqlite_store
    s.create_project("two", ["binary", "likert"], overlap=2)
    s.add_items("two", [{"prompt": f"p{i}", "responses": [f"r{i}"]} for i in range(10)])
    a, b = s.create_user("a", "password-1"), s.create_user("b", "password-1")
    # a: up on even items; b: agrees except on items 8 and 9
    label_all(s, a, "two", lambda t: {"binary": {"value": "up" if int(t.prompt[1:]) % 2 == 0 else "down"},
                                      "likert": {"score": 2 + int(t.prompt[1:]) % 5}})
    label_all(s, b, "two", lambda t: {"binary": {"value": ("up" if int(t.prompt[1:]) % 2 == 0 else "down")
                                                 if int(t.prompt[1:]) < 8 else "up"},
                                      "likert": {"score": 2 + int(t.prompt[1:]) % 5}})
    stats = project_stats(s, "two")
    binary = next(q for q in stats["agreement"] if q["question"] == "binary")
    # a: 5 up / 5 down; b: 6 up / 4 down; agree on 9 of 10
    # p_o = 0.9, p_e = .5*.6 + .5*.4 = .5, kappa = 0.8
    assert binary["cohen_kappa_mean"] == pytest.approx(0.8)
    likert = next(q for q in stats["agreement"] if q["question"] == "likert")
    assert likert["krippendorff_alpha_interval"] == pytest.approx(1.0)
    assert likert["cohen_kappa_mean"] == pytest.approx(1.0)


def test_cli_create_label_export(tmp_path, capsys):
    import argparse

    from rlhfkit.feedback.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    items = tmp_path / "items.jsonl"
    write_records([R.Comparison(prompt="p", chosen="c", rejected="r")], items)

    def run(*argv):
        args = parser.parse_args(list(argv))
        return args._run(args)

    assert run("label", "create-project", "--db", db, "--name", "cli", "--questions", "pairwise",
               "--file", str(items), "--overlap", "1") == 0
    assert run("label", "add-user", "--db", db, "--name", "ann", "--password", "password-1") == 0
    assert run("label", "add-user", "--db", db, "--name", "ann", "--password", "password-1") == 1
    assert "already exists" in capsys.readouterr().err
    assert run("label", "import", "--db", db, "--project", "cli", "--file", str(items)) == 0
    s = Store(db)
    u = s.user_by_name("ann")
    assert label_all(s, u, "cli", lambda t: {"pairwise": {"choice": "tie"}}) == 2
    out = tmp_path / "export.jsonl"
    assert run("label", "export", "--db", db, "--project", "cli", "--out", str(out)) == 0
    back = read_records(out)
    assert len(back) == 2 and all(r.tie for r in back)
    capsys.readouterr()
    assert run("label", "stats", "--db", db, "--project", "cli") == 0
    assert json.loads(capsys.readouterr().out)["progress"]["labels"] == 2
    assert run("label", "create-project", "--db", db, "--name", "bad", "--questions", "pairwise,binary") == 1


def expire_locks(store, user):
    """Make every lock ``user`` holds run out now (instead of sleeping through it)."""
    import time

    from sqlalchemy import update

    from rlhfkit.feedback.store import Assignment

    with store.tx(write=True) as s:
        s.execute(update(Assignment).where(Assignment.user_id == user.id,
                                           Assignment.status == "active")
                  .values(expires_at=time.time() - 1))


def test_late_label_after_lock_expiry_never_exceeds_overlap(store):
    """Alice's lock runs out and the slot goes to Bob: her late answer is refused (409), on
    both stores, whether Bob has already submitted or still holds the item."""
    store.create_project("late", ["binary"], overlap=1)
    store.add_items("late", [{"prompt": "p0", "responses": ["r0"]},
                             {"prompt": "p1", "responses": ["r1"]}])
    alice, bob = store.create_user("alice", "password-1"), store.create_user("bob", "password-1")
    up = {"binary": {"value": "up"}}
    # 1. Bob takes the freed slot and submits first
    t_alice = store.next_task(alice, "late")
    expire_locks(store, alice)
    t_bob = store.next_task(bob, "late")
    assert t_bob.item_id == t_alice.item_id  # the expired slot was handed on
    store.submit(bob, "late", t_bob.item_id, up, t_bob.submission_key)
    with pytest.raises(StoreError, match="lock on this item expired") as err:
        store.submit(alice, "late", t_alice.item_id, up, t_alice.submission_key)
    assert err.value.status == 409
    # 2. Bob holds the freed slot (live lock) but has not answered yet: still refused
    t_alice = store.next_task(alice, "late")
    expire_locks(store, alice)
    t_bob = store.next_task(bob, "late")
    assert t_bob.item_id == t_alice.item_id
    with pytest.raises(StoreError, match="lock on this item expired"):
        store.submit_and_next(alice, "late", t_alice.item_id, up, t_alice.submission_key)
    store.submit(bob, "late", t_bob.item_id, up, t_bob.submission_key)
    labels = store.labels("late")
    assert sorted(lab["annotator"] for lab in labels) == ["bob", "bob"]
    assert [it.n_done for it in store.items("late")] == [1, 1]
    assert store.progress("late")["complete_items"] == 2


def test_late_label_is_kept_while_the_item_has_room(store):
    """An expired (or released) lock whose slot nobody took: the late answer still counts,
    up to the overlap and no further."""
    store.create_project("room", ["binary"], overlap=2)
    store.add_items("room", [{"prompt": "p", "responses": ["r"]}])
    a, b, c = (store.create_user(n, "password-1") for n in ("a", "b", "c"))
    up = {"binary": {"value": "up"}}
    t_a = store.next_task(a, "room")
    expire_locks(store, a)
    t_b = store.next_task(b, "room")
    store.submit(b, "room", t_b.item_id, up, t_b.submission_key)
    label, duplicate = store.submit(a, "room", t_a.item_id, up, t_a.submission_key)  # 2 of 2
    assert not duplicate and label["annotator"] == "a"
    assert store.next_task(c, "room") is None
    # released instead of expired: the same rule
    store.create_project("skip", ["binary"], overlap=1)
    store.add_items("skip", [{"prompt": "p", "responses": ["r"]}])
    t_a = store.next_task(a, "skip")
    store.release(a, "skip", t_a.item_id)
    t_c = store.next_task(c, "skip")
    store.submit(c, "skip", t_c.item_id, up, t_c.submission_key)
    with pytest.raises(StoreError, match="lock on this item expired"):
        store.submit(a, "skip", t_a.item_id, up, t_a.submission_key)
    assert len(store.labels("skip")) == 1


def test_span_agreement_in_stats(sqlite_store):
    """The hand-computed response of test_span_alpha_one_response, marked through the store:
    A irrelevant [0, 4), B irrelevant [2, 6) of a 10-character response -> alpha = 5/24."""
    s = sqlite_store
    s.create_project("sp", ["spans"], overlap=2)
    s.add_items("sp", [{"prompt": "p", "responses": ["0123456789"]}])
    for name, start, end in (("A", 0, 4), ("B", 2, 6)):
        u = s.create_user(name, "password-1")
        label_all(s, u, "sp", lambda t, a=start, b=end: {
            "spans": {"spans": [{"start": a, "end": b, "category": "irrelevant"}], "missing": []}})
    spans = next(q for q in project_stats(s, "sp")["agreement"] if q["question"] == "spans")
    assert spans["krippendorff_alpha_nominal"] == pytest.approx(5 / 24, abs=1e-4)
    assert spans["alpha_by_category"] == {"irrelevant": pytest.approx(5 / 24, abs=1e-4)}
    assert spans["characters"] == 10 and spans["units_multi"] == 1
    # and on the admin page
    from conftest import PASSWORD, Browserish
    from rlhfkit.feedback.server import create_app

    s.create_user("admin", PASSWORD, role="admin")
    page = Browserish(create_app(s), "admin").get("/admin/p/sp").text
    assert "nominal 0.2083" in page and "over 10 characters · irrelevant 0.2083" in page
