"""Labels from another tool (or an earlier export) into a project, and back out unchanged;
item files that are not what they claim are refused, and a re-labelled export keeps its new
provenance."""

from __future__ import annotations

import io
import json

import pytest

from conftest import PASSWORD
from rlhfkit.cli.main import main
from rlhfkit.data import records as R
from rlhfkit.data.io import read_records, write_records
from rlhfkit.feedback.report import project_stats
from rlhfkit.feedback.store import Store, StoreError
from rlhfkit.feedback.transfer import import_labels
from rlhfkit.train.inputs import read_source

T1, T2, T3 = "2024-05-01T10:00:00+00:00", "2024-05-01T10:05:00+00:00", "2024-05-02T08:00:00+00:00"
CHAT = [{"role": "user", "content": "Say hi nicely."}]


def who(name, source="human", at=T1):
    return {"annotator": name, "source": source, "created_at": at}


COMPARISONS = [
    R.Comparison(prompt="p1", chosen="A1", rejected="B1", **who("alice")),
    R.Comparison(prompt="p1", chosen="B1", rejected="A1", **who("bob", at=T2)),  # same item, sides swapped
    R.Comparison(prompt="p2", chosen="C2", rejected="D2", tie=True, **who("alice")),
    R.Comparison(prompt="p2", chosen="C2", rejected="D2", tie=True, meta={"both_bad": True}, **who("bob")),
    R.Comparison(prompt=CHAT, chosen="Hi there!", rejected="go away", **who("judge-1", "ai", T3)),
]
RANKINGS = [
    R.Ranking(prompt="q", responses=["x", "y", "z"], ranks=[1, 0, 2], **who("alice")),
    R.Ranking(prompt="q", responses=["z", "x", "y"], ranks=[2, 1, 0], **who("bob")),
    R.Ranking(prompt="q2", responses=["u", "v"], ranks=[0, 0], **who("sim-1", "simulated")),
]
ONE_RESPONSE = [  # binary + likert + spans on the same response: one label per annotator
    R.BinaryFeedback(prompt="tell me", response="0123456789", label=True, **who("alice")),
    R.ScoreFeedback(prompt="tell me", response="0123456789", score=6.0, **who("alice")),
    R.SpanFeedback(prompt="tell me", response="0123456789",
                   spans=[R.Span(0, 4, "irrelevant", "off topic")], missing=["a source"], **who("alice")),
    R.BinaryFeedback(prompt="tell me", response="0123456789", label=False, **who("bob")),
    R.ScoreFeedback(prompt="tell me", response="0123456789", score=2.0, **who("bob")),
    R.SpanFeedback(prompt="tell me", response="0123456789", spans=[R.Span(2, 6, "irrelevant")], **who("bob")),
]
WRITTEN = [
    R.Demonstration(prompt="Explain tides.", response="The moon pulls the sea.", **who("alice")),
    R.Demonstration(prompt="Explain tides.", response="Gravity, mostly.", **who("bob")),
]
CORRECTIONS = [R.Demonstration(prompt="Capital of France?", response="Paris.",
                               meta={"corrects": "Lyon."}, **who("alice"))]
PROMPTS = [R.PromptRecord(prompt="What makes bread rise?", meta={"instructions": "Ask about baking."},
                          **who("alice"))]


def content(r: R.Record) -> str:
    """A record without the store's references (id, meta): what the labels say, and who said it."""
    d = {"kind": r.kind, **r.to_dict()}
    d.pop("id", None)
    meta = d.pop("meta", {}) or {}
    for k in ("both_bad", "corrects", "instructions"):  # meta the questions themselves carry
        if k in meta:
            d[k] = meta[k]
    if d["kind"] == "ranking":  # listed in the item's order: compare response -> rank
        d["responses"], d["ranks"] = map(list, zip(*sorted(zip(d["responses"], d["ranks"]))))
    if d.get("tie"):  # a tie has no sides; the export says both_bad either way
        d["chosen"], d["rejected"] = sorted((d["chosen"], d["rejected"]))
        d["both_bad"] = bool(meta.get("both_bad"))
    return json.dumps(d, sort_keys=True)


