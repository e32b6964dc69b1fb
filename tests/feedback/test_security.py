"""Security of the feedback app: sessions, roles, CSRF, escaping, payload limits, SQL; logout and
password changes end sessions, login throttling, the signing secret outside the database."""

from __future__ import annotations

import hashlib
import json

import pytest
from fastapi.testclient import TestClient

from conftest import PASSWORD, Browserish
from rlhfkit.feedback import security
from rlhfkit.feedback.server import create_app

ONE = {"prompt": "Say hello.", "responses": ["Hello."]}

# Every API endpoint with a request that would succeed for the right user.
API = [
    ("GET", "/api/me", None),
    ("GET", "/api/projects", None),
    ("GET", "/api/projects/p/next", None),
    ("POST", "/api/projects/p/items/1/labels", {"answers": {"binary": {"value": "up"}}, "submission_key": "k" * 16}),
    ("POST", "/api/projects/p/items/1/release", {}),
    ("GET", "/api/projects/p/labels", None),
    ("GET", "/api/projects/p/stats", None),
    ("GET", "/api/projects/p/arena", None),
    ("GET", "/api/projects/p/export", None),
    ("POST", "/api/projects", {"name": "x", "questions": ["binary"]}),
    ("POST", "/api/projects/p/items", {"items": [ONE]}),
    ("POST", "/api/users", {"name": "mallory", "password": "password123"}),
    ("POST", "/api/invites", {"name": "mallory"}),
    ("POST", "/api/logout", {}),
]
ADMIN_ONLY = {("GET", "/api/projects/p/stats"), ("GET", "/api/projects/p/arena"),
              ("GET", "/api/projects/p/export"), ("POST", "/api/projects"),
              ("POST", "/api/projects/p/items"), ("POST", "/api/users"), ("POST", "/api/invites")}
PAGES = ["/", "/p/p", "/admin", "/admin/p/p"]


@pytest.fixture
def project(store, app):
    store.create_project("p", ["binary"])
    store.add_items("p", [ONE])
    return "p"


def forged_tokens(store):
    """Session tokens that must not work: made up, signed with another key, expired, logged out."""
    import secrets

    alice = store.user_by_name("alice")
    key = store.secret()  # the app fixture signs with the database's fallback key
    real = store.start_session(alice, 3600)
    logged_out = store.start_session(alice, 3600)
    store.end_session(logged_out)
    expired = store.start_session(alice, -10)
    good = security.sign_session(key, real)
    return {
        "garbage": "not-a-token",
        "wrong key": security.sign_session("another-secret", real),
        "unsigned": real,
        "edited signature": good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),
        "unknown token": security.sign_session(key, secrets.token_urlsafe(32)),
        "expired": security.sign_session(key, expired),
        "logged out": security.sign_session(key, logged_out),
    }


@pytest.mark.parametrize("method,path,body", API)
def test_every_endpoint_rejects_missing_and_forged_sessions(app, store, project, method, path, body):
    tokens = [None, *forged_tokens(store).values()]
    for token in tokens:
        c = TestClient(app)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = c.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (token, r.status_code, r.text)
        # a forged cookie is no better than a forged header
        if token:
            c.cookies.set("rk_session", token)
            assert c.request(method, path, json=body).status_code == 401


