"""The nine findings of the outside probe (issue 14), one test (or a few) each.

Each test reproduces what the probe did and asserts the fixed behaviour; before the fixes
every one of them failed (a 500, a stored bad value, a session that outlived its logout...).
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from fastapi.testclient import TestClient

from conftest import PASSWORD
from rlhfkit.feedback import security
from rlhfkit.feedback.server import create_app

ONE = {"prompt": "Say hello.", "responses": ["Hello there."]}
PAIR = {"prompt": "Name a colour.", "responses": ["Red.", "Blue."]}


def create(admin, name, questions, items, **opts):
    r = admin.post_json("/api/projects", {"name": name, "questions": questions, "items": items, **opts})
    assert r.status_code == 201, r.text
    return r.json()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# 1. Logout ends the session ------------------------------------------------------------------


def test_1_api_logout_revokes_the_token_as_header_and_cookie(app, store):
    c = TestClient(app)
    token = c.post("/api/login", json={"username": "alice", "password": PASSWORD}).json()["token"]
    assert TestClient(app).get("/api/me", headers=bearer(token)).status_code == 200
    assert TestClient(app).post("/api/logout", json={}, headers=bearer(token)).status_code == 200
    assert TestClient(app).get("/api/me", headers=bearer(token)).status_code == 401
    stolen = TestClient(app)
    stolen.cookies.set("rk_session", token)
    assert stolen.get("/api/me").status_code == 401
    assert stolen.get("/api/projects").status_code == 401


def test_1_page_logout_revokes_the_cookie_value(app, store, admin):
    token = admin.c.cookies.get("rk_session")
    r = admin.c.post("/logout", data={"csrf_token": admin.csrf}, follow_redirects=False)
    assert r.status_code == 303
    replay = TestClient(app)  # the cookie value someone copied before the logout
    replay.cookies.set("rk_session", token)
    assert replay.get("/api/me").status_code == 401
    r = replay.post("/api/projects", json={"name": "x", "questions": ["binary"]}, headers=bearer(token))
    assert r.status_code == 401 and store.list_projects() == []


def test_1_password_change_and_other_sessions(app, store):
    tokens = [TestClient(app).post("/api/login", json={"username": "bob", "password": PASSWORD}).json()["token"]
              for _ in range(2)]
    TestClient(app).post("/api/logout", json={}, headers=bearer(tokens[0]))
    assert TestClient(app).get("/api/me", headers=bearer(tokens[1])).status_code == 200  # only that one
    store.set_password(store.user_by_name("bob").id, "another-password-1")
    assert TestClient(app).get("/api/me", headers=bearer(tokens[1])).status_code == 401


# 2. Span offsets are code points (the browser side: test_browser.py) -------------------------


def test_2_span_offsets_are_code_points_end_to_end(admin, alice):
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


# 3. One bad string cannot break a project ----------------------------------------------------

LONE = "x\ud800y"


def test_3_lone_surrogate_answer_is_refused_and_nothing_breaks(store, admin, alice):
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
def test_3_items_with_bad_text_are_refused(store, admin, item):
    create(admin, "b", ["binary"], [])
    r = admin.c.post("/api/projects/b/items", content=json.dumps({"items": [item]}),
                     headers={"Content-Type": "application/json", "X-CSRF-Token": admin.csrf})
    assert r.status_code == 422 and "item 0" in r.json()["detail"], r.text
    assert store.items("b") == []


def test_3_other_texts_are_checked_too(store, admin):
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


# 4. Integers are bounded ---------------------------------------------------------------------


@pytest.mark.parametrize("item_id", [2**31, 2**63, 10**30, -1])
def test_4_huge_item_ids_in_the_path(admin, alice, item_id):
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
def test_4_project_settings_have_upper_bounds(store, admin, alice, field, value):
    r = admin.post_json("/api/projects", {"name": "big", "questions": ["binary"], field: value,
                                          "items": [ONE]})
    assert r.status_code == 422 and field in r.json()["detail"], r.text
    with pytest.raises(Exception, match=field):
        store.create_project("big2", ["binary"], **{field: int(value)})


def test_4_time_ms_is_bounded(admin, alice):
    create(admin, "t", ["binary"], [ONE])
    task = alice.get("/api/projects/t/next").json()
    r = alice.post_json(f"/api/projects/t/items/{task['item_id']}/labels",
                        {"answers": {"binary": {"value": "up"}}, "submission_key": "k" * 16, "time_ms": 10**30})
    assert r.status_code == 422 and "time_ms" in r.text


# 5. Provenance keys cannot be overwritten by an item's meta ----------------------------------


def test_5_relabelling_an_export_keeps_the_new_provenance(sqlite_store, tmp_path):
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


# 6. Items are validated by their question type -----------------------------------------------


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
def test_6_items_that_would_break_export_or_stats_are_refused(store, admin, questions, item, message):
    r = admin.post_json("/api/projects", {"name": "v", "questions": questions, "items": [item]})
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    with pytest.raises(Exception, match="no project named"):
        store.project("v")  # the project and its items are one request: nothing half-made


def test_6_a_valid_honeypot_still_grades(admin, alice):
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


# 7. Uploads that are not what they claim get a 4xx naming the problem ------------------------


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
def test_7_bad_uploads_are_4xx_naming_the_problem(store, admin, filename, data, message):
    page = admin.get("/admin").text
    from conftest import csrf_of

    r = admin.c.post("/admin/projects", data={"name": "up", "questions": ["binary"],
                                              "csrf_token": csrf_of(page)},
                     files={"file": (filename, io.BytesIO(data))}, follow_redirects=False)
    assert 400 <= r.status_code < 500 and message in r.text, (r.status_code, r.text[-500:])
    with pytest.raises(Exception, match="no project named"):
        store.project("up")


# 8. Login throttling and constant work -------------------------------------------------------


def test_8_wrong_passwords_are_throttled_per_account(app, store):
    clock = [1000.0]
    app = create_app(store, clock=lambda: clock[0])
    c = TestClient(app)
    codes = [c.post("/api/login", json={"username": "alice", "password": f"wrong-{i}-pw"}).status_code
             for i in range(60)]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
    r = c.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "try again in" in r.json()["detail"]
    # the throttle is per account: bob is not locked out
    assert c.post("/api/login", json={"username": "bob", "password": PASSWORD}).status_code == 200
    clock[0] += int(r.headers["retry-after"])  # after the wait, the right password works
    assert c.post("/api/login", json={"username": "alice", "password": PASSWORD}).status_code == 200
    # and the page form answers 429 too
    from conftest import csrf_of

    for _ in range(6):
        page = c.get("/login").text
        r = c.post("/login", data={"username": "bob", "password": "nope-nope", "csrf_token": csrf_of(page)})
    assert r.status_code == 429 and "Too many failed logins" in r.text


def test_8_wrong_passwords_are_throttled_per_address(app, store):
    clock = [1000.0]
    app = create_app(store, clock=lambda: clock[0])
    c = TestClient(app)
    codes = [c.post("/api/login", json={"username": f"nobody{i}", "password": "wrong-password"}).status_code
             for i in range(40)]
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}


def test_8_unknown_and_passwordless_accounts_cost_one_full_hash(app, store, monkeypatch):
    store.create_user("nopw")  # an invited account that has not set a password
    inactive = store.create_user("gone", "password-123")
    from sqlalchemy import update

    from rlhfkit.feedback.store import User
    with store.tx(write=True) as s:
        s.execute(update(User).where(User.id == inactive.id).values(active=False))
    store._users.clear()
    calls = []
    real = hashlib.scrypt

    def counting(*a, **kw):
        calls.append(kw["n"])
        return real(*a, **kw)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    for name in ("alice", "nobody", "nopw", "gone"):
        calls.clear()
        assert store.authenticate(name, "wrong-password") is None
        assert calls == [security.SCRYPT_N], (name, calls)


# 9. Secret outside the database, proxy headers, membership (see test_workspaces.py) -----------


def test_9_secret_from_a_file_is_not_in_the_database(store, tmp_path, monkeypatch):
    store.create_user("alice", PASSWORD)
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 48 + "\n")
    app = create_app(store, secret_file=secret_file)
    c = TestClient(app)
    token = c.post("/api/login", json={"username": "alice", "password": PASSWORD}).json()["token"]
    assert c.get("/api/me", headers=bearer(token)).status_code == 200
    from sqlalchemy import select

    from rlhfkit.feedback.store import SessionRow, Setting
    with store.tx() as s:
        assert s.get(Setting, "secret") is None  # nothing in the DB signs sessions
        hashes = list(s.scalars(select(SessionRow.token_hash)))
    assert hashes and all(h != token and h not in token for h in hashes)
    # a session row copied from the database is no use without the key
    with pytest.raises(ValueError, match="at least 32"):
        create_app(store, secret="short")
    monkeypatch.setenv("RLHFKIT_SECRET", "e" * 40)
    other = TestClient(create_app(store))  # another key: the token's signature fails
    assert other.get("/api/me", headers=bearer(token)).status_code == 401


def test_9_forwarded_proto_is_trusted_only_with_trust_proxy(app, store):
    def cookie_flags(app, headers):
        r = TestClient(app).post("/api/login", json={"username": "alice", "password": PASSWORD},
                                 headers=headers)
        return r.headers["set-cookie"].lower()

    spoof = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    assert "secure" not in cookie_flags(create_app(store), spoof)
    assert "secure" in cookie_flags(create_app(store, trust_proxy=True), spoof)
    # the throttle's address is the client's, not what a header claims
    clock = [0.0]
    app = create_app(store, clock=lambda: clock[0])
    c = TestClient(app)
    for i in range(25):
        c.post("/api/login", json={"username": f"x{i}", "password": "wrong-password"},
               headers={"X-Forwarded-For": f"198.51.100.{i}"})
    assert c.post("/api/login", json={"username": "alice", "password": PASSWORD}).status_code == 429