@pytest.mark.parametrize("name,records", [
    ("prefs", COMPARISONS), ("ranks", RANKINGS), ("thumbs", ONE_RESPONSE), ("demos", WRITTEN),
    ("fixes", CORRECTIONS), ("prompts", PROMPTS),
])
def test_import_then_export_gives_the_same_records(tmp_path, capsys, name, records):
    db = f"sqlite:///{tmp_path / 'f.db'}"
    src, out = tmp_path / "labels.jsonl", tmp_path / "export.jsonl"
    write_records(records, src)
    assert main(["label", "import", "--db", db, "--project", name, "--labels", str(src)]) == 0
    assert "imported" in capsys.readouterr().out
    assert main(["label", "export", "--db", db, "--project", name, "--out", str(out)]) == 0
    back = read_records(out)
    assert sorted(map(content, back)) == sorted(map(content, records))
    # importing the same file again adds nothing
    assert main(["label", "import", "--db", db, "--project", name, "--labels", str(src)]) == 0
    assert "imported 0 labels" in capsys.readouterr().out
    assert len(read_source(f"db:{db}?project={name}")) == len(records)


def test_imported_labels_share_items_count_for_overlap_and_agreement(sqlite_store):
    s = sqlite_store
    got = import_labels(s, "prefs", COMPARISONS)
    # p1 (both orders) and p2 are one item each; the chat prompt a third
    assert got == {"items": 3, "labels": 5, "duplicates": 0, "users": 3}
    p = s.project("prefs")
    assert p.questions == ["pairwise"] and p.overlap == 2  # the most annotators on an item
    assert {u.name: u.source for u in s.list_users()} == {"alice": "human", "bob": "human", "judge-1": "ai"}
    # a new annotator is handed only the item that still has room: the chat prompt
    carol = s.create_user("carol", "password-1")
    task = s.next_task(carol, "prefs")
    assert task.prompt == CHAT and sorted(task.responses) == ["Hi there!", "go away"]
    s.submit(carol, "prefs", task.item_id, {"pairwise": {"choice": "tie"}}, task.submission_key)
    assert s.next_task(carol, "prefs") is None
    # agreement: on p1 alice and bob disagree; on p2 tie vs both_bad
    pairwise = project_stats(s, "prefs")["agreement"][0]
    assert pairwise["units_multi"] == 3
    # span agreement on the imported one-response labels: A [0,4) vs B [2,6) -> 5/24
    import_labels(s, "thumbs", ONE_RESPONSE)
    spans = next(q for q in project_stats(s, "thumbs")["agreement"] if q["question"] == "spans")
    assert spans["krippendorff_alpha_nominal"] == pytest.approx(5 / 24, abs=1e-4)


def test_rank_scores_and_sparse_ranks_become_ranks(sqlite_store):
    """Scores (higher = better) and ranks outside 0..K-1 are re-ranked: 0 = best, ties equal."""
    import_labels(sqlite_store, "r", [
        R.Ranking(prompt="q", responses=["a", "b", "c"], scores=[0.5, 2.0, 0.5], annotator="s"),
        R.Ranking(prompt="q", responses=["a", "b", "c"], ranks=[10, 3, 7], annotator="t"),
    ])
    assert [lab["answers"]["rank"]["ranks"] for lab in sqlite_store.labels("r")] == [[1, 0, 1], [2, 0, 1]]


def test_import_errors_name_the_record(sqlite_store, tmp_path, capsys):
    s = sqlite_store
    with pytest.raises(StoreError, match="import each kind into its own project"):
        import_labels(s, "mixed", COMPARISONS + ONE_RESPONSE)
    with pytest.raises(StoreError, match=r"record 1: score 4.5 is not a whole number 1..7"):
        import_labels(s, "lik", [R.ScoreFeedback(prompt="p", response="r", score=3.0),
                                 R.ScoreFeedback(prompt="p", response="r2", score=4.5)])
    with pytest.raises(StoreError, match="record 0: annotator must be"):
        import_labels(s, "bad-name", [R.BinaryFeedback(prompt="p", response="r", label=True,
                                                       annotator="ann@example.com")])
    with pytest.raises(StoreError, match="has no likert answer"):
        import_labels(s, "partial", ONE_RESPONSE[:1], questions=["binary", "likert"])
    s.create_project("pairs-only", ["pairwise"])
    with pytest.raises(StoreError, match="record 0 .binary. answers 'binary', which project"):
        import_labels(s, "pairs-only", ONE_RESPONSE[:1])
    s.create_user("dave", "password-1", source="human")
    with pytest.raises(StoreError, match="exists with source 'human'"):
        import_labels(s, "pairs-only", [R.Comparison(prompt="p", chosen="a", rejected="b",
                                                     annotator="dave", source="ai")])
    assert s.labels("pairs-only") == []  # one transaction: nothing half-imported
    with pytest.raises(StoreError, match="exists with source 'human'"):
        import_labels(s, "new-project", [R.Comparison(prompt="p", chosen="a", rejected="b",
                                                      annotator="dave", source="ai")])
    with pytest.raises(StoreError, match="no project named"):  # not even the project
        s.project("new-project")
    # the CLI: a mixed file with --kind, and a clear error without it
    src = tmp_path / "mixed.jsonl"
    write_records(COMPARISONS + ONE_RESPONSE, src)
    assert main(["label", "import", "--db", s.url, "--project", "m", "--labels", str(src)]) == 1
    assert "--kind" in capsys.readouterr().err
    assert main(["label", "import", "--db", s.url, "--project", "m1", "--labels", str(src),
                 "--kind", "binary,score,span"]) == 0
    assert Store(s.url).project("m1").questions == ["binary", "likert", "spans"]


