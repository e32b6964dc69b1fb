"""What the feedback store accepts: its limits and the checks of what it is given.

Holds the bounds of every setting the store can hold (``MAX_*``, :data:`ROLES`) and the checks
run before anything is written: names and passwords (``_check_name``, ``_check_password``), a
new project's settings (``_new_project``), an item's prompt, responses, gold answer and meta
(``_item_row``) and an annotator's answers (``_check_answers``). Each raises
:class:`~rlhfkit.feedback.errors.InputError` or :class:`~rlhfkit.feedback.errors.StoreError`.
"""

from __future__ import annotations

import time
from typing import Any

from .. import questions as Q
from ..errors import InputError, StoreError, check_int, check_json, check_text
from ..tables import MAX_NAME, Item, Project

ROLES = ("admin", "annotator")
MAX_PASSWORD = 1024
MAX_OVERLAP = 100
MAX_LOCK_SECONDS = 30 * 86400
MAX_GOLD_EVERY = 10_000
MAX_TIME_MS = 7 * 86400 * 1000
MAX_GUIDELINES = 50_000
MAX_MODEL_NAME = 200


def _new_project(name: str, questions: list[str], *, overlap: int = 1, guidelines: str = "",
                 lock_seconds: int = 600, gold_every: int = 0, categories: list[str] | None = None,
                 arena: bool = False) -> Project:
    """A checked, not yet stored project (every setting within the bounds the store can hold)."""
    _check_name(name, "project name")
    Q.check_questions(questions)
    check_int(overlap, "overlap", 1, MAX_OVERLAP)
    check_int(lock_seconds, "lock_seconds", 1, MAX_LOCK_SECONDS)
    check_int(gold_every, "gold_every", 0, MAX_GOLD_EVERY)
    check_text(guidelines, "guidelines", max_chars=MAX_GUIDELINES)
    cats = Q.check_categories(list(categories) if categories else None)
    return Project(name=name, questions=list(questions), guidelines=guidelines, overlap=overlap,
                   lock_seconds=lock_seconds, gold_every=gold_every, categories=cats,
                   arena=bool(arena), created_at=time.time())


def _check_name(name: Any, what: str) -> None:
    if (not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME
            or not all(c.isalnum() or c in "-_." for c in name)):
        raise InputError(f"{what} must be 1..{MAX_NAME} letters, digits, '-', '_' or '.'")


def _check_password(password: Any) -> str:
    check_text(password, "password", max_chars=MAX_PASSWORD)
    if len(password) < 8:
        raise StoreError("password must have at least 8 characters")
    return password


def _item_prompt(raw: dict, where: str) -> Any:
    prompt = raw.get("prompt", "")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str | list):
        raise InputError(f"{where}: 'prompt' must be a string or a list of chat messages")
    check_json(prompt, f"{where}: prompt", max_chars=Q.MAX_TEXT * 4)
    if isinstance(prompt, list) and not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt):
        raise InputError(f"{where}: chat prompt must be a list of {{role, content}} messages")
    return prompt


def _item_responses(raw: dict, where: str) -> list[dict]:
    given = raw.get("responses") or []
    if not isinstance(given, list) or len(given) > Q.MAX_K:
        raise InputError(f"{where}: 'responses' must be a list of at most {Q.MAX_K} responses")
    responses = []
    for j, r in enumerate(given):
        if isinstance(r, str):
            r = {"text": r}
        if not isinstance(r, dict) or not isinstance(r.get("text"), str):
            raise InputError(f"{where}: responses[{j}] must be a string or {{text, model}}")
        check_text(r["text"], f"{where}: responses[{j}]", max_chars=Q.MAX_TEXT)
        model = r.get("model")
        if model is not None:
            check_text(model, f"{where}: responses[{j}].model", max_chars=MAX_MODEL_NAME)
        responses.append({"text": r["text"], "model": model})
        if r.get("media") is not None:  # an image or animation shown above the text
            if not Q.is_media(r["media"]):
                raise InputError(f"{where}: responses[{j}].media must be a base64 data: URI of a "
                                 f"GIF, PNG, WebP or JPEG image of at most {Q.MAX_MEDIA} characters")
            responses[-1]["media"] = r["media"]
    return responses


def _item_row(p: Project, raw: dict, n: int, lo: int, hi: int) -> Item:
    """A checked item: its texts well-formed, its shape right for every question it is asked."""
    where = f"item {n}"
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected an object with 'prompt' and 'responses'")
    prompt = _item_prompt(raw, where)
    responses = _item_responses(raw, where)
    if not lo <= len(responses) <= hi:
        want = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise InputError(f"{where}: questions {p.questions} need {want} responses, got {len(responses)}")
    texts = [r["text"] for r in responses]
    for q in p.questions:
        Q.get(q).check_item(prompt, texts, where)
    gold = raw.get("gold")
    if gold is not None:
        gold = Q.check_gold(p.questions, gold, texts, p.categories, where)
    meta = raw.get("meta") or {}
    if not isinstance(meta, dict):
        raise InputError(f"{where}: 'meta' must be an object")
    check_json(meta, f"{where}: meta")
    ext = raw.get("id")
    if ext is not None:
        ext = check_text(str(ext) if isinstance(ext, int | float) else ext, f"{where}: id", max_chars=200)
    return Item(project_id=p.id, position=n, external_id=ext, prompt=prompt, responses=responses,
                gold=gold, is_gold=gold is not None, meta=meta, n_done=0)


def _check_answers(p: Project, item: Item, answers: Any, order: list[int]) -> dict:
    if not isinstance(answers, dict):
        raise InputError("answers must be an object {question type: answer}")
    check_json(answers, "answers")
    missing = [q for q in p.questions if q not in answers]
    extra = [q for q in answers if q not in p.questions]
    if missing or extra:
        raise InputError(f"answers must cover exactly the questions {p.questions}; "
                         f"missing {missing}, unexpected {extra}")
    texts = [r["text"] for r in item.responses]
    return {q: Q.get(q).validate(answers[q], order, texts, p.categories) for q in p.questions}
