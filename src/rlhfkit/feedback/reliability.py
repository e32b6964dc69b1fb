"""How far each annotator can be trusted, estimated from honeypots and agreement, as weights.

Two latent-truth models, both fitted by EM, both pure functions of plain values:

* :func:`dawid_skene` for categorical answers (👍/👎, Likert 1..7): each item has an unknown
  true class ``z`` with prior ``pi``; annotator ``a`` reports class ``l`` for true class ``k``
  with probability ``theta_a[k, l]`` (Dawid & Skene 1979, "Maximum likelihood estimation of
  observer error-rates using the EM algorithm", eq. 2.4-2.5). An annotator's *error rate*
  is ``1 - sum_k pi_k theta_a[k, k]``: for one who reports the truth and then flips it with
  probability ``f``, exactly ``f``.
* :func:`noisy_bradley_terry` for comparisons and rankings: each response ``i`` of an item has
  a score ``s_i``; for each pair the truer order ``z`` follows Bradley–Terry,
  ``P(i > j) = sigmoid(s_i - s_j)`` (Bradley & Terry 1952), and annotator ``a`` reports it,
  or its opposite with probability ``eps_a`` (a per-annotator flip rate; the "noisy
  annotator" extension of BT, cf. Chen et al. 2013, "Pairwise ranking aggregation in a
  crowdsourced setting"). With rankings the scores tie an item's pairs together.

Honeypots clamp the truth of their items (semi-supervised EM), so a few gold items anchor
the estimates and break the symmetry an all-flipping crowd would leave. Both models start
from the majority vote, so a crowd whose majority is honest is read the right way round.

:func:`estimate_reliability` reads exported records (with ``include_gold=True`` honeypots
count), :func:`record_weights` turns the estimates into a weight per record, and
:func:`weight_records` applies them: a label from an annotator with error rate ``e`` carries a
share ``1 - 2e`` of signal (its expected gradient in a logistic loss is the clean one times
``1 - 2e``), so that is its weight; at ``e >= 1/2`` it carries none and is dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from ..data import records as R

UNKNOWN = "(unknown)"
"""The annotator of records that name none."""
KIND_OF = {"comparison": "preference", "ranking": "preference", "binary": "binary", "score": "likert"}
"""Which estimate a record kind is weighted by."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


# ---------------------------------------------------------------------------------------------
# Dawid-Skene


@dataclass
class DawidSkene:
    """A fitted Dawid–Skene model.

    Attributes:
        classes: the classes, in a fixed order.
        priors: ``{class: pi}``.
        confusion: ``{annotator: {true class: {reported class: probability}}}``.
        posteriors: ``{item: {class: P(true class | all labels)}}``.
        error_rate: ``{annotator: 1 - sum_k pi_k theta[k, k]}``.
        counts: ``{annotator: labels given}``.
        iterations: EM iterations run.
    """

    classes: list
    priors: dict
    confusion: dict
    posteriors: dict
    error_rate: dict
    counts: dict
    iterations: int