PAIR = {"prompt": "Name a colour.", "responses": ["Red.", "Blue."]}


# Provenance keys cannot be overwritten by an item's meta -----------------------------------------


def test_relabelling_an_export_keeps_the_new_provenance(sqlite_store, tmp_path):
    from rlhfkit.data.io import read_records, write_records
    from rlhfkit.feedback.transfer import create_project_from_file, export_project

    s = sqlite_store
    ann = s.create_user("ann", PASSWORD)
    s.create_project("first", ["pairwise"])
    s.add_items("first", [dict(PAIR, prompt=f"q{i}") for i in range(3)])
    while (t := s.next_task(ann, "first")) is not None:
        s.submit(ann, "first", t.item_id, {"pairwise": {"choice": "left"}}, t.submission_key)
    old = tmp_path / "first.jsonl"
    export_project(s.url, "first", old)
    old_records = read_records(old)
    # re-label the exported dataset in a second project (with padding items to shift the ids)
    s.create_project("second", ["pairwise"])
    s.add_items("second", [dict(PAIR, prompt=f"pad{i}") for i in range(5)])
    pad = tmp_path / "pad.jsonl"
    write_records(old_records, pad)
    create_project_from_file(s, "third", pad, ["pairwise"])
    bob = s.create_user("bob", PASSWORD)
    while (t := s.next_task(bob, "third")) is not None:
        s.submit(bob, "third", t.item_id, {"pairwise": {"choice": "right"}}, t.submission_key)
    new = tmp_path / "third.jsonl"
    export_project(s.url, "third", new)
    labels = {lab["id"]: lab for lab in s.labels("third")}
    items = {it.id for it in s.items("third")}
    for r in read_records(new):
        assert r.meta["project"] == "third" and r.annotator == "bob"
        assert r.meta["label_id"] in labels and r.meta["item_id"] in items
        assert r.meta["order"] == labels[r.meta["label_id"]]["order"]
        # what the old record said is kept, under its own key
        assert r.meta["item_meta"]["project"] == "first"


# Uploads that are not what they claim get a 4xx naming the problem -------------------------------


@pytest.mark.parametrize("filename,data,message", [
    ("items.parquet", b"PAR1 this is not parquet at all", "Parquet"),
    ("items.jsonl", '{"prompt": "caf\xe9"}\n'.encode("latin-1"), "UTF-8"),
    ("items.csv", "prompt,response\ncaf\xe9,ok\n".encode("latin-1"), "UTF-8"),
    ("items.txt", b"\xff\xfeh\x00i\x00", "UTF-8"),
    ("items.json", b"{not json", "JSON"),
    ("items.json", b'{"a": 1}', "list"),
    ("items.jsonl", b'[1, 2]\n', "object"),
    ("items.csv", b'prompt,responses\np,"[1, 2"\n', "responses"),
])
def test_bad_uploads_are_4xx_naming_the_problem(store, admin, filename, data, message):
    page = admin.get("/admin").text
    from conftest import csrf_of

    r = admin.c.post("/admin/projects", data={"name": "up", "questions": ["binary"],
                                              "csrf_token": csrf_of(page)},
                     files={"file": (filename, io.BytesIO(data))}, follow_redirects=False)
    assert 400 <= r.status_code < 500 and message in r.text, (r.status_code, r.text[-500:])
    with pytest.raises(Exception, match="no project named"):
        store.project("up")
