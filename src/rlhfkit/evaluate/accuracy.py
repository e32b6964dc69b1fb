"""Accuracy on a verifiable task from sampled responses: pass@k, the greedy share, the score.

For each problem n responses were sampled and checked by the task's verifier; with c of them
correct, pass@k is estimated without bias as ``1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021;
:func:`rlhfkit.stats.pass_at_k`) and averaged over problems (:func:`pass_at_ks`). ``greedy`` is
the share solved by one greedy response each (:func:`solved_share`). The sampling is the
stages': ``rlhfkit accuracy`` (:mod:`rlhfkit.train.accuracy`) and the evaluations of
``rlhfkit self-improve``.

A task here is anything with the methods of :class:`rlhfkit.tasks.verifiable.VerifiableTask`
that these read: ``references(prompts)`` (None where a problem has none), ``verify(reference,
response)`` (1.0 when right) and ``extract_answer(response)`` (None when there is no answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhfkit.stats import pass_at_k


def pass_at_ks(task: Any, prompts: Sequence[Any], groups: Sequence[Sequence[str]], n: int,
               ks: Sequence[int]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """pass@k for each k of ``n`` responses per problem, and one sample per problem.

    Args:
        task: The verifiable task (see the module).
        prompts: The problems.
        groups: The ``n`` responses to each problem.
        n: Responses per problem.
        ks: The k of pass@k (each at most n).

    Returns:
        ``problems``, ``n``, ``pass@K`` for each K, ``answered`` (the share of responses with an
        answer, when the task extracts any) and ``score`` (the mean verifier score); and per
        problem its prompt, reference, first response and whether that one is correct.
    """
    refs = task.references(prompts)
    correct = [[task.verify(ref, t) >= 1.0 if ref is not None else False for t in texts]
               for ref, texts in zip(refs, groups)]
    out: dict[str, float] = {"problems": float(len(prompts)), "n": float(n)}
    for k in ks:
        out[f"pass@{k}"] = sum(pass_at_k(n, sum(c), k) for c in correct) / max(len(correct), 1)
    answers = [task.extract_answer(t) for texts in groups for t in texts]
    if any(a is not None for a in answers):
        out["answered"] = sum(a is not None for a in answers) / len(answers)
    out["score"] = sum(task.verify(ref, t) for ref, texts in zip(refs, groups) for t in texts
                       if ref is not None) / max(sum(len(g) for g in groups), 1)
    samples = [{"prompt": p, "reference": ref, "response": texts[0], "correct": c[0]}
               for p, ref, texts, c in zip(prompts, refs, groups, correct)]
    return out, samples


def solved_share(task: Any, prompts: Sequence[Any], responses: Sequence[str]) -> float:
    """The share of problems solved by their one response (one without a reference is not)."""
    refs = task.references(prompts)
    return sum(task.verify(ref, r) >= 1.0 for ref, r in zip(refs, responses)
               if ref is not None) / max(len(prompts), 1)


def mean_counts(counts: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each count that every one of ``counts`` has (an episode's turns, tool calls)."""
    if not counts:
        return {}
    keys = [k for k in counts[0] if all(k in c for c in counts)]
    return {k: sum(c[k] for c in counts) / len(counts) for k in keys}