def dawid_skene(labels: Sequence[tuple[Hashable, str, Hashable]], *,
                gold: Mapping[Hashable, Hashable] | None = None,
                classes: Sequence[Hashable] | None = None, smoothing: float = 0.5,
                max_iter: int = 200, tol: float = 1e-9) -> DawidSkene:
    """Fit Dawid–Skene to ``(item, annotator, class)`` labels by EM.

    Args:
        labels: one triple per label.
        gold: known true classes of some items (honeypots); their posteriors stay clamped.
        classes: every class (default: those that occur, sorted).
        smoothing: Dirichlet pseudo-count added to every confusion cell and prior.
        max_iter: most EM iterations.
        tol: stop when no posterior moves by more than this.
    """
    gold = dict(gold or {})
    classes = list(classes) if classes is not None else sorted({c for *_, c in labels} | set(gold.values()))
    if not labels or not classes:
        return DawidSkene(classes, {}, {}, {}, {}, {}, 0)
    ci = {c: k for k, c in enumerate(classes)}
    items = sorted({i for i, _, _ in labels} | set(gold), key=repr)
    people = sorted({a for _, a, _ in labels})
    ii, ai = {x: n for n, x in enumerate(items)}, {x: n for n, x in enumerate(people)}
    item_idx = np.array([ii[i] for i, _, _ in labels])
    ann_idx = np.array([ai[a] for _, a, _ in labels])
    said = np.array([ci[c] for _, _, c in labels])
    n_items, n_ann, n_cls = len(items), len(people), len(classes)
    clamp = np.zeros(n_items, dtype=bool)
    clamped = np.zeros((n_items, n_cls))
    for i, c in gold.items():
        clamp[ii[i]], clamped[ii[i], ci[c]] = True, 1.0
    # start: each item's votes, weighed by the annotator's honeypot accuracy when they met
    # honeypots (log-odds of being right), else counted once each
    hit = np.array([clamp[i] for i in item_idx.tolist()])
    right = np.array([clamp[i] and clamped[i, c] == 1.0 for i, c in zip(item_idx.tolist(), said.tolist())])
    n_gold = np.bincount(ann_idx, hit.astype(float), n_ann)
    acc = (np.bincount(ann_idx, right.astype(float), n_ann) + smoothing) / (n_gold + 2 * smoothing)
    weight = np.where(n_gold > 0, np.log(acc * (n_cls - 1)) - np.log1p(-acc), 1.0)
    votes = np.zeros((n_items, n_cls))
    np.add.at(votes, (item_idx, said), weight[ann_idx])
    post = np.exp(np.clip(votes, -8, 8))
    post /= post.sum(1, keepdims=True)
    post[clamp] = clamped[clamp]
    iteration = 0
    while iteration < max_iter:
        iteration += 1
        # M: priors and confusion matrices from the soft truths
        prior = post.sum(0) + smoothing
        prior /= prior.sum()
        conf = np.full((n_ann, n_cls, n_cls), smoothing)  # [annotator, true, reported]
        np.add.at(conf, (ann_idx, slice(None), said), post[item_idx])
        conf /= conf.sum(2, keepdims=True)
        # E: posterior of each item's true class
        logp = np.tile(np.log(prior), (n_items, 1))
        np.add.at(logp, item_idx, np.log(conf[ann_idx, :, said]))
        new = np.exp(logp - logp.max(1, keepdims=True))
        new /= new.sum(1, keepdims=True)
        new[clamp] = clamped[clamp]
        moved = float(np.abs(new - post).max())
        post = new
        if moved < tol:
            break
    error = {a: float(1.0 - (prior * np.diag(conf[n])).sum()) for a, n in ai.items()}
    return DawidSkene(
        classes=classes, priors={c: float(prior[k]) for c, k in ci.items()},
        confusion={a: {t: {r: float(conf[n, ci[t], ci[r]]) for r in classes} for t in classes}
                   for a, n in ai.items()},
        posteriors={i: {c: float(post[n, ci[c]]) for c in classes} for i, n in ii.items()},
        error_rate=error, counts=dict(Counter(a for _, a, _ in labels)), iterations=iteration)


# ---------------------------------------------------------------------------------------------
# Bradley-Terry with per-annotator flips


@dataclass
class NoisyBT:
    """A fitted Bradley–Terry model with a flip rate per annotator.

    Attributes:
        scores: ``{group: {response: score}}`` (each group's scores sum to zero).
        flip_rate: ``{annotator: eps}``, the estimated probability of reporting the wrong order.
        posteriors: ``{(group, a, b): P(a better than b | all judgements)}`` for every judged pair.
        counts: ``{annotator: judgements given}``.
        iterations: EM iterations run.
    """

    scores: dict
    flip_rate: dict
    posteriors: dict
    counts: dict
    iterations: int


