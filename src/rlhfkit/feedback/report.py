"""Project statistics for the admin page and API: agreement, annotators, honeypots, arena."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import combinations
from statistics import mean, median

from . import agreement as A
from . import arena as AR
from . import questions as Q
from .store import Store, StoreError


def _clean(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 4)


def question_units(store: Store, project: str) -> dict[str, dict]:
    """``{question: {unit: {annotator: value}}}`` for the questions agreement applies to.

    Ranks are split into one unit per (item, response) so that ordinal alpha compares the
    rank each annotator gave the same response. Span answers are ``(response length,
    ((start, end, category), ...))`` per annotator, for :func:`rlhfkit.feedback.agreement.span_alpha`.
    """
    out: dict[str, dict] = defaultdict(lambda: defaultdict(dict))
    for label, item, user in store.label_rows(project):
        if item.is_gold:
            continue
        for q, ans in label.answers.items():
            if q == "spans":
                spans = tuple((m["start"], m["end"], m["category"]) for m in ans["spans"])
                out[q][item.id][user.name] = (len(item.responses[0]["text"]), spans)
                continue
            value = Q.agreement_value(q, ans)
            if value is None:
                continue
            if q == "rank":
                for idx, r in enumerate(value):
                    out[q][(item.id, idx)][user.name] = r
            else:
                out[q][item.id][user.name] = value
    return out


def agreement_for(question: str, units: Mapping) -> dict:
    """Agreement statistics of one question from ``{unit: {annotator: value}}``."""
    per_unit = [list(row.values()) for row in units.values()]
    multi = [u for u in per_unit if len(u) >= 2]
    res: dict = {"question": question, "units": len(units), "units_multi": len(multi)}
    if question == "spans":
        return dict(res, cohen_kappa_mean=None, fleiss_kappa=None, **span_agreement(units))
    if question in ("binary", "pairwise"):
        res["krippendorff_alpha_nominal"] = _clean(A.krippendorff_alpha(per_unit, level="nominal"))
    if question in ("likert", "rank"):
        res["krippendorff_alpha_ordinal"] = _clean(A.krippendorff_alpha(per_unit, level="ordinal"))
        res["krippendorff_alpha_interval"] = _clean(A.krippendorff_alpha(per_unit, level="interval"))
    if question != "rank":
        if multi:  # Fleiss needs the same number of labels per item: use the commonest count
            n = max({len(u) for u in multi}, key=lambda c: sum(len(u) == c for u in multi))
            res["fleiss_kappa"] = _clean(A.fleiss_kappa([u for u in multi if len(u) == n]))
            res["fleiss_items"] = sum(len(u) == n for u in multi)
        weights = "quadratic" if question == "likert" else None
        cats = list(range(1, 8)) if question == "likert" else None
        pairs = A.pairwise_cohen(units, weights=weights, categories=cats)
        kappas = [k for k in pairs.values() if not math.isnan(k)]
        res["cohen_kappa_mean"] = _clean(mean(kappas)) if kappas else None
        res["cohen_kappa_pairs"] = [{"a": a, "b": b, "kappa": _clean(k)} for (a, b), k in pairs.items()]
    if question in ("binary", "pairwise", "likert"):
        res["majority"] = {who: {"agree": s["agree"], "n": s["n"], "rate": _clean(s["rate"])}
                           for who, s in A.majority_agreement(units).items()}
    return res


def span_agreement(units: Mapping) -> dict:
    """Per-character nominal alpha of span marks, over all categories and per category.

    Args:
        units: ``{item: {annotator: (response length, spans)}}`` as :func:`question_units`
            builds it.
    """
    responses = []
    for row in units.values():
        lengths = {length for length, _ in row.values()}
        responses.append((lengths.pop(), {who: spans for who, (_, spans) in row.items()}))
    categories = sorted({c for _, marks in responses for spans in marks.values() for *_, c in spans})
    return {
        "krippendorff_alpha_nominal": _clean(A.span_alpha(responses)),
        "alpha_by_category": {c: _clean(A.span_alpha(responses, category=c)) for c in categories},
        "characters": sum(length for length, marks in responses if len(marks) >= 2),
    }


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
                ok = Q.answers_match(q, label.answers[q], gold)
                if ok is not None:
                    a["gold_n"] += 1
                    a["gold_right"] += int(ok)
    units = question_units(store, project)
    questions = [agreement_for(q, units[q]) for q in p.questions if q in units]
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
            "agreement": questions, "annotators": people}


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