@pytest.mark.parametrize("path", PAGES)
def test_pages_send_strangers_to_login(app, project, path):
    r = TestClient(app).get(path, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_annotator_cannot_use_admin_endpoints_or_pages(app, project, alice):
    for method, path, body in API:
        if (method, path) in ADMIN_ONLY:
            r = alice.c.request(method, path, json=body, headers={"X-CSRF-Token": alice.csrf})
            assert r.status_code == 403, (path, r.text)
    for path in ("/admin", "/admin/p/p"):
        assert alice.get(path).status_code == 403
    r = alice.c.post("/admin/users", data={"name": "eve", "password": "password123",
                                           "csrf_token": alice.csrf, "role": "admin"})
    assert r.status_code == 403


def test_annotator_cannot_submit_or_release_items_handed_to_someone_else(app, store, project, alice, bob):
    task = alice.get("/api/projects/p/next").json()
    r = bob.post_json(f"/api/projects/p/items/{task['item_id']}/labels",
                      {"answers": {"binary": {"value": "down"}}, "submission_key": task["submission_key"]})
    assert r.status_code == 403
    r = bob.post_json(f"/api/projects/p/items/{task['item_id']}/release", {})
    assert r.status_code == 404
    # an item of another project cannot be labelled through this one
    store.create_project("q", ["binary"])
    store.add_items("q", [ONE])
    t2 = bob.get("/api/projects/q/next").json()
    r = bob.post_json(f"/api/projects/p/items/{t2['item_id']}/labels",
                      {"answers": {"binary": {"value": "up"}}, "submission_key": "x" * 16})
    assert r.status_code == 403
    assert store.labels("p") == [] and store.labels("q") == []


def test_csrf_is_required_for_cookie_sessions(app, project, alice):
    task = alice.get("/api/projects/p/next").json()
    url = f"/api/projects/p/items/{task['item_id']}/labels"
    body = {"answers": {"binary": {"value": "up"}}, "submission_key": task["submission_key"]}
    assert alice.c.post(url, json=body).status_code == 403  # no token
    assert alice.c.post(url, json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
    # a token from another browser does not fit this browser's cookie
    other = Browserish(app, "bob")
    assert alice.c.post(url, json=body, headers={"X-CSRF-Token": other.csrf}).status_code == 403
    # a cross-site form post (text/plain or form-encoded) is refused before anything else
    r = alice.c.post(url, content=json.dumps(body), headers={"Content-Type": "text/plain",
                                                             "X-CSRF-Token": alice.csrf})
    assert r.status_code == 415
    assert alice.post_json(url, body).status_code == 201


def test_csrf_on_html_forms(app, store, admin):
    r = admin.c.post("/admin/users", data={"name": "eve", "password": "password123"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = admin.c.post("/admin/users", data={"name": "eve", "password": "password123", "csrf_token": "x"})
    assert r.status_code == 403
    assert store.user_by_name("eve") is None
    r = admin.c.post("/admin/users", data={"name": "eve", "password": "password123",
                                           "csrf_token": admin.csrf}, follow_redirects=False)
    assert r.status_code == 303 and store.user_by_name("eve") is not None
    # the login form is protected too (login CSRF)
    c = TestClient(app)
    c.get("/login")
    r = c.post("/login", data={"username": "alice", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 403


SCRIPT = '<script>alert("xss")</script><img src=x onerror=alert(1)>'


def test_script_in_prompt_and_response_is_inert(app, store, alice):
    store.create_project("x", ["pairwise", "rank"])
    store.add_items("x", [{"prompt": SCRIPT, "responses": [SCRIPT + " A", SCRIPT + " B"]}])
    page = alice.get("/p/x")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(&#34;xss&#34;)&lt;/script&gt;" in page.text
    # the JSON the page script reads is escaped for HTML too
    assert "\\u003cscript\\u003e" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"


def test_script_in_user_and_guidelines_is_inert(app, store, admin):
    store.create_project("g", ["binary"], guidelines=SCRIPT)
    store.add_items("g", [ONE])
    assert "<script>alert" not in admin.get("/p/g").text
    assert "<script>alert" not in admin.get("/admin/p/g").text


def test_oversized_payloads_get_413_with_a_message(app, project, alice, admin):
    task = alice.get("/api/projects/p/next").json()
    url = f"/api/projects/p/items/{task['item_id']}/labels"
    huge = {"answers": {"binary": {"value": "up", "pad": "x" * 2_000_000}},
            "submission_key": task["submission_key"]}
    r = alice.post_json(url, huge)
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted while reading
        for _ in range(30):
            yield b"x" * 100_000

    r = alice.c.post(url, content=chunks(), headers={"Content-Type": "application/json",
                                                     "X-CSRF-Token": alice.csrf})
    assert r.status_code == 413
    # a long text answer within the body limit is refused by the field limit instead
    from rlhfkit.feedback.questions import MAX_TEXT

    admin.post_json("/api/projects", {"name": "w", "questions": ["demonstration"], "items": [{"prompt": "hi"}]})
    t = alice.get("/api/projects/w/next").json()
    r = alice.post_json(f"/api/projects/w/items/{t['item_id']}/labels",
                        {"answers": {"demonstration": {"text": "y" * (MAX_TEXT + 1)}},
                         "submission_key": t["submission_key"]})
    assert r.status_code == 422 and "at most" in r.json()["detail"]


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'{"answers": 5}', b'{"answers": {}, "submission_key": 7}',
                                 b'{"answers": {"binary": {"value": "up"}}, "submission_key": "short"}', b""])
def test_malformed_payloads_get_422(app, project, alice, raw):
    task = alice.get("/api/projects/p/next").json()
    r = alice.c.post(f"/api/projects/p/items/{task['item_id']}/labels", content=raw,
                     headers={"Content-Type": "application/json", "X-CSRF-Token": alice.csrf})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("invalid request")


def test_wrong_types_in_path_and_unknown_project(app, project, alice):
    assert alice.get("/api/projects/nope/next").status_code == 404
    r = alice.post_json("/api/projects/p/items/abc/labels", {"answers": {}, "submission_key": "k" * 10})
    assert r.status_code == 422


INJECTION = "Robert'); DROP TABLE labels;-- \" OR 1=1 --"


def test_sql_injection_strings_are_stored_verbatim(app, store, admin, alice):
    r = admin.post_json("/api/projects", {"name": "inj", "questions": ["demonstration"],
                                          "items": [{"prompt": INJECTION}]})
    assert r.status_code == 201
    t = alice.get("/api/projects/inj/next").json()
    assert t["prompt"] == INJECTION
    r = alice.post_json(f"/api/projects/inj/items/{t['item_id']}/labels",
                        {"answers": {"demonstration": {"text": INJECTION}}, "submission_key": t["submission_key"]})
    assert r.status_code == 201
    rec = json.loads(admin.get("/api/projects/inj/export").text)
    assert rec["prompt"] == INJECTION and rec["response"] == INJECTION
    assert len(store.labels("inj")) == 1  # the labels table is still there
    # user names and project names are checked, not interpolated
    assert admin.post_json("/api/users", {"name": INJECTION, "password": "password123"}).status_code == 422
    assert alice.get("/api/projects/x' OR '1'='1/next").status_code == 404


def test_password_hash_is_slow_salted_scrypt(store):
    from rlhfkit.feedback.security import hash_password, verify_password

    h1, h2 = hash_password("same-password"), hash_password("same-password")
    assert h1 != h2 and h1.startswith("scrypt$")
    assert verify_password("same-password", h1) and not verify_password("other-password", h1)
    assert "same-password" not in h1
    # production cost: N = 2**14 (tests lower it); check the default module constant
    import importlib
    import os

    saved = os.environ.pop("RLHFKIT_SCRYPT_N", None)
    try:
        fresh = importlib.reload(security)
        assert fresh.SCRYPT_N == 2**14
    finally:
        if saved is not None:
            os.environ["RLHFKIT_SCRYPT_N"] = saved
        importlib.reload(security).SCRYPT_N = 2**10


def test_logout_clears_the_cookie(app, alice):
    r = alice.c.post("/logout", data={"csrf_token": alice.csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert alice.get("/api/me").status_code == 401


def test_password_change_revokes_old_sessions(app, store):
    c = TestClient(app)
    token = c.post("/api/login", json={"username": "alice", "password": PASSWORD}).json()["token"]
    store.set_password(store.user_by_name("alice").id, "a-new-password")
    assert TestClient(app).get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_secure_cookie_flags(store, project):
    app = create_app(store, secure_cookies=True)
    r = TestClient(app).post("/api/login", json={"username": "alice", "password": PASSWORD})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=lax" in cookie


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# Logout ends the session -------------------------------------------------------------------------


def test_api_logout_revokes_the_token_as_header_and_cookie(app, store):
    c = TestClient(app)
    token = c.post("/api/login", json={"username": "alice", "password": PASSWORD}).json()["token"]
    assert TestClient(app).get("/api/me", headers=bearer(token)).status_code == 200
    assert TestClient(app).post("/api/logout", json={}, headers=bearer(token)).status_code == 200
    assert TestClient(app).get("/api/me", headers=bearer(token)).status_code == 401
    stolen = TestClient(app)
    stolen.cookies.set("rk_session", token)
    assert stolen.get("/api/me").status_code == 401
    assert stolen.get("/api/projects").status_code == 401


def test_page_logout_revokes_the_cookie_value(app, store, admin):
    token = admin.c.cookies.get("rk_session")
    r = admin.c.post("/logout", data={"csrf_token": admin.csrf}, follow_redirects=False)
    assert r.status_code == 303
    replay = TestClient(app)  # the cookie value someone copied before the logout
    replay.cookies.set("rk_session", token)
    assert replay.get("/api/me").status_code == 401
    r = replay.post("/api/projects", json={"name": "x", "questions": ["binary"]}, headers=bearer(token))
    assert r.status_code == 401 and store.list_projects() == []


def test_password_change_and_other_sessions(app, store):
    tokens = [TestClient(app).post("/api/login", json={"username": "bob", "password": PASSWORD}).json()["token"]
              for _ in range(2)]
    TestClient(app).post("/api/logout", json={}, headers=bearer(tokens[0]))
    assert TestClient(app).get("/api/me", headers=bearer(tokens[1])).status_code == 200  # only that one
    store.set_password(store.user_by_name("bob").id, "another-password-1")
    assert TestClient(app).get("/api/me", headers=bearer(tokens[1])).status_code == 401


# Login throttling and constant work --------------------------------------------------------------


def test_wrong_passwords_are_throttled_per_account(app, store):
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


def test_wrong_passwords_are_throttled_per_address(app, store):
    clock = [1000.0]
    app = create_app(store, clock=lambda: clock[0])
    c = TestClient(app)
    codes = [c.post("/api/login", json={"username": f"nobody{i}", "password": "wrong-password"}).status_code
             for i in range(40)]
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}


def test_unknown_and_passwordless_accounts_cost_one_full_hash(app, store, monkeypatch):
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


# Secret outside the database, proxy headers, membership (see test_workspaces.py) -----------------


def test_secret_from_a_file_is_not_in_the_database(store, tmp_path, monkeypatch):
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


def test_forwarded_proto_is_trusted_only_with_trust_proxy(app, store):
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