def noisy_bradley_terry(judgements: Sequence[tuple[Hashable, str, Hashable, Hashable]], *,
                        gold: Sequence[tuple[Hashable, Hashable, Hashable]] = (),
                        l2: float = 1.0, smoothing: float = 0.5, max_iter: int = 500,
                        tol: float = 1e-7, newton_steps: int = 2) -> NoisyBT:
    """Fit per-response scores and per-annotator flip rates to ``(group, annotator, winner, loser)``.

    EM over the true order ``z`` of every judged pair: the E step weighs the BT prior
    ``sigmoid(+-(s_i - s_j))`` against each annotator's ``1 - eps`` / ``eps``; the M step sets
    ``eps_a`` to the (smoothed) expected share of ``a``'s judgements that went against ``z``,
    and moves the scores by Newton steps on the expected BT log-likelihood with an L2 penalty
    ``l2 / 2 * sum s^2`` (which keeps a unanimous pair's scores finite).

    Args:
        judgements: one tuple per judgement (ties left out by the caller).
        gold: ``(group, better, worse)`` orders known to be true (honeypots); clamped.
        l2: strength of the Gaussian prior on the scores.
        smoothing: Beta pseudo-count added to each annotator's right and wrong judgements.
        max_iter: most EM iterations.
        tol: stop when no pair's posterior and no score moves by more than this.
        newton_steps: Newton steps on the scores per M step.
    """
    if not judgements:
        return NoisyBT({}, {}, {}, {}, 0)
    idx = _PairIndex(judgements, gold)
    pairs, people, pair_of, ann_of, sign = idx.pairs, idx.people, idx.pair_of, idx.ann_of, idx.sign
    gold_sign, resp, first, second, blocks = idx.gold_sign, idx.resp, idx.first, idx.second, idx.blocks
    n_pairs = len(pairs)
    scores = np.zeros(len(resp))
    clamp = np.zeros(n_pairs, dtype=bool)
    clamped = np.zeros(n_pairs)
    for p, s in gold_sign.items():
        clamp[p], clamped[p] = True, 1.0 if s > 0 else 0.0
    # start: each annotator's flip rate on the honeypots (20% without any), and every pair's
    # order as those rates weigh its votes (the majority, when nobody met a honeypot)
    on_gold = np.array([p in gold_sign for p in pair_of.tolist()])
    missed = np.array([on_gold[o] and sign[o] != gold_sign[pair_of[o]] for o in range(len(sign))])
    n_gold = np.bincount(ann_of, on_gold.astype(float), len(people))
    eps = np.where(n_gold > 0, (np.bincount(ann_of, missed.astype(float), len(people)) + smoothing)
                   / (n_gold + 2 * smoothing), 0.2)
    vote = np.log1p(-eps[ann_of]) - np.log(eps[ann_of])  # log-odds that a judgement is right
    votes = np.zeros(n_pairs)
    np.add.at(votes, pair_of, sign * vote)
    q = _sigmoid(np.clip(votes, -4, 4))
    q[clamp] = clamped[clamp]
    iteration = 0
    while iteration < max_iter:
        iteration += 1
        # M: flip rates
        wrong = np.where(sign > 0, 1.0 - q[pair_of], q[pair_of])
        eps = (np.bincount(ann_of, wrong, len(people)) + smoothing) / (
            np.bincount(ann_of, minlength=len(people)) + 2 * smoothing)
        eps = np.clip(eps, 1e-6, 1 - 1e-6)
        # M: scores (Newton on each group's block)
        before = scores
        for _ in range(newton_steps):
            scores = _newton_step(scores, first, second, q, l2, blocks)
        # E: the posterior of each pair's order
        d = scores[first] - scores[second]
        log_pos = -np.logaddexp(0.0, -d)  # log sigmoid(d)
        log_neg = -np.logaddexp(0.0, d)
        agree_pos = np.where(sign > 0, np.log1p(-eps[ann_of]), np.log(eps[ann_of]))
        agree_neg = np.where(sign > 0, np.log(eps[ann_of]), np.log1p(-eps[ann_of]))
        np.add.at(log_pos, pair_of, agree_pos)
        np.add.at(log_neg, pair_of, agree_neg)
        new = _sigmoid(log_pos - log_neg)
        new[clamp] = clamped[clamp]
        moved = max(float(np.abs(new - q).max()), float(np.abs(scores - before).max()))
        q = new
        if moved < tol:
            break
    by_group: dict = defaultdict(dict)
    for (g, r), n in resp.items():
        by_group[g][r] = float(scores[n])
    return NoisyBT(scores=dict(by_group), flip_rate={a: float(eps[n]) for n, a in enumerate(people)},
                   posteriors={k: float(q[p]) for k, p in pairs.items()},
                   counts=dict(Counter(j[1] for j in judgements)), iterations=iteration)


