"""Annotator reliability: Dawid–Skene, Bradley–Terry with flips, and the weights they give.

Hand-checked where the EM has a closed form (every item a honeypot: one M step), and
recovery checks on simulated crowds with known flip rates.
"""

from __future__ import annotations

import math
import random

import pytest

from rlhfkit.data import records as R
from rlhfkit.feedback.reliability import (
    Reliability,
    dawid_skene,
    estimate_reliability,
    noisy_bradley_terry,
    record_weights,
    weight_records,
)


def test_dawid_skene_fully_supervised_by_hand():
    """Every item is a honeypot, so the posteriors are the gold classes and one M step is the fit.

    Gold [T, T, F, F]; A says [T, T, F, T], B says all four right; smoothing 0.5.
    priors: pi_T = (2 + .5) / (4 + 1) = .5 = pi_F.
    A: theta[T] = ((2 + .5)/3, .5/3) = (5/6, 1/6); theta[F] = (F: (1 + .5)/3, T: (1 + .5)/3) = (.5, .5).
       error = 1 - (.5 * 5/6 + .5 * .5) = 1 - 8/12 = 1/3.
    B: theta[T][T] = theta[F][F] = 5/6, error = 1/6.
    """
    gold = {0: True, 1: True, 2: False, 3: False}
    a = [True, True, False, True]
    labels = [(i, "A", v) for i, v in enumerate(a)] + [(i, "B", gold[i]) for i in range(4)]
    fit = dawid_skene(labels, gold=gold, classes=[False, True], smoothing=0.5)
    assert fit.priors == {False: pytest.approx(0.5), True: pytest.approx(0.5)}
    assert fit.confusion["A"][True] == {True: pytest.approx(5 / 6), False: pytest.approx(1 / 6)}
    assert fit.confusion["A"][False] == {True: pytest.approx(0.5), False: pytest.approx(0.5)}
    assert fit.error_rate["A"] == pytest.approx(1 / 3)
    assert fit.error_rate["B"] == pytest.approx(1 / 6)
    assert fit.posteriors[3] == {False: 1.0, True: 0.0}  # clamped, whatever A said


def test_dawid_skene_reads_an_honest_majority_the_right_way_round():
    """A and B always agree, C always says the opposite: C is the one in error (no gold at all)."""
    labels = []
    for i in range(20):
        truth = i % 3 == 0
        labels += [(i, "A", truth), (i, "B", truth), (i, "C", not truth)]
    fit = dawid_skene(labels, classes=[False, True])
    assert fit.error_rate["C"] > 0.9 and fit.error_rate["A"] < 0.1 and fit.error_rate["B"] < 0.1
    assert all(max(p.values()) > 0.99 for p in fit.posteriors.values())


FLIPS = {"a": 0.0, "b": 0.1, "c": 0.2, "d": 0.3, "e": 0.8}


def flipped(rng, who, counts):
    """Whether ``who`` flips this label; counts the flips actually drawn."""
    f = rng.random() < FLIPS[who]
    counts.setdefault(who, []).append(f)
    return f


def check_recovered(estimates, drawn):
    """Within .025 of the flip rate the sample actually has, and .05 of the nominal one."""
    for who, flip in FLIPS.items():
        empirical = sum(drawn[who]) / len(drawn[who])
        assert estimates[who] == pytest.approx(empirical, abs=0.025), (who, empirical, estimates)
        assert estimates[who] == pytest.approx(flip, abs=0.05), (who, flip, estimates)


def test_dawid_skene_recovers_flip_rates():
    rng, drawn = random.Random(0), {}
    labels = []
    for item in range(1500):
        truth = rng.random() < 0.6
        for who in rng.sample(sorted(FLIPS), 3):
            labels.append((item, who, truth != flipped(rng, who, drawn)))
    check_recovered(dawid_skene(labels, classes=[False, True]).error_rate, drawn)


