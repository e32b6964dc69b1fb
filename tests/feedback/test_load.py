"""Load on loopback: 60 concurrent annotators, thousands of submissions, then count.

Every label the server acknowledged must be in the store exactly once (and nothing else may
be), also when the server is SIGKILLed in the middle and restarted. Annotators retry a
submission with the same key until it is acknowledged, exactly as the web page and the
machine client do. Throughput and latency are written to
``test-artifacts/load-sqlite.json`` and ``test-artifacts/load-sqlite-kill.json``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time

import httpx
import pytest

from conftest import ARTIFACTS, ServerProcess

N_ANNOTATORS = 60
N_ITEMS = 700
OVERLAP = 3  # 2100 labels
PASSWORD = "load-test-pw"


def setup_db(path) -> str:
    from rlhfkit.feedback.store import Store

    url = f"sqlite:///{path}"
    s = Store(url)
    s.create_project("load", ["binary"], overlap=OVERLAP, lock_seconds=300)
    s.add_items("load", [{"prompt": f"prompt {i}", "responses": [f"response {i}"]} for i in range(N_ITEMS)])
    for i in range(N_ANNOTATORS):
        s.create_user(f"ann{i:02d}", PASSWORD, source="simulated")
    s.close()
    return url


class Ledger:
    """What the clients were told: acknowledged (user, key) -> label id, and latencies."""

    def __init__(self):
        self.acked: dict[tuple[str, str], int] = {}
        self.submit_ms: list[float] = []
        self.next_ms: list[float] = []
        self.duplicates_checked = 0
        self.errors = 0


async def request(client, method, url, *, give_up_at, **kw):
    """Retry through connection errors and 5xx (a killed server) until ``give_up_at``."""
    delay = 0.05
    while True:
        try:
            r = await client.request(method, url, **kw)
            if r.status_code < 500:
                return r
        except httpx.TransportError:
            pass
        if time.monotonic() > give_up_at:
            raise TimeoutError(f"{method} {url}: no answer")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def annotator(base_url: str, name: str, ledger: Ledger, stop: asyncio.Event, give_up_at: float):
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as c:
        r = await request(c, "POST", "/api/login", json={"username": name, "password": PASSWORD},
                          give_up_at=give_up_at)
        assert r.status_code == 200, r.text
        headers = {"Authorization": "Bearer " + r.json()["token"]}
        n = 0
        t0 = time.perf_counter()
        r = await request(c, "GET", "/api/projects/load/next", headers=headers, give_up_at=give_up_at)
        ledger.next_ms.append((time.perf_counter() - t0) * 1000)
        task = None if r.status_code == 204 else r.json()
        while task is not None and not stop.is_set():
            key = secrets.token_urlsafe(12)  # one key per label, reused on every retry
            body = {"answers": {"binary": {"value": "up" if n % 3 else "down"}},
                    "submission_key": key, "time_ms": 10, "next": True}
            url = f"/api/projects/load/items/{task['item_id']}/labels"
            t0 = time.perf_counter()
            r = await request(c, "POST", url, json=body, headers=headers, give_up_at=give_up_at)
            ledger.submit_ms.append((time.perf_counter() - t0) * 1000)
            assert r.status_code in (200, 201), r.text
            label_id = r.json()["label"]["id"]
            assert (name, key) not in ledger.acked
            ledger.acked[(name, key)] = label_id
            n += 1
            if n % 20 == 0:  # a deliberate retry of an acknowledged submission
                again = await request(c, "POST", url, json=body, headers=headers, give_up_at=give_up_at)
                assert again.status_code == 200 and again.json()["duplicate"] is True
                assert again.json()["label"]["id"] == label_id
                ledger.duplicates_checked += 1
                # the retry handed out the same next item (the one this annotator holds)
                nxt, first = again.json()["next"], r.json()["next"]
                assert (nxt is None) == (first is None)
                assert nxt is None or nxt["item_id"] == first["item_id"]
            task = r.json()["next"]


def check_store(db_path, ledger: Ledger) -> int:
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT users.name, labels.submission_key, labels.id FROM labels "
                            "JOIN users ON users.id = labels.user_id").fetchall()
        per_item = conn.execute("SELECT item_id, COUNT(*), COUNT(DISTINCT user_id) FROM labels "
                                "GROUP BY item_id").fetchall()
        n_done = conn.execute("SELECT SUM(n_done) FROM items").fetchone()[0]
    finally:
        conn.close()
    stored = {(name, key): lid for name, key, lid in rows}
    assert len(stored) == len(rows)  # no (user, key) twice
    # every acknowledged label is stored, under the id the client was told; nothing else is
    assert stored == ledger.acked
    assert all(n == d <= OVERLAP for _, n, d in per_item)  # overlap respected, no one twice
    assert n_done == len(rows)
    return len(rows)


def percentile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def report(name: str, ledger: Ledger, seconds: float, extra: dict) -> dict:
    out = {
        "annotators": N_ANNOTATORS, "labels": len(ledger.acked), "seconds": round(seconds, 2),
        "labels_per_s": round(len(ledger.acked) / seconds, 1),
        "submit_p50_ms": round(percentile(ledger.submit_ms, 0.5), 1),
        "submit_p99_ms": round(percentile(ledger.submit_ms, 0.99), 1),
        "duplicate_retries_checked": ledger.duplicates_checked, **extra,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(name, out)
    return out


@pytest.mark.timeout(180)
def test_load_every_acknowledged_label_stored_once(tmp_path):
    db = tmp_path / "load.db"
    url = setup_db(db)
    server = ServerProcess(url)
    server.start()
    ledger = Ledger()
    try:
        async def main():
            stop = asyncio.Event()
            give_up = time.monotonic() + 120
            await asyncio.gather(*(annotator(server.url, f"ann{i:02d}", ledger, stop, give_up)
                                   for i in range(N_ANNOTATORS)))

        t0 = time.perf_counter()
        asyncio.run(main())
        seconds = time.perf_counter() - t0
    finally:
        server.stop()
    n = check_store(db, ledger)
    assert n == N_ITEMS * OVERLAP  # the queue was drained: thousands of labels
    res = report("load-sqlite", ledger, seconds, {"server_kills": 0})
    assert res["labels"] >= 2000


@pytest.mark.timeout(180)
def test_load_survives_sigkill_mid_load(tmp_path):
    db = tmp_path / "kill.db"
    url = setup_db(db)
    server = ServerProcess(url)
    server.start()
    ledger = Ledger()
    kills = 0
    try:
        async def killer():
            nonlocal kills
            for target in (N_ITEMS * OVERLAP // 3, 2 * N_ITEMS * OVERLAP // 3):
                while len(ledger.acked) < target:
                    await asyncio.sleep(0.01)
                server.kill()  # SIGKILL, mid-request for most annotators
                kills += 1
                await asyncio.sleep(0.5)
                await asyncio.to_thread(server.start)  # same port, same database

        async def main():
            stop = asyncio.Event()
            give_up = time.monotonic() + 150
            kill_task = asyncio.create_task(killer())
            await asyncio.gather(*(annotator(server.url, f"ann{i:02d}", ledger, stop, give_up)
                                   for i in range(N_ANNOTATORS)))
            await kill_task

        t0 = time.perf_counter()
        asyncio.run(main())
        seconds = time.perf_counter() - t0
    finally:
        server.stop()
    assert kills == 2
    n = check_store(db, ledger)
    assert n == N_ITEMS * OVERLAP
    report("load-sqlite-kill", ledger, seconds, {"server_kills": kills})
