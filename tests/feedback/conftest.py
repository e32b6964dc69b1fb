"""Fixtures for the feedback app: stores on SQLite and PostgreSQL, apps, logged-in clients.

PostgreSQL comes from ``scripts/test-services.sh`` (Debian's ``postgresql`` on loopback) or
``RLHFKIT_PG_URL``. If it cannot be reached the PostgreSQL tests FAIL, unless
``RLHFKIT_NO_PG=1`` is set explicitly, in which case they are skipped with that reason.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhfkit.feedback import security

# Cheap password hashing in tests (the production cost is 2**14); the format is unchanged.
security.SCRYPT_N = 2**10
os.environ["RLHFKIT_SCRYPT_N"] = str(2**10)

PG_URL = os.environ.get("RLHFKIT_PG_URL",
                        "postgresql://rlhfkit:rlhfkit@127.0.0.1:5432/rlhfkit_test")
PASSWORD = "correct-horse-1"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty database on each store kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
        return
    if os.environ.get("RLHFKIT_NO_PG") == "1":
        pytest.skip("RLHFKIT_NO_PG=1 was set: PostgreSQL tests explicitly turned off")
    schema = "t_" + secrets.token_hex(6)
    try:
        _pg_admin(f"CREATE SCHEMA {schema}")
    except Exception as e:  # noqa: BLE001 - any failure to reach the server
        pytest.fail(f"PostgreSQL at {PG_URL} is not reachable ({e}). Run "
                    "`bash scripts/test-services.sh` as root, or set RLHFKIT_NO_PG=1 to skip "
                    "these tests on purpose.")
    yield _pg_schema_url(schema)
    _pg_admin(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def store(store_url):
    from rlhfkit.feedback.store import Store

    s = Store(store_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    from rlhfkit.feedback.store import Store

    s = Store(f"sqlite:///{tmp_path / 'feedback.db'}")
    yield s
    s.close()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(r'data-csrf="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


class Browserish:
    """A TestClient logged in through the login form, as a browser would be."""

    def __init__(self, app, name: str, password: str = PASSWORD):
        from fastapi.testclient import TestClient

        self.c = TestClient(app)
        page = self.c.get("/login")
        r = self.c.post("/login", data={"username": name, "password": password,
                                        "csrf_token": csrf_of(page.text)}, follow_redirects=False)
        assert r.status_code == 303, r.text
        self.csrf = csrf_of(self.c.get("/login").text)

    def get(self, url, **kw):
        return self.c.get(url, **kw)

    def post_json(self, url, body, **kw):
        headers = {"X-CSRF-Token": self.csrf, **kw.pop("headers", {})}
        return self.c.post(url, json=body, headers=headers, **kw)


@pytest.fixture
def app(store):
    from rlhfkit.feedback.server import create_app

    store.create_user("admin", PASSWORD, role="admin")
    store.create_user("alice", PASSWORD)
    store.create_user("bob", PASSWORD)
    return create_app(store)


@pytest.fixture
def admin(app):
    return Browserish(app, "admin")


@pytest.fixture
def alice(app):
    return Browserish(app, "alice")


@pytest.fixture
def bob(app):
    return Browserish(app, "bob")


@pytest.fixture
def live(tmp_path):
    """The app served over loopback (uvicorn in a thread) on a fresh SQLite store with an admin.

    Yields ``(base url, store)``.
    """
    import threading

    import uvicorn

    from rlhfkit.feedback.server import create_app
    from rlhfkit.feedback.store import Store

    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    store.create_user("admin", PASSWORD, role="admin")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(10)
    store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``rlhfkit label serve`` equivalent in a child process (so it can be SIGKILLed)."""

    def __init__(self, db_url: str, port: int | None = None):
        self.db_url, self.port = db_url, port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        import httpx

        code = ("import sys, uvicorn; from rlhfkit.feedback.server import create_app; "
                "uvicorn.run(create_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]), "
                "log_level='error', backlog=2048, limit_concurrency=None)")
        env = dict(os.environ, RLHFKIT_SCRYPT_N=str(2**10))
        self.proc = subprocess.Popen([sys.executable, "-c", code, self.db_url, str(self.port)], env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no shutdown handlers, no flushing
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
