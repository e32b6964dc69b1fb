"""Project statistics for the admin page and API: agreement, annotators, honeypots, arena."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import combinations
from statistics import median

from . import arena as AR
from . import questions as Q
from . import reliability as REL
from . import transfer as T
from .store import Store, StoreError


def _clean(x):
    """Round floats for the page and the API; nan (undefined) becomes None, recursively."""
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, 4)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def question_units(store: Store, project: str) -> dict[str, dict]:
    """``{question: {unit: {annotator: value}}}`` for the questions agreement applies to.

    Each question type says what its units and values are (:meth:`QuestionType.agreement_units`):
    one unit per item for categorical answers, one per (item, response) for ranks, the
    response length and marked spans for span marking.
    """
    out: dict[str, dict] = defaultdict(lambda: defaultdict(dict))
    for label, item, user in store.label_rows(project):
        if item.is_gold:
            continue
        texts = [r["text"] for r in item.responses]
        for q, ans in label.answers.items():
            for unit, value in Q.get(q).agreement_units(item.id, texts, ans):
                out[q][unit][user.name] = value
    return out


def agreement_for(question: str, units: Mapping) -> dict | None:
    """Agreement statistics of one question from ``{unit: {annotator: value}}`` (None: none apply)."""
    stats = Q.get(question).agreement(units)
    return None if stats is None else _clean(dict(stats, question=question))


def project_stats(store: Store, project: str) -> dict:
    """Progress, agreement per question, and per-annotator figures (labels, time, gold)."""
    p = store.project(project)
    rows = store.label_rows(project)
    annotators: dict[str, dict] = defaultdict(lambda: {"labels": 0, "times": [], "gold_right": 0,
                                                       "gold_n": 0, "source": None})
    for label, item, user in rows:
        a = annotators[user.name]
        a["labels"] += 1
        a["source"] = user.source
        if label.time_ms is not None:
            a["times"].append(label.time_ms)
        if item.is_gold and item.gold:
            for q, gold in item.gold.items():
                ok = Q.get(q).gold_match(label.answers[q], gold)
                if ok is not None:
                    a["gold_n"] += 1
                    a["gold_right"] += int(ok)
    units = question_units(store, project)
    questions = [a for q in p.questions if q in units if (a := agreement_for(q, units[q]))]
    majority_by_user: dict[str, list] = defaultdict(list)
    for qres in questions:
        for who, s in qres.get("majority", {}).items():
            majority_by_user[who].append(s)
    people = []
    for name, a in sorted(annotators.items()):
        maj = majority_by_user.get(name, [])
        agree, n = sum(s["agree"] for s in maj), sum(s["n"] for s in maj)
        people.append({
            "annotator": name, "source": a["source"], "labels": a["labels"],
            "median_time_ms": int(median(a["times"])) if a["times"] else None,
            "majority_agreement": _clean(agree / n) if n else None, "majority_n": n,
            "gold_accuracy": _clean(a["gold_right"] / a["gold_n"]) if a["gold_n"] else None,
            "gold_n": a["gold_n"],
        })
    return {"project": project, "questions": p.questions, "progress": store.progress(project),
            "agreement": questions, "annotators": people, **project_reliability(store, project)}


def project_reliability(store: Store, project: str) -> dict:
    """Each annotator's estimated error rate and weight (``reliability``), from all labels and honeypots.

    See :mod:`rlhfkit.feedback.reliability`; ``reliability_error`` says why there is none when
    the labels cannot be read as records.
    """
    try:
        records = T.project_records(store, project, include_gold=True)
    except StoreError as err:  # a label stored before items were checked
        return {"reliability": [], "reliability_error": str(err)}
    return {"reliability": REL.reliability_table(REL.estimate_reliability(records))}


def arena_games(store: Store, project: str) -> list[AR.Game]:
    """Pairwise labels of a project as ``(model_a, model_b, outcome)`` games."""
    games = []
    for label, item, _user in store.label_rows(project):
        ans = label.answers.get("pairwise")
        if ans is None or item.is_gold:
            continue
        a, b = (r.get("model") for r in item.responses)
        if a is None or b is None:
            continue
        choice = ans["choice"]
        games.append((a, b, 1.0 if choice == 0 else 0.0 if choice == 1 else 0.5))
    return games


def arena_stats(store: Store, project: str, rounds: int = 200) -> dict:
    """Ratings with bootstrap intervals and the win/tie/lose table of a pairwise project."""
    games = arena_games(store, project)
    ratings = AR.bootstrap_ratings(games, rounds=rounds)
    table = AR.win_tie_lose(games)
    return {
        "games": len(games),
        "ratings": [{"model": m, **{k: round(v, 1) for k, v in r.items()}}
                    for m, r in sorted(ratings.items(), key=lambda kv: -kv[1]["rating"])],
        "table": [{"a": a, "b": b, "win": round(r["win"], 4), "tie": round(r["tie"], 4),
                   "lose": round(r["lose"], 4), "n": r["n"]} for (a, b), r in table.items()],
    }


def create_arena(store: Store, name: str, prompts: Sequence, responses: Mapping[str, Sequence[str]],
                 *, overlap: int = 1, guidelines: str = "") -> int:
    """A blind pairwise project comparing policies: one item per prompt and pair of models.

    Args:
        store: the store to create the project in.
        name: the project name.
        prompts: the prompts, in order.
        responses: ``{model name: responses, one per prompt}``.
        overlap: annotators per comparison.
        guidelines: shown to annotators (a default explains the blind setup).

    Returns:
        the number of items created.
    """
    models = sorted(responses)
    if len(models) < 2:
        raise StoreError("an arena needs responses from at least two models", 422)
    for m in models:
        if len(responses[m]) != len(prompts):
            raise StoreError(f"model {m!r} has {len(responses[m])} responses for {len(prompts)} prompts", 422)
    store.create_project(name, ["pairwise"], overlap=overlap, arena=True,
                         guidelines=guidelines or "Which response is better? The models are hidden "
                                                  "and their sides are shuffled.")
    items = []
    for i, prompt in enumerate(prompts):
        for a, b in combinations(models, 2):
            items.append({"prompt": prompt, "id": f"{i}:{a}:{b}",
                          "responses": [{"text": responses[a][i], "model": a},
                                        {"text": responses[b][i], "model": b}]})
    return store.add_items(name, items)