def test_noisy_bt_fully_supervised_by_hand():
    """Every pair is a honeypot: eps_a = (wrong + .5) / (n + 1), and the scores solve
    d/dd [log s(d) - l2/2 (d^2/2)] = s(-d) - l2 d / 2 = 0 with s_1 = -s_2 = d/2.

    A judges 3 pairs, one the wrong way: eps = 1.5 / 4 = .375. B judges 2, both right:
    eps = .5 / 3 = 1/6. Each pair's d (l2 = 1) satisfies s(-d) = d / 2, i.e. d = 0.7388...
    """
    gold = [(g, "good", "bad") for g in range(3)]
    judgements = [(0, "A", "good", "bad"), (1, "A", "bad", "good"), (2, "A", "good", "bad"),
                  (0, "B", "good", "bad"), (1, "B", "good", "bad")]
    fit = noisy_bradley_terry(judgements, gold=gold, l2=1.0, smoothing=0.5)
    assert fit.flip_rate["A"] == pytest.approx(0.375)
    assert fit.flip_rate["B"] == pytest.approx(1 / 6)
    for g in range(3):
        d = fit.scores[g]["good"] - fit.scores[g]["bad"]
        assert 1 / (1 + math.exp(d)) == pytest.approx(d / 2, abs=1e-6)
        assert fit.scores[g]["good"] == pytest.approx(-fit.scores[g]["bad"])
        assert fit.posteriors[(g, "bad", "good")] == 0.0  # P(bad > good), clamped


def test_noisy_bt_recovers_flip_rates_from_pairs_and_rankings():
    rng, drawn_pairs, drawn_ranked = random.Random(1), {}, {}
    pairs, ranked = [], []
    for item in range(1500):
        for who in rng.sample(sorted(FLIPS), 3):
            win, lose = ("bad", "good") if flipped(rng, who, drawn_pairs) else ("good", "bad")
            pairs.append((item, who, win, lose))
    for item in range(500):  # rankings of 4: each pair of a ranking flipped independently
        for who in rng.sample(sorted(FLIPS), 3):
            for i in range(4):
                for j in range(i + 1, 4):
                    w, lo = (f"r{j}", f"r{i}") if flipped(rng, who, drawn_ranked) else (f"r{i}", f"r{j}")
                    ranked.append((item, who, w, lo))
    check_recovered(noisy_bradley_terry(pairs).flip_rate, drawn_pairs)
    check_recovered(noisy_bradley_terry(ranked).flip_rate, drawn_ranked)
    # with rankings the scores order the responses as the crowd's majority does
    fit = noisy_bradley_terry(ranked)
    s = fit.scores[0]
    assert s["r0"] > s["r1"] > s["r2"] > s["r3"]


def test_honeypots_break_the_symmetry_of_a_mostly_flipping_crowd():
    """Two of three annotators flip 90%: without gold the majority is read as the truth; five
    honeypots (of 300 items) turn it round."""
    rng = random.Random(2)
    flips = {"honest": 0.05, "x": 0.9, "y": 0.9}
    judgements = []
    for item in range(300):
        for who, f in flips.items():
            judgements.append((item, who, *(("good", "bad") if rng.random() >= f else ("bad", "good"))))
    blind = noisy_bradley_terry(judgements)
    assert blind.flip_rate["honest"] > 0.5
    guided = noisy_bradley_terry(judgements, gold=[(i, "good", "bad") for i in range(5)])
    assert guided.flip_rate["honest"] < 0.1 and guided.flip_rate["x"] > 0.8


def test_record_weights_by_hand():
    """weight = 1 - 2e; e >= .5 gives 0 (dropped); no estimate keeps 1; honeypots are dropped."""
    rel = {"good": {"preference": Reliability("good", "preference", 0.25, 40)},
           "bad": {"preference": Reliability("bad", "preference", 0.6, 40)},
           "thumbs": {"binary": Reliability("thumbs", "binary", 0.1, 40)}}
    c = lambda who, **kw: R.Comparison(prompt="p", chosen="a", rejected="b", annotator=who, **kw)  # noqa: E731
    records = [c("good"), c("bad"), c("nobody"), c("good", meta={"gold": True}),
               R.Ranking(prompt="q", responses=["x", "y", "z"], ranks=[0, 1, 2], annotator="good", id="r1"),
               R.BinaryFeedback(prompt="p", response="r", label=True, annotator="thumbs")]
    assert record_weights(records, rel) == [0.5, 0.0, 1.0, 0.0, 0.5, pytest.approx(0.8)]
    assert record_weights(records, rel, min_reliability=0.8)[0] == 0.0  # .75 < .8
    out = weight_records(records, rel)
    comparisons = [r for r in out if isinstance(r, R.Comparison)]
    # good's pair (.5), nobody's (1), and good's ranking as 3 pairs of 1/3 * .5 in one group
    assert [round(r.weight, 6) for r in comparisons] == [0.5, 1.0, 0.166667, 0.166667, 0.166667]
    assert {r.group for r in comparisons[2:]} == {"r1"}
    assert any(isinstance(r, R.BinaryFeedback) for r in out)  # kept (no weight field), not dropped
    kept = weight_records(records, rel, mode="filter", min_reliability=0.7)
    assert [r.annotator for r in kept] == ["good", "nobody", "good", "thumbs"]
    assert all(getattr(r, "weight", 1.0) == 1.0 for r in kept)


