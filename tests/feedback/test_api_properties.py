"""Property-based tests of the whole JSON API (Hypothesis).

A state machine drives a fresh app per example (an admin, two annotators, Bearer sessions)
through random sequences of well-formed and malformed requests to every endpoint and every
question type: projects (valid ones, and valid ones with a field replaced by random JSON),
items, the queue, submissions (answers built for the task, or random JSON: wrong types, huge
and negative integers, NaN, lone surrogates, deep nesting), skips, labels, stats, arena,
exports, accounts, invites, workspaces and members, logins and logouts.

Invariants, checked after every request:

* the answer is never a 5xx;
* a refused request (4xx) changed nothing in the database (every table, row for row).

At the end of each example every project is exported with ``rlhfkit label export`` and read
back: one record per stored label and question (honeypots aside), naming the label it came
from. Every example starts with two annotators' choices on two pairs; after the SQLite run, the
preference records of all its examples train a reward model with ``rlhfkit rm --data`` (a tiny
model, one step), so everything the API stored is trainable.

20 examples of 30 steps on SQLite and 5 of 25 on PostgreSQL took 49 s here, both stores and the
tiny model included (with the whole suite running beside it on two busy cores, 25 SQLite
examples took 91 s); set ``RLHFKIT_PROPERTY_EXAMPLES`` for a longer SQLite run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import select

from conftest import PASSWORD, _pg_admin, _pg_schema_url
from rlhfkit.data.io import read_records
from rlhfkit.feedback import questions as Q
from rlhfkit.feedback.server import create_app
from rlhfkit.feedback.store import Base, Store

QUESTION_SETS = [["write_prompt"], ["demonstration"], ["binary"], ["likert"], ["spans"],
                 ["correction"], ["pairwise"], ["rank"], ["binary", "likert", "spans"],
                 ["pairwise", "rank"], ["write_prompt", "demonstration"]]
NAMES = st.sampled_from(["p0", "p1", "p2", "p3", "ws-a", "x.y", "a_b"])
ANY_CHAR = st.characters(exclude_categories=())  # includes lone surrogates and controls
SAFE_CHAR = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
SAFE_TEXT = st.text(SAFE_CHAR, min_size=1, max_size=24).filter(str.strip)
ANY_TEXT = st.text(ANY_CHAR, max_size=16)
NUMBER = st.integers(-(2**70), 2**70) | st.floats() | st.sampled_from([0, 1, -1, 2**31, 2**63, 1e20])
JSON = st.recursive(st.none() | st.booleans() | NUMBER | ANY_TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
                    max_leaves=8)
ITEM_IDS = st.integers(1, 40).map(str) | st.sampled_from(["0", "-1", "2147483648", str(2**63), "1e3", "x"])
PREFERENCE_KINDS = ("comparison", "ranking", "binary")
STATE: dict = {"records": [], "requests": 0}


def seg(value: str) -> str:
    """A path segment, percent-encoded (a lone surrogate as its UTF-8-ish bytes)."""
    return quote(value, safe="", errors="surrogatepass")


def deep(depth: int) -> str:
    """JSON nested ``depth`` levels (a stack-overflow probe)."""
    return "[" * depth + "]" * depth


@st.composite
def items_for(draw, questions: list[str]) -> list[dict]:
    lo, hi = Q.check_questions(questions)
    out = []
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(lo, min(hi, 4)))
        responses = draw(st.lists(SAFE_TEXT, min_size=k, max_size=k, unique=True))
        item = {"prompt": draw(SAFE_TEXT), "responses": responses}
        if draw(st.booleans()):
            item["meta"] = {"project": "spoof", "n": draw(st.integers(0, 9))}
        if lo and draw(st.integers(0, 4)) == 0:  # a honeypot
            gold = {}
            for q in questions:
                if q == "binary":
                    gold[q] = {"value": draw(st.sampled_from(["up", "down"]))}
                elif q == "likert":
                    gold[q] = {"score": draw(st.integers(1, 7))}
                elif q == "pairwise" and k == 2:
                    gold[q] = {"choice": draw(st.sampled_from([0, 1, "tie"]))}
            if gold:
                item["gold"] = gold
        out.append(item)
    return out


@st.composite
def answer_for(draw, question: str, task: dict) -> dict:
    """A well-formed display-terms answer to ``question`` for ``task``."""
    k = len(task["responses"])
    if question in ("write_prompt", "demonstration", "correction"):
        return {"text": draw(SAFE_TEXT)}
    if question == "binary":
        return {"value": draw(st.sampled_from(["up", "down"]))}
    if question == "pairwise":
        return {"choice": draw(st.sampled_from(["left", "right", "tie", "both_bad"]))}
    if question == "likert":
        return {"score": draw(st.integers(1, 7))}
    if question == "rank":
        return {"ranks": draw(st.lists(st.integers(1, k), min_size=k, max_size=k))}
    length = len(task["responses"][0])  # spans: code points
    spans = []
    for _ in range(draw(st.integers(0, 2))):
        start = draw(st.integers(0, length - 1))
        spans.append({"start": start, "end": draw(st.integers(start + 1, length)),
                      "category": draw(st.sampled_from(task["categories"])),
                      "note": draw(st.none() | SAFE_TEXT)})
    return {"spans": spans, "missing": draw(st.lists(SAFE_TEXT, max_size=2))}


def snapshot(store: Store) -> str:
    """A digest of every row of every table."""
    h = hashlib.sha256()
    with store.tx() as s:
        for table in Base.metadata.sorted_tables:
            rows = s.execute(select(table).order_by(*table.primary_key.columns)).all()
            h.update(repr((table.name, [tuple(r) for r in rows])).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class APIMachine(RuleBasedStateMachine):
    """Random requests against a fresh app; see the module docstring for the invariants."""

    URL_FACTORY = None  # set by the test: () -> a fresh database URL
    WORK_DIR: Path = Path(".")
    TINY_LM: Path | None = None

    projects = Bundle("projects")
    tasks = Bundle("tasks")

    def __init__(self):
        super().__init__()
        self.url = type(self).URL_FACTORY()
        self.store = Store(self.url)
        for name, role in (("admin", "admin"), ("ann", "annotator"), ("bob", "annotator")):
            self.store.create_user(name, PASSWORD, role=role)
        self.client = TestClient(create_app(self.store))
        self.tokens = {n: self.login(n) for n in ("admin", "ann", "bob")}

    def login(self, name: str) -> str:
        r = self.client.post("/api/login", json={"username": name, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return r.json()["token"]

    def teardown(self):
        if not hasattr(self, "store"):
            return
        try:
            self.check_exports()
        finally:
            self.store.close()
            self.client.close()

    # -- the request helper: both invariants on every call ----------------------------------

    def call(self, who: str | None, method: str, path: str, body=None, raw: str | None = None,
             token: str | None = None):
        headers = {}
        if who is not None:
            headers["Authorization"] = f"Bearer {token or self.tokens[who]}"
        if raw is None and body is not None:
            raw = json.dumps(body)  # NaN -> NaN, lone surrogates -> \\udXXX escapes
        if raw is not None:
            headers["Content-Type"] = "application/json"
        before = snapshot(self.store)
        r = self.client.request(method, path, content=raw, headers=headers)
        STATE["requests"] += 1
        assert r.status_code < 500, (method, path, raw, r.text)
        if r.status_code >= 400:
            assert snapshot(self.store) == before, (method, path, raw, r.status_code, r.text)
        return r

    @initialize(target=projects, questions=st.sampled_from(
        [["pairwise"], ["rank"], ["binary"], ["binary", "likert", "spans"], ["demonstration"]]),
        data=st.data())
    def first_project(self, questions, data):
        items = data.draw(items_for(questions)) + data.draw(items_for(questions))
        r = self.call("admin", "POST", "/api/projects", {"name": "start", "questions": questions,
                                                         "overlap": 2, "items": items})
        assert r.status_code == 201, r.text
        return "start"

    @initialize(data=st.data())
    def some_preferences(self, data):
        """Two annotators each choose a side on two pairs, so every example stores preference
        labels for the reward model trained at the end (a random walk alone may store none)."""
        items = [{"prompt": f"pair {STATE['requests']}.{i}: " + data.draw(SAFE_TEXT), "responses": data.draw(
            st.lists(SAFE_TEXT, min_size=2, max_size=2, unique=True))} for i in range(2)]
        r = self.call("admin", "POST", "/api/projects", {"name": "prefs", "questions": ["pairwise"],
                                                         "overlap": 2, "items": items})
        assert r.status_code == 201, r.text
        for who in ("ann", "bob"):
            for _ in items:
                t = self.call(who, "GET", "/api/projects/prefs/next").json()
                choice = data.draw(st.sampled_from(["left", "right"]))
                r = self.call(who, "POST", f"/api/projects/prefs/items/{t['item_id']}/labels",
                              {"answers": {"pairwise": {"choice": choice}},
                               "submission_key": t["submission_key"]})
                assert r.status_code == 201, r.text

    # -- projects and items -----------------------------------------------------------------

    @rule(target=projects, name=NAMES, questions=st.sampled_from(QUESTION_SETS), data=st.data(),
          overlap=st.integers(1, 3), gold_every=st.integers(0, 3))
    def create_project(self, name, questions, data, overlap, gold_every):
        body = {"name": name, "questions": questions, "overlap": overlap, "gold_every": gold_every,
                "items": data.draw(items_for(questions))}
        r = self.call("admin", "POST", "/api/projects", body)
        assert r.status_code in (201, 409), r.text
        return name

    @rule(name=NAMES, questions=st.sampled_from(QUESTION_SETS), data=st.data(),
          field=st.sampled_from(["name", "questions", "overlap", "lock_seconds", "gold_every",
                                 "guidelines", "categories", "workspace", "items", "arena"]),
          value=JSON)
    def create_project_malformed(self, name, questions, data, field, value):
        body = {"name": name, "questions": questions, "items": data.draw(items_for(questions))}
        body[field] = value
        self.call("admin", "POST", "/api/projects", body)

    @rule(project=projects, data=st.data(), questions=st.sampled_from(QUESTION_SETS), junk=JSON,
          spoil=st.booleans())
    def add_items(self, project, data, questions, junk, spoil):
        items = data.draw(items_for(questions))
        if spoil:
            items[data.draw(st.integers(0, len(items) - 1))][
                data.draw(st.sampled_from(["prompt", "responses", "gold", "meta", "id"]))] = junk
        self.call("admin", "POST", f"/api/projects/{project}/items", {"items": items})

    # -- the queue and submissions -----------------------------------------------------------

    @rule(target=tasks, who=st.sampled_from(["ann", "bob", "admin"]), project=projects | NAMES)
    def next_task(self, who, project):
        r = self.call(who, "GET", f"/api/projects/{project}/next")
        assert r.status_code in (200, 204, 404), r.text
        return (who, project, r.json()) if r.status_code == 200 else None

    @rule(task=tasks, data=st.data(), then_next=st.booleans())
    def submit_well_formed(self, task, data, then_next):
        if task is None:
            return
        who, project, t = task
        answers = {q: data.draw(answer_for(q, t)) for q in t["questions"]}
        r = self.call(who, "POST", f"/api/projects/{project}/items/{t['item_id']}/labels",
                      {"answers": answers, "submission_key": t["submission_key"], "time_ms": 10,
                       "next": then_next})
        # 201 new, 200 the same key again; 409 already labelled under another key or lock lost
        assert r.status_code in (200, 201, 409), r.text

    @rule(project=projects, who=st.sampled_from(["ann", "bob"]), data=st.data())
    def work(self, project, who, data):
        """A few items in a row, each taken and answered well."""
        for _ in range(3):
            r = self.call(who, "GET", f"/api/projects/{project}/next")
            if r.status_code != 200:
                return
            t = r.json()
            answers = {q: data.draw(answer_for(q, t)) for q in t["questions"]}
            r = self.call(who, "POST", f"/api/projects/{project}/items/{t['item_id']}/labels",
                          {"answers": answers, "submission_key": t["submission_key"]})
            assert r.status_code in (200, 201), r.text

    @rule(task=tasks, answers=JSON, key=ANY_TEXT | st.just("k" * 16), item_id=ITEM_IDS,
          time_ms=NUMBER | st.none(), who=st.sampled_from(["ann", "bob"]))
    def submit_malformed(self, task, answers, key, item_id, time_ms, who):
        if task is not None and isinstance(answers, dict) and answers:
            answers = {task[2]["questions"][0]: answers}  # a known question, a random answer
        project = task[1] if task else "p0"
        self.call(who, "POST", f"/api/projects/{project}/items/{item_id}/labels",
                  {"answers": answers, "submission_key": key, "time_ms": time_ms})

    @rule(project=projects | NAMES, raw=st.sampled_from(
        ["{", "[]", "null", '{"answers": NaN, "submission_key": "kkkkkkkk"}', deep(5000),
         '{"answers": {"binary": {"value": "\\ud800"}}, "submission_key": "\\udfff\\ud800kkkkkk"}']))
    def submit_raw(self, project, raw):
        self.call("ann", "POST", f"/api/projects/{project}/items/1/labels", raw=raw)

    @rule(task=tasks)
    def release(self, task):
        if task is not None:
            who, project, t = task
            self.call(who, "POST", f"/api/projects/{project}/items/{t['item_id']}/release", {})

    # -- reading -----------------------------------------------------------------------------

    @rule(project=projects | NAMES, who=st.sampled_from(["admin", "ann", "bob"]),
          what=st.sampled_from(["labels", "labels?all=true", "labels?all=maybe", "stats", "arena",
                                "export", "export?include_gold=true"]))
    def read(self, project, who, what):
        self.call(who, "GET", f"/api/projects/{project}/{what}")

    @rule(who=st.sampled_from(["admin", "ann", None]),
          path=st.sampled_from(["/api/me", "/api/projects", "/api/workspaces", "/api/health"]))
    def read_lists(self, who, path):
        self.call(who, "GET", path)

    # -- accounts, workspaces, sessions --------------------------------------------------------

    @rule(name=NAMES | ANY_TEXT, password=st.none() | ANY_TEXT | st.just("long-enough-pw"),
          role=st.sampled_from(["annotator", "admin", "root"]), workspaces=st.none() | st.lists(NAMES, max_size=2),
          by=st.sampled_from(["admin", "ann"]))
    def create_user(self, name, password, role, workspaces, by):
        self.call(by, "POST", "/api/users", {"name": name, "password": password, "role": role,
                                              "workspaces": workspaces})

    @rule(name=NAMES | ANY_TEXT, workspaces=st.none() | st.lists(NAMES, max_size=2))
    def invite(self, name, workspaces):
        self.call("admin", "POST", "/api/invites", {"name": name, "workspaces": workspaces})

    @rule(name=NAMES | ANY_TEXT, member=st.sampled_from(["ann", "bob", "nobody"]),
          remove=st.booleans(), by=st.sampled_from(["admin", "bob"]))
    def workspaces(self, name, member, remove, by):
        self.call(by, "POST", "/api/workspaces", {"name": name})
        if remove:
            self.call(by, "DELETE", f"/api/workspaces/{seg(name)}/members/{member}")
        else:
            self.call(by, "POST", f"/api/workspaces/{seg(name)}/members", {"user": member})

    @rule(username=NAMES | ANY_TEXT | st.just("ann"), password=ANY_TEXT | st.just(PASSWORD))
    def login_attempt(self, username, password):
        self.call(None, "POST", "/api/login", {"username": username, "password": password})

    @rule()
    def logout_ends_the_session(self):
        r = self.call(None, "POST", "/api/login", {"username": "bob", "password": PASSWORD})
        if r.status_code != 200:  # throttled by earlier wrong passwords
            assert r.status_code == 429
            return
        token = r.json()["token"]
        assert self.call("bob", "POST", "/api/logout", {}, token=token).status_code == 200
        assert self.call("bob", "GET", "/api/me", token=token).status_code == 401

    @invariant()
    def sessions_still_work(self):
        if hasattr(self, "tokens"):
            for who, token in self.tokens.items():
                r = self.client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200 and r.json()["name"] == who

    # -- the end of an example: every label exports and reads back --------------------------------

    def check_exports(self):
        from rlhfkit.cli import main

        out = type(self).WORK_DIR
        for p in self.store.list_projects():
            rows = self.store.label_rows(p.name)
            expected = sum(len(lab.answers) for lab, item, _ in rows if not item.is_gold)
            path = out / f"{p.name}-{os.getpid()}-{STATE['requests']}.jsonl"
            assert main(["label", "export", "--db", self.url, "--project", p.name, "--out", str(path)]) == 0
            records = read_records(path) if path.stat().st_size else []
            assert len(records) == expected
            label_ids = {lab.id for lab, _, _ in rows}
            assert all(r.meta["label_id"] in label_ids and r.meta["project"] == p.name for r in records)
            STATE["records"].extend(r for r in records if r.kind in PREFERENCE_KINDS)


def train_rm(tiny: Path, out: Path) -> None:
    """One reward-model step on every preference record the examples exported."""
    from rlhfkit.cli import main
    from rlhfkit.data.io import write_records

    data = out / "preferences.jsonl"
    write_records(STATE["records"], data)
    run = out / "rm"
    assert main(["rm", "--model", str(tiny), "--data", str(data), "--output-dir", str(run),
                 "--max-steps", "1", "--batch-size", "4", "--max-length", "48",
                 "--eval-fraction", "0", "--no-progress", "--precision", "fp32"]) == 0
    assert (run / "model" / "config.json").exists()


SETTINGS = {"sqlite": settings(max_examples=int(os.environ.get("RLHFKIT_PROPERTY_EXAMPLES", 20)), stateful_step_count=30, deadline=None,
                               suppress_health_check=list(HealthCheck)),
            "postgresql": settings(max_examples=5, stateful_step_count=25, deadline=None,
                                   suppress_health_check=list(HealthCheck))}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_api_never_errors_and_refusals_store_nothing(kind, tmp_path_factory, tiny_lm):
    import secrets

    from hypothesis.stateful import run_state_machine_as_test

    work = tmp_path_factory.mktemp(f"props-{kind}")
    STATE["records"].clear()
    schemas = []
    if kind == "sqlite":
        def url_factory():
            return f"sqlite:///{work / secrets.token_hex(6)}.db"
    else:
        if os.environ.get("RLHFKIT_NO_PG") == "1":
            pytest.skip("RLHFKIT_NO_PG=1 was set: PostgreSQL tests explicitly turned off")

        def url_factory():
            schema = "h_" + secrets.token_hex(6)
            _pg_admin(f"CREATE SCHEMA {schema}")
            schemas.append(schema)
            return _pg_schema_url(schema)

    APIMachine.URL_FACTORY = staticmethod(url_factory)
    APIMachine.WORK_DIR = work
    APIMachine.TINY_LM = tiny_lm
    try:
        run_state_machine_as_test(APIMachine, settings=SETTINGS[kind])
    finally:
        for schema in schemas:
            _pg_admin(f"DROP SCHEMA {schema} CASCADE")
    if kind == "sqlite":
        assert len(STATE["records"]) >= 8, "the examples exported fewer preference records than they stored"
        train_rm(tiny_lm, work)