class _PairIndex:
    """The judged pairs of :func:`noisy_bradley_terry` as arrays.

    Each unordered pair ``(group, a, b)`` (``a < b`` by repr) gets an index; each judgement
    its pair, annotator and ``sign`` (+1: ``a`` won); each response of a group an index into
    one score vector, ``first``/``second`` the responses of each pair, ``blocks`` each group's.
    """

    def __init__(self, judgements, gold):
        self.pairs: dict[tuple, int] = {}
        self.people = sorted({j[1] for j in judgements})
        ai = {a: n for n, a in enumerate(self.people)}
        pair_of, ann_of, sign = [], [], []
        for g, who, win, lose in judgements:
            p, s = self.key(g, win, lose)
            pair_of.append(p)
            ann_of.append(ai[who])
            sign.append(s)
        self.gold_sign = dict(self.key(g, win, lose) for g, win, lose in gold)
        self.pair_of, self.ann_of, self.sign = np.array(pair_of), np.array(ann_of), np.array(sign)
        self.resp: dict[tuple, int] = {}
        for (g, a, b) in self.pairs:
            self.resp.setdefault((g, a), len(self.resp))
            self.resp.setdefault((g, b), len(self.resp))
        self.first = np.array([self.resp[(g, a)] for (g, a, b) in self.pairs])
        self.second = np.array([self.resp[(g, b)] for (g, a, b) in self.pairs])
        self.blocks: dict = defaultdict(list)
        for (g, _response), n in self.resp.items():
            self.blocks[g].append(n)

    def key(self, g, x, y) -> tuple[int, float]:
        """The pair's index, and +1 if ``x`` is its first response (else -1)."""
        a, b = (x, y) if repr(x) < repr(y) else (y, x)
        return self.pairs.setdefault((g, a, b), len(self.pairs)), 1.0 if a == x else -1.0


def _newton_step(scores: np.ndarray, first: np.ndarray, second: np.ndarray, q: np.ndarray,
                 l2: float, blocks: Mapping[Any, list[int]]) -> np.ndarray:
    """One Newton step on ``sum_p q log s(d) + (1-q) log s(-d) - l2/2 |s|^2``, block by block.

    The Hessian is block diagonal, one block per group: ``-(l2 I + sum_p c_p (e_i - e_j)(e_i - e_j)^T)``
    with ``c_p = s(d_p) (1 - s(d_p))``. A group of two responses judged as one pair has the
    closed-form step ``(g_a - g_b) / (l2 + 2 c)`` on their difference and ``(g_a + g_b) / (2 l2)``
    on their mean; larger groups solve their block.
    """
    d = scores[first] - scores[second]
    p = _sigmoid(d)
    resid = q - p  # d/dd of the expected log-likelihood
    grad = -l2 * scores
    np.add.at(grad, first, resid)
    np.add.at(grad, second, -resid)
    curv = np.zeros(len(scores))  # c summed per pair (the pair's only block entry when K = 2)
    np.add.at(curv, first, p * (1 - p))
    new = scores.copy()
    small = [idx for idx in blocks.values() if len(idx) == 2]
    if small:
        a, b = np.array(small).T
        c = np.maximum(curv[a], curv[b])  # the one pair's c, whichever response came first
        diff = (grad[a] - grad[b]) / (l2 + 2 * c)
        mean = (grad[a] + grad[b]) / (2 * l2)
        new[a], new[b] = scores[a] + mean + diff / 2, scores[b] + mean - diff / 2
    large = [idx for idx in blocks.values() if len(idx) > 2]
    if large:
        where = {n: (g, x) for g, idx in enumerate(large) for x, n in enumerate(idx)}
        hess = [np.eye(len(idx)) * l2 for idx in large]
        for i, j, c in zip(first.tolist(), second.tolist(), (p * (1 - p)).tolist()):
            if i in where:
                g, x = where[i]
                y = where[j][1]
                h = hess[g]
                h[x, x] += c
                h[y, y] += c
                h[x, y] -= c
                h[y, x] -= c
        for idx, h in zip(large, hess):
            new[idx] = scores[idx] + np.linalg.solve(h, grad[idx])
    return new


# ---------------------------------------------------------------------------------------------
# From records to estimates to weights


