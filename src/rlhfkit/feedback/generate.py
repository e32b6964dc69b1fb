"""Projects whose responses a policy writes: K samples per prompt, ready to be judged.

``rlhfkit label create-project --generate-from MODEL --k 4 --file prompts.txt --questions rank``
samples K distinct responses to each prompt (:func:`rlhfkit.rollout.generate_responses`: the
policy's own chat template, HF ``generate`` or vLLM) and fills a project with them. Which model
wrote a response is stored with it (and comes out in the export's ``meta.models``) but never
shown to annotators. The app itself never loads a model: the sampler is handed in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from .store import Store, StoreError
from .transfer import read_rows, rows_to_items

Sampler = Callable[[Sequence[Any], int], list[list[str]]]
"""``(prompts, k) -> k distinct response texts per prompt``."""


def create_project_from_policy(store: Store, name: str, path: str | os.PathLike,
                               questions: list[str], generate: Sampler, k: int, *,
                               model_name: str, sampling: dict | None = None,
                               **options: Any) -> int:
    """Create a project from a file of prompts, with ``k`` responses per prompt from a policy.

    The rows are then shaped for the questions as for a file of responses: a ranking of all
    K, one item per pair for ``pairwise``, one per response for single-response questions.

    Args:
        store: the store.
        name: the new project's name.
        path: prompts (any file ``create-project --file`` reads; only ``prompt`` is used).
        questions: the project's question types.
        generate: the sampler: ``generate(prompts, k)`` gives ``k`` distinct texts per prompt.
        k: responses per prompt.
        model_name: the name stored with each response (the policy's id or folder).
        sampling: the sampling settings, stored in each item's ``meta``.
        **options: project options (overlap, guidelines, …) for :meth:`Store.create_project`.

    Returns:
        the number of items created.
    """
    rows = read_rows(path)
    prompts = []
    for n, row in enumerate(rows):
        prompt = row.get("prompt") if row.get("prompt") is not None else row.get("messages")
        if not prompt:
            raise StoreError(f"{path}: row {n} has no prompt", 422)
        prompts.append(prompt)
    rows_to_items([{"prompt": "p", "responses": [str(j) for j in range(k)]}], questions)  # fail early
    if "rank" in questions and k > 9:
        raise StoreError("a ranking shows at most 9 responses: use --k 9 or less", 422)
    try:  # fail before the sampling, not after
        store.project(name)
    except StoreError:
        pass
    else:
        raise StoreError(f"project {name!r} already exists", 409)
    settings = dict(sampling or {})
    try:
        texts = generate(prompts, k)
    except ValueError as err:  # too few distinct responses, a bad sampling option
        raise StoreError(str(err), 422) from None
    who = model_name
    meta = {"generated_by": who, "sampling": {key: v for key, v in settings.items() if key != "backend"}}
    rows = [{"prompt": prompt, "responses": [{"text": t, "model": who} for t in got], "meta": meta}
            for prompt, got in zip(prompts, texts)]
    items = rows_to_items(rows, questions)
    store.create_project(name, questions, items=items, **options)  # one transaction
    return len(items)
