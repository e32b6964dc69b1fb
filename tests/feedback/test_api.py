"""The JSON API on both stores (SQLite and PostgreSQL): projects, queue, every question type,
idempotent submits, overlap, locks, honeypots, visibility, export; and input that must be
refused (span offsets past the text, lone surrogates, unbounded integers, items their question
type cannot use) without breaking the project."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from conftest import PASSWORD, Browserish
from rlhfkit.feedback.server import create_app

PAIR = {"prompt": "Name a colour.", "responses": [{"text": "Red.", "model": "policy-A"},
                                                  {"text": "Blue.", "model": "policy-B"}]}
ONE = {"prompt": "Say hello.", "responses": [{"text": "Hello there, friend.", "model": "sft"}]}
FOUR = {"prompt": "Pick a number.", "responses": ["one", "two", "three", "four"]}

# question types -> (item, answer in display terms)
CASES = {
    "write_prompt": ({"prompt": "Ask something about cooking."}, {"text": "How long do I boil an egg?"}),
    "demonstration": ({"prompt": "Say hi politely."}, {"text": "Hello, nice to meet you."}),
    "binary": (ONE, {"value": "up"}),
    "likert": (ONE, {"score": 6}),
    "spans": (ONE, {"spans": [{"start": 0, "end": 5, "category": "irrelevant", "note": "why?"}],
                    "missing": ["the time of day"]}),
    "correction": (ONE, {"text": "Hello, friend."}),
    "pairwise": (PAIR, {"choice": "left"}),
    "rank": (FOUR, {"ranks": [2, 1, 4, 3]}),
}
KIND = {"write_prompt": "prompt", "demonstration": "demonstration", "binary": "binary",
        "likert": "score", "spans": "span", "correction": "demonstration",
        "pairwise": "comparison", "rank": "ranking"}


def create(admin, name, questions, items, **opts):
    r = admin.post_json("/api/projects", {"name": name, "questions": questions, "items": items, **opts})
    assert r.status_code == 201, r.text
    return r.json()


def take(client, project):
    r = client.get(f"/api/projects/{project}/next")
    assert r.status_code == 200, r.text
    return r.json()


def submit(client, project, task, answers, key=None, time_ms=1500):
    return client.post_json(f"/api/projects/{project}/items/{task['item_id']}/labels",
                            {"answers": answers, "submission_key": key or task["submission_key"],
                             "time_ms": time_ms})


@pytest.mark.parametrize("question", list(CASES))
def test_every_question_type_round_trips_to_a_record(admin, alice, question):
    item, answer = CASES[question]
    create(admin, "q", [question], [item])
    task = take(alice, "q")
    assert task["questions"] == [question]
    r = submit(alice, "q", task, {question: answer})
    assert r.status_code == 201, r.text
    assert r.json()["duplicate"] is False
    assert alice.get("/api/projects/q/next").status_code == 204  # nothing left
    lines = admin.get("/api/projects/q/export").text.strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["kind"] == KIND[question]
    assert rec["annotator"] == "alice" and rec["source"] == "human"
    assert rec["meta"]["time_ms"] == 1500
    order = rec["meta"]["order"]
    shown = task["responses"]
    if question == "pairwise":
        # "left" = what alice saw on the left, whatever the shuffle put there
        assert rec["chosen"] == shown[0] and rec["rejected"] == shown[1]
        assert [PAIR["responses"][j]["text"] for j in order] == shown
    elif question == "rank":
        # ranks were given per displayed position: map them back to the item's order
        by_text = {t: r for t, r in zip(shown, answer["ranks"])}
        assert rec["ranks"] == [by_text[t] - 1 for t in rec["responses"]]
        assert rec["responses"] == FOUR["responses"]
    elif question == "spans":
        assert rec["spans"] == [{"start": 0, "end": 5, "category": "irrelevant", "note": "why?"}]
        assert rec["missing"] == ["the time of day"]
    elif question == "binary":
        assert rec["label"] is True
    elif question == "likert":
        assert rec["score"] == 6.0
    elif question in ("demonstration", "correction"):
        assert rec["response"] == answer["text"]
    elif question == "write_prompt":
        assert rec["prompt"] == answer["text"]


def test_combined_questions_on_one_response(admin, alice):
    create(admin, "multi", ["binary", "likert", "spans"], [ONE])
    task = take(alice, "multi")
    r = submit(alice, "multi", task, {"binary": {"value": "down"}, "likert": {"score": 2},
                                      "spans": {"spans": [], "missing": []}})
    assert r.status_code == 201, r.text
    kinds = sorted(json.loads(line)["kind"] for line in admin.get("/api/projects/multi/export").text.splitlines())
    assert kinds == ["binary", "score", "span"]


def test_retried_submission_is_stored_once(admin, alice):
    create(admin, "idem", ["binary"], [ONE, ONE])
    task = take(alice, "idem")
    first = submit(alice, "idem", task, {"binary": {"value": "up"}}, key="key-123456")
    again = submit(alice, "idem", task, {"binary": {"value": "up"}}, key="key-123456")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["label"]["id"] == first.json()["label"]["id"]
    assert len(admin.get("/api/projects/idem/labels?all=true").json()) == 1
    # the same item under a different key is a conflict, not a second label
    other = submit(alice, "idem", task, {"binary": {"value": "down"}}, key="key-other-1")
    assert other.status_code == 409
    # the same key for another item is refused too
    task2 = take(alice, "idem")
    assert task2["item_id"] != task["item_id"]
    assert submit(alice, "idem", task2, {"binary": {"value": "up"}}, key="key-123456").status_code == 409


def test_overlap_hands_each_item_to_n_distinct_annotators(app, admin, alice, bob):
    create(admin, "ov", ["binary"], [ONE, ONE, ONE], overlap=2)
    seen = {"alice": [], "bob": []}
    for who, client in (("alice", alice), ("bob", bob)):
        while True:
            r = client.get("/api/projects/ov/next")
            if r.status_code == 204:
                break
            task = r.json()
            assert submit(client, "ov", task, {"binary": {"value": "up"}}).status_code == 201
            seen[who].append(task["item_id"])
    assert sorted(seen["alice"]) == sorted(seen["bob"]) and len(set(seen["alice"])) == 3
    carol = Browserish(app, "admin")  # a third annotator finds nothing: overlap reached
    assert carol.get("/api/projects/ov/next").status_code == 204
    stats = admin.get("/api/projects/ov/stats").json()
    assert stats["progress"]["complete_items"] == 3 and stats["progress"]["labels"] == 6


def test_next_returns_the_held_item_until_submitted(admin, alice):
    create(admin, "hold", ["binary"], [ONE, ONE])
    a = take(alice, "hold")
    b = take(alice, "hold")
    assert a["item_id"] == b["item_id"] and a["submission_key"] == b["submission_key"]


def test_locked_item_is_not_handed_out_twice_and_expires(store, admin, alice, bob):
    create(admin, "lock", ["binary"], [ONE], overlap=1, lock_seconds=1)
    task = take(alice, "lock")
    assert bob.get("/api/projects/lock/next").status_code == 204  # alice holds the only slot
    import time

    time.sleep(1.2)  # the lock expires: bob may take it
    bob_task = take(bob, "lock")
    assert bob_task["item_id"] == task["item_id"]
    assert submit(bob, "lock", bob_task, {"binary": {"value": "down"}}).status_code == 201


def test_skip_releases_the_item(admin, alice, bob):
    create(admin, "skip", ["binary"], [ONE])
    task = take(alice, "skip")
    r = alice.post_json(f"/api/projects/skip/items/{task['item_id']}/release", {})
    assert r.status_code == 200
    assert take(bob, "skip")["item_id"] == task["item_id"]


def test_sides_are_shuffled_per_annotator_and_recorded(admin, app):
    create(admin, "shuf", ["pairwise"], [PAIR] * 24, overlap=1)
    orders = set()
    client = Browserish(app, "alice")
    for _ in range(24):
        task = take(client, "shuf")
        orders.add(tuple(task["responses"]))
        r = submit(client, "shuf", task, {"pairwise": {"choice": "left"}})
        assert r.status_code == 201
        label = r.json()["label"]
        # the stored choice is the canonical index of what was on the left
        assert label["answers"]["pairwise"]["choice"] == label["order"][0]
    assert orders == {("Red.", "Blue."), ("Blue.", "Red.")}  # both sides happened


def test_model_identity_is_hidden_from_annotators(admin, alice):
    create(admin, "blind", ["pairwise"], [PAIR])
    api = alice.get("/api/projects/blind/next").text
    page = alice.get("/p/blind").text
    for text in (api, page):
        assert "policy-A" not in text and "policy-B" not in text
    # ... but kept for the export (arena, analysis)
    task = json.loads(api)
    submit(alice, "blind", task, {"pairwise": {"choice": "tie"}})
    rec = json.loads(admin.get("/api/projects/blind/export").text)
    assert sorted(rec["meta"]["models"]) == ["policy-A", "policy-B"] and rec["tie"] is True


def test_honeypots_are_served_and_scored(admin, alice):
    gold = dict(ONE, gold={"binary": {"value": "up"}})
    create(admin, "gold", ["binary"], [ONE, ONE, ONE, ONE, gold], gold_every=2)
    served_gold = []
    while (r := alice.get("/api/projects/gold/next")).status_code == 200:
        task = r.json()
        served_gold.append(task["item_id"] == 5)
        submit(alice, "gold", task, {"binary": {"value": "up"}})
    assert served_gold.count(True) == 1 and served_gold.index(True) == 1  # the 2nd item
    who = admin.get("/api/projects/gold/stats").json()["annotators"][0]
    assert who["gold_accuracy"] == 1.0 and who["gold_n"] == 1
    assert who["labels"] == 5
    # honeypot labels are not training data
    assert len(admin.get("/api/projects/gold/export").text.strip().splitlines()) == 4


def test_invalid_answers_get_a_clear_422(admin, alice):
    create(admin, "bad", ["pairwise"], [PAIR])
    task = take(alice, "bad")
    cases = [
        ({"pairwise": {"choice": "middle"}}, "'left', 'right', 'tie' or 'both_bad'"),
        ({}, "missing ['pairwise']"),
        ({"pairwise": {"choice": "left"}, "likert": {"score": 3}}, "unexpected ['likert']"),
        ({"pairwise": "left"}, "must be a JSON object"),
    ]
    for answers, message in cases:
        r = submit(alice, "bad", task, answers)
        assert r.status_code == 422 and message in r.json()["detail"], r.text
    create(admin, "badrank", ["rank"], [FOUR])
    t = take(alice, "badrank")
    r = submit(alice, "badrank", t, {"rank": {"ranks": [1, 2, 3]}})
    assert r.status_code == 422 and "list of 4 integers" in r.json()["detail"]
    create(admin, "badspan", ["spans"], [ONE])
    t = take(alice, "badspan")
    r = submit(alice, "badspan", t, {"spans": {"spans": [{"start": 3, "end": 999, "category": "irrelevant"}]}})
    assert r.status_code == 422 and "within the response" in r.json()["detail"]
    r = submit(alice, "badspan", t, {"spans": {"spans": [{"start": 0, "end": 2, "category": "rude"}]}})
    assert r.status_code == 422 and "category" in r.json()["detail"]


def test_project_validation(admin):
    r = admin.post_json("/api/projects", {"name": "mix", "questions": ["pairwise", "binary"]})
    assert r.status_code == 422 and "separate projects" in r.json()["detail"]
    r = admin.post_json("/api/projects", {"name": "p1", "questions": ["pairwise"],
                                          "items": [ONE]})
    assert r.status_code == 422 and "need 2 responses" in r.json()["detail"]
    create(admin, "dup", ["binary"], [])
    r = admin.post_json("/api/projects", {"name": "dup", "questions": ["binary"]})
    assert r.status_code == 409
    r = admin.post_json("/api/projects", {"name": "bad name!", "questions": ["binary"]})
    assert r.status_code == 422


def test_annotator_sees_only_own_labels(admin, alice, bob):
    create(admin, "own", ["binary"], [ONE, ONE], overlap=2)
    for c in (alice, bob):
        t = take(c, "own")
        submit(c, "own", t, {"binary": {"value": "up"}})
    mine = alice.get("/api/projects/own/labels").json()
    assert [lab["annotator"] for lab in mine] == ["alice"]
    assert alice.get("/api/projects/own/labels?all=true").status_code == 403
    assert len(admin.get("/api/projects/own/labels?all=true").json()) == 2


def test_agreement_and_arena_endpoints(admin, alice, bob):
    items = [dict(PAIR, prompt=f"q{i}") for i in range(6)]
    create(admin, "agree", ["pairwise"], items, overlap=2)
    for c in (alice, bob):
        while (r := c.get("/api/projects/agree/next")).status_code == 200:
            task = r.json()
            # both always prefer policy-A's "Red.", wherever it is shown
            side = "left" if task["responses"][0] == "Red." else "right"
            submit(c, "agree", task, {"pairwise": {"choice": side}})
    stats = admin.get("/api/projects/agree/stats").json()
    (pw,) = stats["agreement"]
    assert pw["units_multi"] == 6
    # perfect agreement on a single category: chance agreement is 1, kappa/alpha undefined
    assert pw["cohen_kappa_mean"] is None and pw["krippendorff_alpha_nominal"] is None
    assert {a["annotator"]: a["majority_n"] for a in stats["annotators"]} == {"alice": 0, "bob": 0}
    arena = admin.get("/api/projects/agree/arena").json()
    assert arena["games"] == 12
    assert [r["model"] for r in arena["ratings"]] == ["policy-A", "policy-B"]
    assert arena["table"] == [{"a": "policy-A", "b": "policy-B", "win": 1.0, "tie": 0.0, "lose": 0.0, "n": 12}]
    page = admin.get("/admin/p/agree").text
    assert "policy-A vs policy-B" in page and "100.0%" in page


def test_login_api_and_bearer_token(app, store):
    from fastapi.testclient import TestClient

    c = TestClient(app)
    assert c.post("/api/login", json={"username": "alice", "password": "nope-nope"}).status_code == 401
    r = c.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 200
    token = r.json()["token"]
    fresh = TestClient(app)  # no cookies: the header alone authenticates
    me = fresh.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["name"] == "alice"


def test_invite_link_is_single_use(app, admin):
    from fastapi.testclient import TestClient

    r = admin.post_json("/api/invites", {"name": "carol"})
    assert r.status_code == 201
    path = "/invite/" + r.json()["url"].rsplit("/invite/", 1)[1]
    c = TestClient(app)
    page = c.get(path)
    assert page.status_code == 200 and "carol" in page.text
    from conftest import csrf_of

    r = c.post(path, data={"password": "short", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 422 and "at least 8" in r.text
    r = c.post(path, data={"password": "carols-password", "csrf_token": csrf_of(page.text)},
               follow_redirects=False)
    assert r.status_code == 303
    assert c.get("/api/me").json()["name"] == "carol"
    assert TestClient(app).get(path).status_code == 404  # used up
    Browserish(app, "carol", "carols-password")  # and the password works


def test_openapi_documents_the_api(app):
    from fastapi.testclient import TestClient

    spec = TestClient(app).get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("/api/login", "/api/projects/{project}/next",
              "/api/projects/{project}/items/{item_id}/labels", "/api/projects/{project}/export"):
        assert p in paths
    assert "/login" not in paths  # pages are not part of the API


# Span offsets are code points (the browser side: test_browser.py) --------------------------------


def test_span_offsets_are_code_points_end_to_end(admin, alice):
    text = "😀😀hello world"
    create(admin, "emoji", ["spans"], [{"prompt": "p", "responses": [text]}])
    task = alice.get("/api/projects/emoji/next").json()
    r = alice.post_json(f"/api/projects/emoji/items/{task['item_id']}/labels",
                        {"answers": {"spans": {"spans": [{"start": 2, "end": 7, "category": "irrelevant"}]}},
                         "submission_key": task["submission_key"]})
    assert r.status_code == 201, r.text
    (rec,) = [json.loads(x) for x in admin.get("/api/projects/emoji/export").text.splitlines()]
    span = rec["spans"][0]
    assert text[span["start"]:span["end"]] == "hello"
    # a span past the last code point (UTF-16 would allow 15) is refused
    create(admin, "emoji2", ["spans"], [{"prompt": "p", "responses": [text]}])
    task = alice.get("/api/projects/emoji2/next").json()
    r = alice.post_json(f"/api/projects/emoji2/items/{task['item_id']}/labels",
                        {"answers": {"spans": {"spans": [{"start": 7, "end": 15, "category": "irrelevant"}]}},
                         "submission_key": task["submission_key"]})
    assert r.status_code == 422 and "0..13 characters" in r.json()["detail"]


# One bad string cannot break a project -----------------------------------------------------------

LONE = "x\ud800y"


def test_lone_surrogate_answer_is_refused_and_nothing_breaks(store, admin, alice):
    create(admin, "w", ["demonstration"], [{"prompt": "Say hi."}, {"prompt": "Say bye."}])
    task = alice.get("/api/projects/w/next").json()
    body = json.dumps({"answers": {"demonstration": {"text": LONE}},
                       "submission_key": task["submission_key"]})  # JSON carries it as \ud800
    r = alice.c.post(f"/api/projects/w/items/{task['item_id']}/labels", content=body,
                     headers={"Content-Type": "application/json", "X-CSRF-Token": alice.csrf})
    assert r.status_code == 422 and "lone surrogate" in r.json()["detail"], r.text
    assert "demonstration" in r.json()["detail"] and store.labels("w") == []
    r = alice.post_json(f"/api/projects/w/items/{task['item_id']}/labels",
                        {"answers": {"demonstration": {"text": "Hi!"}}, "submission_key": task["submission_key"]})
    assert r.status_code == 201
    assert alice.get("/api/projects/w/labels").status_code == 200
    assert admin.get("/api/projects/w/export").status_code == 200


@pytest.mark.parametrize("item", [
    {"prompt": LONE, "responses": ["ok"]},
    {"prompt": "ok", "responses": [LONE]},
    {"prompt": [{"role": "user", "content": LONE}], "responses": ["ok"]},
    {"prompt": "ok", "responses": ["ok"], "meta": {"note": LONE}},
    {"prompt": "ok", "responses": ["ok"], "meta": {LONE: 1}},
    {"prompt": "ok", "responses": ["ok"], "id": LONE},
    {"prompt": "ok\x00", "responses": ["ok"]},
])
def test_items_with_bad_text_are_refused(store, admin, item):
    create(admin, "b", ["binary"], [])
    r = admin.c.post("/api/projects/b/items", content=json.dumps({"items": [item]}),
                     headers={"Content-Type": "application/json", "X-CSRF-Token": admin.csrf})
    assert r.status_code == 422 and "item 0" in r.json()["detail"], r.text
    assert store.items("b") == []


def test_other_texts_are_checked_too(store, admin):
    for field, body in (("guidelines", {"name": "g", "questions": ["binary"], "guidelines": LONE}),
                        ("categories", {"name": "c", "questions": ["spans"], "categories": [LONE]})):
        r = admin.c.post("/api/projects", content=json.dumps(body),
                         headers={"Content-Type": "application/json", "X-CSRF-Token": admin.csrf})
        assert r.status_code == 422 and field in r.json()["detail"], r.text
        with pytest.raises(Exception, match="lone surrogate"):  # the store's own check
            store.create_project(body["name"], body["questions"],
                                 **{k: v for k, v in body.items() if k == field})
    r = TestClient(create_app(store)).post("/api/login", content=json.dumps(
        {"username": "alice", "password": LONE}), headers={"Content-Type": "application/json"})
    assert r.status_code in (401, 422), r.text


# Integers are bounded ----------------------------------------------------------------------------


@pytest.mark.parametrize("item_id", [2**31, 2**63, 10**30, -1])
def test_huge_item_ids_in_the_path(admin, alice, item_id):
    create(admin, "p", ["binary"], [ONE])
    for method, path, body in (
            ("POST", f"/api/projects/p/items/{item_id}/labels",
             {"answers": {"binary": {"value": "up"}}, "submission_key": "k" * 16}),
            ("POST", f"/api/projects/p/items/{item_id}/release", {})):
        r = alice.c.request(method, path, json=body, headers={"X-CSRF-Token": alice.csrf})
        assert r.status_code in (404, 422) and "item_id" in r.text, (item_id, r.status_code, r.text)


@pytest.mark.parametrize("field,value", [("lock_seconds", 1e20), ("gold_every", 1e20),
                                         ("lock_seconds", 10**12), ("overlap", 10**12),
                                         ("gold_every", 2**40)])
def test_project_settings_have_upper_bounds(store, admin, alice, field, value):
    r = admin.post_json("/api/projects", {"name": "big", "questions": ["binary"], field: value,
                                          "items": [ONE]})
    assert r.status_code == 422 and field in r.json()["detail"], r.text
    with pytest.raises(Exception, match=field):
        store.create_project("big2", ["binary"], **{field: int(value)})


def test_time_ms_is_bounded(admin, alice):
    create(admin, "t", ["binary"], [ONE])
    task = alice.get("/api/projects/t/next").json()
    r = alice.post_json(f"/api/projects/t/items/{task['item_id']}/labels",
                        {"answers": {"binary": {"value": "up"}}, "submission_key": "k" * 16, "time_ms": 10**30})
    assert r.status_code == 422 and "time_ms" in r.text


# Items are validated by their question type ------------------------------------------------------


@pytest.mark.parametrize("questions,item,message", [
    (["binary"], {"prompt": "p", "responses": [""]}, "responses[0] is empty"),
    (["likert"], {"prompt": "p", "responses": ["   "]}, "responses[0] is empty"),
    (["pairwise"], {"prompt": "p", "responses": ["same", "same"]}, "same text"),
    (["rank"], {"prompt": "p", "responses": ["a", "b", "a"]}, "same text"),
    (["likert"], {"prompt": "p", "responses": ["r"], "gold": {"likert": {"score": "high"}}}, "likert"),
    (["likert"], {"prompt": "p", "responses": ["r"], "gold": {"likert": {"score": 9}}}, "1..7"),
    (["binary"], {"prompt": "p", "responses": ["r"], "gold": {"binary": {"value": True}}}, "'up' or 'down'"),
    (["pairwise"], {"prompt": "p", "responses": ["a", "b"], "gold": {"pairwise": {"choice": 2}}}, "choice"),
    (["rank"], {"prompt": "p", "responses": ["a", "b"], "gold": {"rank": {"ranks": [0, 5]}}}, "0..1"),
    (["binary"], {"prompt": "p", "responses": ["r"], "gold": {"binary": "up"}}, "JSON object"),
    (["binary"], {"prompt": [{"role": "", "content": "hi"}], "responses": ["r"]}, "role"),
])
def test_items_that_would_break_export_or_stats_are_refused(store, admin, questions, item, message):
    r = admin.post_json("/api/projects", {"name": "v", "questions": questions, "items": [item]})
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    with pytest.raises(Exception, match="no project named"):
        store.project("v")  # the project and its items are one request: nothing half-made


def test_a_valid_honeypot_still_grades(admin, alice):
    gold = {"prompt": "p", "responses": ["r"], "gold": {"likert": {"score": 5}}}
    create(admin, "h", ["likert"], [ONE, gold], gold_every=1)
    while (r := alice.get("/api/projects/h/next")).status_code == 200:
        t = r.json()
        alice.post_json(f"/api/projects/h/items/{t['item_id']}/labels",
                        {"answers": {"likert": {"score": 4}}, "submission_key": t["submission_key"]})
    stats = admin.get("/api/projects/h/stats")
    assert stats.status_code == 200 and stats.json()["annotators"][0]["gold_accuracy"] == 1.0
    assert admin.get("/admin/p/h").status_code == 200
    assert admin.get("/api/projects/h/export?include_gold=true").status_code == 200
