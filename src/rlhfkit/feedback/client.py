"""Machine annotators: an HTTP client of the feedback app's JSON API.

Simulated labelers and the AI judge label through exactly the API the web pages use, under
their own accounts (``source`` = ``simulated`` or ``ai``), so their labels are queued, locked,
checked and stored like a person's::

    client = FeedbackClient("http://127.0.0.1:8000", "sim-1", "secret-password")
    labeler = SimulatedLabeler(...)  # rlhfkit.feedback.simulated
    n = label_project(client, "pairs", labeler_answerer(labeler))

Submissions are retried on network errors with the same submission key, so a label the
server acknowledged is never stored twice, and one it never acknowledged is sent again.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx

from . import questions as Q
from .questions import likert_from_score

__all__ = ["FeedbackClient", "FeedbackError", "label_project", "labeler_answerer",
           "likert_from_score"]

Answerer = Callable[[dict], dict]
"""Turns a task (the JSON of ``GET /api/projects/{p}/next``) into ``{question: answer}``."""


class FeedbackError(RuntimeError):
    """The server refused a request; ``status`` is the HTTP status, the message its detail."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class FeedbackClient:
    """A logged-in session with the feedback app (Bearer token; no cookies, no CSRF needed).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        username: account name.
        password: account password.
        timeout: seconds per request.
        retries: attempts per request on connection errors and 5xx answers.
        transport: an ``httpx`` transport (tests pass the app's ASGI transport).
    """

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 30.0,
                 retries: int = 5, transport: httpx.BaseTransport | None = None):
        self.username = username
        self._password = password
        self.retries = retries
        self.http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
        self.token: str | None = None
        self.login()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> FeedbackClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        delay = 0.2
        for attempt in range(self.retries):
            headers = dict(kw.pop("headers", {}) or {})
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            try:
                r = self.http.request(method, path, headers=headers, **kw)
            except (httpx.TransportError, httpx.TimeoutException):
                if attempt == self.retries - 1:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 3.0)
                continue
            if r.status_code >= 500 and attempt < self.retries - 1:
                time.sleep(delay)
                delay = min(delay * 2, 3.0)
                continue
            if r.status_code >= 400:
                try:
                    detail = r.json().get("detail", r.text)
                except ValueError:
                    detail = r.text
                raise FeedbackError(r.status_code, str(detail))
            return r
        raise AssertionError("unreachable")

    def login(self) -> None:
        """Log in and keep the session token."""
        self.token = None
        r = self._request("POST", "/api/login",
                          json={"username": self.username, "password": self._password})
        self.token = r.json()["token"]

    # -- annotator calls --------------------------------------------------------------

    def projects(self) -> list[dict]:
        """Projects with your own label counts."""
        return self._request("GET", "/api/projects").json()

    def next(self, project: str) -> dict | None:
        """Your next task in ``project`` (locked for you), or None when nothing is left."""
        r = self._request("GET", f"/api/projects/{project}/next")
        return None if r.status_code == 204 else r.json()

    def submit(self, project: str, item_id: int, answers: dict, *, submission_key: str | None = None,
               time_ms: int | None = None) -> dict:
        """Submit answers (display terms) for one item; safe to retry with the same key.

        Returns:
            ``{"label": ..., "duplicate": bool}`` as the server answered.
        """
        key = submission_key or secrets.token_urlsafe(16)
        r = self._request("POST", f"/api/projects/{project}/items/{item_id}/labels",
                          json={"answers": answers, "submission_key": key, "time_ms": time_ms})
        return r.json()

    def release(self, project: str, item_id: int) -> None:
        """Give a held item back unlabelled."""
        self._request("POST", f"/api/projects/{project}/items/{item_id}/release", json={})

    def labels(self, project: str, everyone: bool = False) -> list[dict]:
        """Your labels in ``project`` (everyone's for an admin with ``everyone=True``)."""
        return self._request("GET", f"/api/projects/{project}/labels",
                             params={"all": str(everyone).lower()}).json()

    # -- admin calls ------------------------------------------------------------------

    def create_project(self, name: str, questions: list[str], items: list[dict] | None = None,
                       **options: Any) -> dict:
        """Create a project (admin)."""
        body = {"name": name, "questions": questions, "items": items or [], **options}
        return self._request("POST", "/api/projects", json=body).json()

    def add_items(self, project: str, items: list[dict]) -> int:
        """Add items to a project (admin)."""
        return self._request("POST", f"/api/projects/{project}/items",
                             json={"items": items}).json()["items_added"]

    def create_user(self, name: str, password: str | None = None, role: str = "annotator",
                    source: str = "human") -> dict:
        """Create an account (admin)."""
        return self._request("POST", "/api/users", json={"name": name, "password": password,
                                                          "role": role, "source": source}).json()

    def stats(self, project: str) -> dict:
        """Progress and agreement (admin)."""
        return self._request("GET", f"/api/projects/{project}/stats").json()

    def arena(self, project: str) -> dict:
        """Arena ratings and the win/tie/lose table (admin)."""
        return self._request("GET", f"/api/projects/{project}/arena").json()

    def export_jsonl(self, project: str) -> str:
        """The project's labels as JSON-lines records (admin)."""
        return self._request("GET", f"/api/projects/{project}/export").text


def label_project(client: FeedbackClient, project: str, answer: Answerer, *,
                  max_items: int | None = None) -> int:
    """Label ``project`` until the queue is empty (or ``max_items``); returns labels given."""
    n = 0
    while max_items is None or n < max_items:
        task = client.next(project)
        if task is None:
            break
        t0 = time.perf_counter()
        answers = answer(task)
        try:
            client.submit(project, task["item_id"], answers, submission_key=task["submission_key"],
                          time_ms=int((time.perf_counter() - t0) * 1000))
        except FeedbackError as err:
            # Too slow: the lock ran out and others filled the item meanwhile. The answer
            # was not stored; carry on with the next item.
            if err.status == 409 and "lock on this item expired" in err.detail:
                continue
            raise
        n += 1
    return n


def labeler_answerer(labeler: Any, *,
                     writer: Callable[[dict, str], str] | None = None) -> Answerer:
    """Answer tasks with a simulated labeler or AI judge.

    Anything with the ``binary``/``compare``/``rank``/``score`` methods of
    :class:`~rlhfkit.feedback.simulated.SimulatedLabeler` (returning records) will do; each
    question type says how such a labeler answers it (``QuestionType.simulate``; a Likert
    score is squashed onto 1..7 by :func:`~rlhfkit.feedback.questions.likert_from_score`).

    Args:
        labeler: the simulated labeler or AI judge.
        writer: ``writer(task, question) -> text`` for the writing questions
            (write_prompt, demonstration, correction); without it those questions fail.
    """

    def answer(task: dict) -> dict:
        return {q: Q.get(q).simulate(labeler, task, writer) for q in task["questions"]}

    return answer