@dataclass
class Reliability:
    """One annotator's estimated reliability for one kind of judgement.

    Attributes:
        annotator: the annotator.
        kind: ``preference`` (comparisons and rankings), ``binary`` or ``likert``.
        error_rate: estimated probability that a label goes against the truth (the flip rate).
        n: labels (pairwise judgements, for preferences) the estimate rests on.
        gold_n: of those, on honeypots.
        gold_errors: honeypot labels that went against the gold answer.
        method: ``noisy-bt`` or ``dawid-skene``.
    """

    annotator: str
    kind: str
    error_rate: float
    n: int
    gold_n: int = 0
    gold_errors: int = 0
    method: str = ""

    @property
    def reliability(self) -> float:
        """``1 - error_rate``: the estimated share of labels that agree with the truth."""
        return 1.0 - self.error_rate

    @property
    def weight(self) -> float:
        """``max(0, 1 - 2 * error_rate)``: the share of signal in one of its labels."""
        return max(0.0, 1.0 - 2.0 * self.error_rate)


def item_key(r: R.Record) -> Hashable:
    """What identifies a record's item: the store's item id, else the prompt and responses."""
    if r.meta.get("item_id") is not None:
        return ("item", r.meta.get("project"), r.meta["item_id"])
    prompt = r.prompt if isinstance(r.prompt, str) else repr(r.prompt)
    if isinstance(r, R.Comparison):
        return ("text", prompt, tuple(sorted((r.chosen, r.rejected))))
    if isinstance(r, R.Ranking):
        return ("text", prompt, tuple(sorted(r.responses)))
    return ("text", prompt, getattr(r, "response", None))


def _ranking_pairs(responses: Sequence[str], ranks: Sequence[float], higher_better: bool = False):
    for i, j in combinations(range(len(responses)), 2):
        if ranks[i] != ranks[j]:
            better = (ranks[i] > ranks[j]) == higher_better
            yield (responses[i], responses[j]) if better else (responses[j], responses[i])


def judgements_from_records(records: Sequence[R.Record]) -> dict[str, dict]:
    """The observations each model reads, from exported records (honeypots' gold included).

    Returns:
        ``{"preference": {"judgements": [(group, annotator, winner, loser)], "gold": [(group,
        better, worse)]}, "binary": {"labels": [(item, annotator, bool)], "gold": {item: bool}},
        "likert": {...ints 1..7...}}``. Ties give no judgement.
    """
    out = {"preference": {"judgements": [], "gold": set()},
           "binary": {"labels": [], "gold": {}}, "likert": {"labels": [], "gold": {}}}
    for r in records:
        who, key, gold = r.annotator or UNKNOWN, item_key(r), r.meta.get("gold_answer")
        if isinstance(r, R.Comparison):
            if not r.tie:
                out["preference"]["judgements"].append((key, who, r.chosen, r.rejected))
            if isinstance(gold, dict) and "chosen" in gold:
                out["preference"]["gold"].add((key, gold["chosen"], gold["rejected"]))
        elif isinstance(r, R.Ranking):
            values = r.ranks if r.ranks is not None else r.scores
            for win, lose in _ranking_pairs(r.responses, values, higher_better=r.ranks is None):
                out["preference"]["judgements"].append((key, who, win, lose))
            if isinstance(gold, dict) and isinstance(gold.get("ranks"), list):
                out["preference"]["gold"].update((key, w, lo) for w, lo in _ranking_pairs(r.responses, gold["ranks"]))
        elif isinstance(r, R.BinaryFeedback):
            out["binary"]["labels"].append((key, who, bool(r.label)))
            if isinstance(gold, dict) and "label" in gold:
                out["binary"]["gold"][key] = bool(gold["label"])
        elif isinstance(r, R.ScoreFeedback) and float(r.score).is_integer() and 1 <= r.score <= 7:
            out["likert"]["labels"].append((key, who, int(r.score)))
            if isinstance(gold, dict) and "score" in gold:
                out["likert"]["gold"][key] = int(gold["score"])
    out["preference"]["gold"] = sorted(out["preference"]["gold"], key=repr)
    return out


