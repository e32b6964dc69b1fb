"""Workspaces: projects belong to one, annotators are members, everything is scoped by it.

An annotator outside a project's workspace gets 404 everywhere (the project's name is not
given away) and never sees it listed; admins manage members through the API and the admin
page. A database made before workspaces is migrated in place: its projects land in
``default``, its accounts become members, and no label row is rewritten.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    select,
)

from conftest import PASSWORD, Browserish, csrf_of
from rlhfkit.feedback.server import create_app
from rlhfkit.feedback.store import Store, normalize_url

ONE = {"prompt": "Say hello.", "responses": ["Hello."]}


@pytest.fixture
def teams(store, app, admin):
    """Workspace 'red' with project 'secret' (alice is a member, bob is not)."""
    assert admin.post_json("/api/workspaces", {"name": "red"}).status_code == 201
    r = admin.post_json("/api/workspaces/red/members", {"user": "alice"})
    assert r.status_code == 201
    assert admin.post_json("/api/workspaces/red/members", {"user": "alice"}).status_code == 200
    r = admin.post_json("/api/projects", {"name": "secret", "questions": ["binary"],
                                          "workspace": "red", "items": [ONE, ONE]})
    assert r.status_code == 201 and r.json()["workspace"] == "red"
    r = admin.post_json("/api/projects", {"name": "open", "questions": ["binary"], "items": [ONE]})
    assert r.json()["workspace"] == "default"
    return "secret"


def test_outsider_gets_404_everywhere(teams, app, store, alice, bob):
    task = alice.get("/api/projects/secret/next").json()
    key = task["submission_key"]
    body = {"answers": {"binary": {"value": "up"}}, "submission_key": "bob-key-123"}
    for method, path, payload in [
            ("GET", "/api/projects/secret/next", None),
            ("POST", f"/api/projects/secret/items/{task['item_id']}/labels", body),
            ("POST", f"/api/projects/secret/items/{task['item_id']}/release", {}),
            ("GET", "/api/projects/secret/labels", None),
            ("GET", "/p/secret", None)]:
        r = bob.c.request(method, path, json=payload, headers={"X-CSRF-Token": bob.csrf})
        assert r.status_code == 404 and "no project named" in r.text and "secret" in r.text, (path, r.text)
    # the same answer as for a project that does not exist at all
    assert bob.get("/api/projects/nothing/next").json() == {"detail": "no project named 'nothing'"}
    assert [p["name"] for p in bob.get("/api/projects").json()] == ["open"]
    assert "secret" not in bob.get("/").text
    assert [w["name"] for w in bob.get("/api/workspaces").json()] == ["default"]
    # admin-only endpoints stay 403 for annotators, member or not
    for path in ("/api/projects/secret/stats", "/api/projects/secret/export"):
        assert bob.get(path).status_code == 403 and alice.get(path).status_code == 403
    # the member labels as usual
    r = alice.post_json(f"/api/projects/secret/items/{task['item_id']}/labels",
                        {"answers": {"binary": {"value": "up"}}, "submission_key": key})
    assert r.status_code == 201
    assert [p["name"] for p in alice.get("/api/projects").json()] == ["secret", "open"]
    assert store.labels("secret")[0]["annotator"] == "alice"


def test_removing_a_member_keeps_their_labels_and_stops_their_work(teams, store, admin, alice):
    t = alice.get("/api/projects/secret/next").json()
    alice.post_json(f"/api/projects/secret/items/{t['item_id']}/labels",
                    {"answers": {"binary": {"value": "up"}}, "submission_key": t["submission_key"]})
    held = alice.get("/api/projects/secret/next").json()  # holds the second item
    r = admin.c.delete("/api/workspaces/red/members/alice", headers={"X-CSRF-Token": admin.csrf})
    assert r.status_code == 200 and r.json()["removed"] is True
    assert admin.c.delete("/api/workspaces/red/members/alice",
                          headers={"X-CSRF-Token": admin.csrf}).status_code == 404
    r = alice.post_json(f"/api/projects/secret/items/{held['item_id']}/labels",
                        {"answers": {"binary": {"value": "up"}}, "submission_key": held["submission_key"]})
    assert r.status_code == 404
    assert len(store.labels("secret")) == 1  # the label given as a member stays
    recs = admin.get("/api/projects/secret/export").text.splitlines()
    assert len(recs) == 1 and json.loads(recs[0])["annotator"] == "alice"


def test_accounts_join_workspaces_when_made(teams, app, store, admin):
    r = admin.post_json("/api/users", {"name": "carol", "password": PASSWORD, "workspaces": ["red"]})
    assert r.status_code == 201
    carol = Browserish(app, "carol")
    assert [p["name"] for p in carol.get("/api/projects").json()] == ["secret"]  # not default
    r = admin.post_json("/api/users", {"name": "dave", "password": PASSWORD, "workspaces": ["blue"]})
    assert r.status_code == 404 and "no workspace named 'blue'" in r.text
    assert store.user_by_name("dave") is None
    r = admin.post_json("/api/invites", {"name": "erin", "workspaces": ["red"]})
    from fastapi.testclient import TestClient

    c = TestClient(app)
    path = "/invite/" + r.json()["url"].rsplit("/invite/", 1)[1]
    c.post(path, data={"password": "erins-password", "csrf_token": csrf_of(c.get(path).text)})
    assert [p["name"] for p in c.get("/api/projects").json()] == ["secret"]
    spaces = {w["name"]: w for w in admin.get("/api/workspaces").json()}
    assert spaces["red"]["members"] == ["alice", "carol", "erin"]
    assert spaces["red"]["projects"] == ["secret"]


def test_admin_page_manages_workspaces(teams, store, admin, bob):
    page = admin.get("/admin").text
    assert 'id="workspace-table"' in page and "red" in page
    r = admin.c.post("/admin/workspaces", data={"name": "blue", "csrf_token": admin.csrf},
                     follow_redirects=False)
    assert r.status_code == 303
    r = admin.c.post("/admin/workspaces/red/members", data={"member": "bob", "csrf_token": admin.csrf},
                     follow_redirects=False)
    assert r.status_code == 303
    assert bob.get("/api/projects/secret/next").status_code == 200  # bob is in now
    r = admin.c.post("/admin/workspaces/red/members",
                     data={"member": "bob", "action": "remove", "csrf_token": admin.csrf},
                     follow_redirects=False)
    assert r.status_code == 303 and bob.get("/api/projects/secret/next").status_code == 404
    assert admin.c.post("/admin/workspaces", data={"name": "green"}).status_code == 403  # CSRF
    assert bob.c.post("/admin/workspaces", data={"name": "green", "csrf_token": bob.csrf}).status_code == 403
    assert {w["name"] for w in store.workspaces()} == {"default", "red", "blue"}


def old_schema(url: str) -> None:
    """The tables as rlhfkit 0.1 made them (before workspaces and server-side sessions)."""
    md = MetaData()
    Table("settings", md, Column("key", String(64), primary_key=True), Column("value", Text))
    Table("users", md, Column("id", Integer, primary_key=True), Column("name", String(64), unique=True),
          Column("role", String(16)), Column("source", String(16)), Column("password_hash", String(200)),
          Column("generation", Integer), Column("active", Boolean), Column("created_at", Float))
    Table("invites", md, Column("id", Integer, primary_key=True), Column("token_hash", String(64)),
          Column("name", String(64)), Column("role", String(16)), Column("expires_at", Float),
          Column("used_at", Float))
    Table("projects", md, Column("id", Integer, primary_key=True), Column("name", String(64), unique=True),
          Column("questions", JSON), Column("guidelines", Text), Column("overlap", Integer),
          Column("lock_seconds", Integer), Column("gold_every", Integer), Column("categories", JSON),
          Column("arena", Boolean), Column("created_at", Float))
    Table("items", md, Column("id", Integer, primary_key=True),
          Column("project_id", ForeignKey("projects.id")), Column("position", Integer),
          Column("external_id", String(200)), Column("prompt", JSON), Column("responses", JSON),
          Column("gold", JSON), Column("is_gold", Boolean), Column("meta", JSON), Column("n_done", Integer))
    Table("assignments", md, Column("id", Integer, primary_key=True),
          Column("project_id", ForeignKey("projects.id")), Column("item_id", ForeignKey("items.id")),
          Column("user_id", ForeignKey("users.id")), Column("status", String(16)), Column("order", JSON),
          Column("submission_key", String(64)), Column("started_at", Float), Column("expires_at", Float))
    Table("labels", md, Column("id", Integer, primary_key=True),
          Column("project_id", ForeignKey("projects.id")), Column("item_id", ForeignKey("items.id")),
          Column("user_id", ForeignKey("users.id")), Column("submission_key", String(64)),
          Column("answers", JSON), Column("order", JSON), Column("time_ms", Integer),
          Column("server_ms", Integer), Column("created_at", Float))
    engine = create_engine(normalize_url(url))
    md.create_all(engine)
    from rlhfkit.feedback.security import hash_password

    with engine.begin() as conn:
        t = md.tables
        for name, role in [("admin", "admin"), ("alice", "annotator"), ("bob", "annotator")]:  # ids 1, 2, 3
            conn.execute(insert(t["users"]).values(name=name, role=role, source="human",
                                                   password_hash=hash_password(PASSWORD),
                                                   generation=0, active=True, created_at=1.0))
        conn.execute(insert(t["projects"]).values(
            name="legacy", questions=["binary"], guidelines="", overlap=2, lock_seconds=600,
            gold_every=0, categories=["irrelevant"], arena=False, created_at=1.0))
        for i in (1, 2):
            conn.execute(insert(t["items"]).values(
                project_id=1, position=i - 1, external_id=None, prompt=f"p{i}",
                responses=[{"text": f"r{i}", "model": None}], gold=None, is_gold=False, meta={},
                n_done=1 if i == 1 else 0))
        conn.execute(insert(t["assignments"]).values(
            project_id=1, item_id=1, user_id=2, status="done", order=[0],
            submission_key="s" * 16, started_at=2.0, expires_at=602.0))
        conn.execute(insert(t["labels"]).values(
            project_id=1, item_id=1, user_id=2, submission_key="alice-key-1",
            answers={"binary": {"value": "up"}}, order=[0], time_ms=1200, server_ms=900, created_at=3.0))
    engine.dispose()


def test_a_database_from_before_workspaces_is_migrated(store_url):
    old_schema(store_url)
    engine = create_engine(normalize_url(store_url))
    with engine.connect() as conn:
        before = [tuple(r) for r in conn.execute(select(Table("labels", MetaData(), autoload_with=conn)))]
    engine.dispose()
    store = Store(store_url)  # migrates
    try:
        assert [w["name"] for w in store.workspaces()] == ["default"]
        (ws,) = store.workspaces()
        assert ws["projects"] == ["legacy"] and ws["members"] == ["admin", "alice", "bob"]
        with store.tx() as s:
            after = [tuple(r) for r in s.execute(select(Table("labels", MetaData(), autoload_with=s.connection())))]
        assert after == before  # the label row, byte for byte
        app = create_app(store)
        bob = Browserish(app, "bob")
        task = bob.get("/api/projects/legacy/next").json()
        r = bob.post_json(f"/api/projects/legacy/items/{task['item_id']}/labels",
                          {"answers": {"binary": {"value": "down"}}, "submission_key": task["submission_key"]})
        assert r.status_code == 201
        admin = Browserish(app, "admin")
        recs = [json.loads(x) for x in admin.get("/api/projects/legacy/export").text.splitlines()]
        assert [(r["annotator"], r["label"]) for r in recs] == [("alice", True), ("bob", False)]
        # new accounts made after the migration join default, as before workspaces
        store.create_user("carol", PASSWORD)
        assert Browserish(app, "carol").get("/api/projects").json()[0]["name"] == "legacy"
    finally:
        store.close()
    Store(store_url).close()  # opening it again changes nothing
    again = Store(store_url)
    assert [w["name"] for w in again.workspaces()] == ["default"]
    assert again.workspaces()[0]["members"] == ["admin", "alice", "bob", "carol"]
    again.close()


def test_cli_workspaces(tmp_path, capsys):
    from rlhfkit.cli import main

    db = f"sqlite:///{tmp_path / 'cli.db'}"
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"prompt": "p", "responses": ["r"]}) + "\n")
    assert main(["label", "workspace", "--db", db, "red"]) == 0
    assert main(["label", "add-user", "--db", db, "--name", "ann", "--password", PASSWORD,
                 "--workspace", "red"]) == 0
    assert main(["label", "add-user", "--db", db, "--name", "ben", "--password", PASSWORD]) == 0
    assert main(["label", "create-project", "--db", db, "--name", "p", "--questions", "binary",
                 "--file", str(items), "--workspace", "red"]) == 0
    assert main(["label", "workspace", "--db", db, "red", "--add", "ben", "--remove", "ann"]) == 0
    out = capsys.readouterr().out
    assert "ben added to red" in out and "ann removed from red" in out
    assert main(["label", "workspace", "--db", db, "--list"]) == 0
    spaces = {w["name"]: w for w in json.loads(capsys.readouterr().out)}
    assert spaces["red"] == {"name": "red", "members": ["ben"], "projects": ["p"]}
    assert spaces["default"]["members"] == ["ben"]
    assert main(["label", "workspace", "--db", db, "red", "--add", "nobody"]) == 1
    assert "no user named 'nobody'" in capsys.readouterr().err
    assert main(["label", "create-project", "--db", db, "--name", "q", "--questions", "binary",
                 "--workspace", "blue"]) == 1
    assert "no workspace named 'blue'" in capsys.readouterr().err
