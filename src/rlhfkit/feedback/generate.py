"""Projects whose responses a policy writes: K samples per prompt, ready to be judged.

``rlhfkit label create-project --generate-from MODEL --k 4 --file prompts.txt --questions rank``
loads the policy with :func:`rlhfkit.models.loading.load_causal_lm`, samples K responses to
each prompt with :func:`rlhfkit.rollout.sample` (HF ``generate``, left padding, the prompt
written by :func:`rlhfkit.data.chat.prompt_text`, exactly as the training stages write it), and
fills a project with them. Which model wrote a response is stored with it (and comes out in
the export's ``meta.models``) but never shown to annotators.

Responses that come out empty, or the same as another response to the same prompt, are
sampled again (a ranking or comparison of two identical texts says nothing), for up to
``max_rounds`` rounds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .store import Store, StoreError
from .transfer import read_rows, rows_to_items


def generate_responses(model: str, prompts: Sequence[Any], k: int, *, max_new_tokens: int = 64,
                       temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                       seed: int = 0, batch_size: int = 16, system_prompt: str | None = None,
                       max_rounds: int = 5, device: str | None = None,
                       backend: Any = None, progress: bool = False) -> list[list[str]]:
    """Sample ``k`` distinct, non-empty responses to every prompt.

    Args:
        model: a HF id, a local folder, a .gguf file or the alias ``smollm2-135m``.
        prompts: prompt texts or chat messages.
        k: responses per prompt.
        max_new_tokens: longest response in tokens.
        temperature: sampling temperature (> 0: K greedy samples would all be the same).
        top_p: nucleus sampling (1 = off).
        top_k: keep the k most likely tokens (0 = off).
        seed: seed of the sampler.
        batch_size: sequences sampled at once.
        system_prompt: system message added to prompts that have none.
        max_rounds: how many times to re-sample the responses that came out empty or repeated.
        device: ``cpu``, ``cuda``…; default CUDA when available.
        backend: a :class:`rlhfkit.rollout.GenerationBackend` (default HF ``generate``).
        progress: show a progress bar over the responses sampled.

    Returns:
        ``k`` response texts per prompt, in prompt order.

    Raises:
        StoreError: some prompt did not get ``k`` distinct responses in ``max_rounds`` rounds.
    """
    import torch
    from tqdm.auto import tqdm

    from ..models.loading import load_causal_lm, load_tokenizer
    from ..rollout import SamplingConfig, sample

    if k < 1:
        raise StoreError("--k must be at least 1", 422)
    if temperature <= 0:
        raise StoreError("sampling K responses needs a temperature above 0", 422)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model)
    lm = load_causal_lm(model).to(device).eval()
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, top_k=top_k)
    out: list[list[str]] = [[] for _ in prompts]
    bar = tqdm(total=k * len(prompts), desc="sample", unit="resp", disable=not progress)
    for _round in range(max_rounds):
        # one slot per response still missing, prompts repeated
        todo = [i for i, got in enumerate(out) for _ in range(k - len(got))]
        if not todo:
            break
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            rollout = sample(lm, tokenizer, [prompts[i] for i in chunk], sampling,
                             system_prompt=system_prompt, backend=backend)
            for i, text in zip(chunk, rollout.texts):
                if text.strip() and text not in out[i] and len(out[i]) < k:
                    out[i].append(text)
                    bar.update()
    bar.close()
    short = [i for i, got in enumerate(out) if len(got) < k]
    if short:
        raise StoreError(f"prompt {short[0]} got only {len(out[short[0]])} distinct non-empty "
                         f"responses of {k} after {max_rounds} rounds of sampling; raise "
                         "--temperature or --max-new-tokens, or lower --k", 422)
    return out


def create_project_from_policy(store: Store, name: str, path: str | os.PathLike,
                               questions: list[str], model: str, k: int, *,
                               model_name: str | None = None, sampling: dict | None = None,
                               **options: Any) -> int:
    """Create a project from a file of prompts, with ``k`` responses per prompt from ``model``.

    The rows are then shaped for the questions as for a file of responses: a ranking of all
    K, one item per pair for ``pairwise``, one per response for single-response questions.

    Args:
        store: the store.
        name: the new project's name.
        path: prompts (any file ``create-project --file`` reads; only ``prompt`` is used).
        questions: the project's question types.
        model: the policy to sample from.
        k: responses per prompt.
        model_name: the name stored with each response (default: ``model`` as given).
        sampling: keyword arguments of :func:`generate_responses`.
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
    texts = generate_responses(model, prompts, k, **settings)
    who = model_name or str(model)
    meta = {"generated_by": who, "sampling": {key: v for key, v in settings.items() if key != "backend"}}
    rows = [{"prompt": prompt, "responses": [{"text": t, "model": who} for t in got], "meta": meta}
            for prompt, got in zip(prompts, texts)]
    items = rows_to_items(rows, questions)
    store.create_project(name, questions, **options)
    return store.add_items(name, items)