def estimate_reliability(records: Sequence[R.Record]) -> dict[str, dict[str, Reliability]]:
    """Every annotator's reliability per kind of judgement, from exported records.

    Comparisons and rankings go to :func:`noisy_bradley_terry`, 👍/👎 and Likert scores to
    :func:`dawid_skene` (classes 1..7). Records of honeypots (``meta.gold_answer``, exported
    with ``include_gold``) clamp their items' truth.

    Returns:
        ``{annotator: {kind: Reliability}}``.
    """
    obs = judgements_from_records(records)
    out: dict[str, dict[str, Reliability]] = defaultdict(dict)
    pref = obs["preference"]
    if pref["judgements"]:
        fit = noisy_bradley_terry(pref["judgements"], gold=pref["gold"])
        truth = {(g, w, lo) for g, w, lo in pref["gold"]} | {(g, lo, w) for g, w, lo in pref["gold"]}
        for who, eps in fit.flip_rate.items():
            mine = [(g, w, lo) for g, a, w, lo in pref["judgements"] if a == who and (g, w, lo) in truth]
            gold_set = set(pref["gold"])
            out[who]["preference"] = Reliability(
                who, "preference", eps, fit.counts[who], gold_n=len(mine),
                gold_errors=sum(j not in gold_set for j in mine), method="noisy-bt")
    for kind, classes in (("binary", [False, True]), ("likert", list(range(1, 8)))):
        data = obs[kind]
        if not data["labels"]:
            continue
        fit = dawid_skene(data["labels"], gold=data["gold"], classes=classes)
        for who, err in fit.error_rate.items():
            on_gold = [(i, c) for i, a, c in data["labels"] if a == who and i in data["gold"]]
            out[who][kind] = Reliability(
                who, kind, err, fit.counts[who], gold_n=len(on_gold),
                gold_errors=sum(c != data["gold"][i] for i, c in on_gold), method="dawid-skene")
    return dict(out)


def record_weights(records: Sequence[R.Record], reliability: Mapping[str, Mapping[str, Reliability]],
                   *, min_reliability: float | None = None) -> list[float]:
    """One weight per record: ``1 - 2e`` of its annotator's error rate ``e`` for its kind.

    A record whose annotator or kind has no estimate keeps weight 1; honeypot records
    (``meta.gold``) and records whose annotator's reliability ``1 - e`` is below
    ``min_reliability`` get 0 (left out).
    """
    weights = []
    for r in records:
        if r.meta.get("gold"):
            weights.append(0.0)
            continue
        est = reliability.get(r.annotator or UNKNOWN, {}).get(KIND_OF.get(r.kind, ""))
        if est is None:
            weights.append(1.0)
        elif min_reliability is not None and est.reliability < min_reliability:
            weights.append(0.0)
        else:
            weights.append(est.weight)
    return weights


def weight_records(records: Sequence[R.Record], reliability: Mapping[str, Mapping[str, Reliability]],
                   *, mode: str = "weight", min_reliability: float | None = None) -> list[R.Record]:
    """Training records weighted (or filtered) by their annotators' reliability.

    Args:
        records: exported records (honeypots are left out of the result).
        reliability: from :func:`estimate_reliability`.
        mode: ``weight``: a comparison's ``weight`` is multiplied by :func:`record_weights`'s
            (a ranking becomes its C(K, 2) pairs, each ``1/C(K,2)`` times it, sharing the
            ranking's group), and records of weight 0 are dropped; ``filter``: records are
            kept unchanged or dropped (weight 0, or reliability below ``min_reliability``).
            👍/👎 and score records carry no weight field: in both modes they are kept or
            dropped.
        min_reliability: also drop the records of annotators whose reliability is below this.
    """
    if mode not in ("weight", "filter"):
        raise ValueError(f"mode must be 'weight' or 'filter', not {mode!r}")
    out: list[R.Record] = []
    for r, w in zip(records, record_weights(records, reliability, min_reliability=min_reliability)):
        if w <= 0.0:
            continue
        if mode == "filter" or not isinstance(r, R.Comparison | R.Ranking) or w == 1.0:
            out.append(r)
        elif isinstance(r, R.Comparison):
            out.append(_reweighted(r, r.weight * w))
        else:
            out.extend(_reweighted(c, c.weight * w) for c in r.to_comparisons())
    return out


def _reweighted(c: R.Comparison, weight: float) -> R.Comparison:
    d = c.to_dict()
    d["weight"] = weight
    return R.Comparison.from_dict(d)


def reliability_table(reliability: Mapping[str, Mapping[str, Reliability]]) -> list[dict]:
    """Rows for the admin page and the stats API: one per annotator and kind."""
    rows = []
    for who in sorted(reliability):
        for kind, est in sorted(reliability[who].items()):
            rows.append({"annotator": who, "kind": kind, "method": est.method,
                         "error_rate": round(est.error_rate, 4), "weight": round(est.weight, 4),
                         "n": est.n, "gold_n": est.gold_n, "gold_errors": est.gold_errors})
    return rows