def test_estimate_reliability_from_exported_records_with_honeypots(sqlite_store):
    """Labels through the store; the export with include_gold carries the honeypots' answers."""
    from rlhfkit.feedback.transfer import project_records

    s = sqlite_store
    s.create_project("p", ["pairwise"], overlap=3, gold_every=4, items=[
        {"prompt": f"q{i}", "responses": [f"good {i}", f"bad {i}"]} for i in range(40)] + [
        {"prompt": f"gold {i}", "responses": [f"good g{i}", f"bad g{i}"], "gold": {"pairwise": {"choice": 0}}}
        for i in range(10)])
    rng = random.Random(3)
    for who, flip in (("ann", 0.0), ("bob", 0.1), ("eve", 0.9)):
        user = s.create_user(who, "password-123")
        while (t := s.next_task(user, "p")) is not None:
            good_left = t.responses[0].startswith("good")
            right = "left" if good_left else "right"
            wrong = "right" if good_left else "left"
            s.submit(user, "p", t.item_id, {"pairwise": {"choice": wrong if rng.random() < flip else right}},
                     t.submission_key)
    records = project_records(s, "p", include_gold=True)
    gold_records = [r for r in records if r.meta.get("gold")]
    assert gold_records and all(r.meta["gold_answer"]["chosen"].startswith("good") for r in gold_records)
    rel = estimate_reliability(records)
    assert {who: round(r["preference"].error_rate, 1) for who, r in rel.items()} == \
        {"ann": 0.0, "bob": 0.1, "eve": 0.9}
    assert all(r["preference"].gold_n > 0 for r in rel.values())
    assert rel["eve"]["preference"].gold_errors >= rel["eve"]["preference"].gold_n - 2
    # the training records: eve's dropped, honeypots dropped, the rest weighted
    train = weight_records(records, rel)
    assert {r.annotator for r in train} == {"ann", "bob"}
    assert not any(r.meta.get("gold") for r in train)


def test_reliability_on_the_admin_page_and_in_stats(app, store, admin):
    """Two honest annotators and one who always flips, through the API; the page shows it."""
    from conftest import Browserish

    items = [{"prompt": f"q{i}", "responses": [f"good {i}", f"bad {i}"]} for i in range(12)]
    r = admin.post_json("/api/projects", {"name": "rel", "questions": ["pairwise"], "overlap": 3,
                                          "items": items})
    assert r.status_code == 201
    for who in ("alice", "bob", "carol"):
        if who == "carol":
            store.create_user("carol", "correct-horse-1")
        c = Browserish(app, who)
        while (res := c.get("/api/projects/rel/next")).status_code == 200:
            t = res.json()
            good_left = t["responses"][0].startswith("good")
            choice = ("left" if good_left else "right") if who != "carol" else ("right" if good_left else "left")
            c.post_json(f"/api/projects/rel/items/{t['item_id']}/labels",
                        {"answers": {"pairwise": {"choice": choice}}, "submission_key": t["submission_key"]})
    rows = {r["annotator"]: r for r in admin.get("/api/projects/rel/stats").json()["reliability"]}
    assert rows["carol"]["error_rate"] > 0.8 and rows["carol"]["weight"] == 0.0
    assert rows["alice"]["error_rate"] < 0.1 and rows["alice"]["kind"] == "preference"
    page = admin.get("/admin/p/rel").text
    assert 'id="reliability"' in page and "noisy-bt" in page
