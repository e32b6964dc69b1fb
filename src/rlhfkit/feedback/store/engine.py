"""Database URLs and engines: where the feedback store keeps its data, and how it connects.

Holds :func:`split_project_url` (``db:URL?project=NAME`` into a database URL and a project),
:func:`normalize_url` (a bare path means SQLite; ``postgresql://`` means psycopg 3) and
``_make_engine``, which sets SQLite up for the store (WAL mode, ``synchronous`` from
``RLHFKIT_SQLITE_SYNC``, foreign keys, writers taking the lock up front).
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import create_engine, event

# FULL (default): a commit reaches the disk before the client hears "stored", so labels
# survive a power cut, not only a killed server. NORMAL is safe against a killed process
# (WAL mode) and much faster on slow disks; set RLHFKIT_SQLITE_SYNC=NORMAL to choose it.
SQLITE_SYNC = os.environ.get("RLHFKIT_SQLITE_SYNC", "FULL").upper()
if SQLITE_SYNC not in ("FULL", "NORMAL", "EXTRA"):
    raise ValueError(f"RLHFKIT_SQLITE_SYNC must be FULL, NORMAL or EXTRA, not {SQLITE_SYNC!r}")


def split_project_url(url: str) -> tuple[str, str | None]:
    """Split ``sqlite:///f.db?project=NAME`` into the database URL and the project name.

    Other query parameters (e.g. PostgreSQL connection options) stay on the database URL.
    """
    if url.startswith("db:"):
        url = url[3:]
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    project = next((v for k, v in pairs if k == "project"), None)
    rest = urlencode([(k, v) for k, v in pairs if k != "project"])
    return (f"{base}?{rest}" if rest else base), project


def normalize_url(url: str) -> str:
    """Accept a bare file path for SQLite and plain ``postgresql://`` (psycopg 3 driver)."""
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _make_engine(url: str):
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False},
                               pool_size=20, max_overflow=40)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            # Take transaction control away from pysqlite so BEGIN IMMEDIATE is ours to send.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the client hears "stored" (survives power loss,
            # not only a killed process). https://www.sqlite.org/pragma.html#pragma_synchronous
            cur.execute(f"PRAGMA synchronous={SQLITE_SYNC}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            # Writers take the write lock up front: no deadlock-prone lock upgrade midway.
            immediate = conn.get_execution_options().get("rk_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)
