"""Iterative RLHF on a tiny model: each round's reward model sees the previous policy's samples,
and a run stopped mid-round and resumed ends where an uninterrupted one does."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from rlhfkit.config import ConfigError
from rlhfkit.data.io import read_records
from rlhfkit.evaluate.runs import read_json, read_rounds
from rlhfkit.train import iterate
from rlhfkit.train.iterate import IterateConfig, run_iterate


def settings(policy, out, **kw):
    base = dict(model=str(policy), output_dir=str(out), rounds=2, prompts_per_round=8,
                rank_k=2, rm_steps=2, rl_steps=1, eval_prompts=4, max_new_tokens=4,
                precision="fp32", progress=False, generation_backend="hf", seed=1)
    base.update(kw)
    return IterateConfig(**base)


@pytest.fixture(scope="module")
def uninterrupted(tiny_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("iterate") / "run"
    return run_iterate(settings(tiny_lm, out)), out


def test_each_round_learns_from_the_policy_that_came_before(uninterrupted, tiny_lm):
    final, out = uninterrupted
    rounds = read_rounds(out)
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["policy"] == str(tiny_lm) and rounds[1]["policy"] == str(
        out / "round-1" / "rl" / "model")
    assert "rm/accuracy_on_new_samples" in rounds[1]  # round 1's RM judged round 2's samples
    second = read_records(out / "round-2" / "rm-data.jsonl")  # what round 2's RM trained on
    assert {r.meta["policy"] for r in second} == {rounds[0]["policy"], rounds[1]["policy"]}
    assert sum(r.meta["round"] == 1 for r in second) == 8
    for key in ("gold/lc_win_rate", "length/final", "distinct2/final", "kl/final",
                "gap/proxy_minus_gold"):
        assert key in rounds[1]
    summary = read_json(out, "summary.json")
    assert final == out / "round-2" / "rl" / "model" and summary["final_policy"] == str(final)
    assert 0.0 <= summary["rm/accuracy_on_final_policy"] <= 1.0


def test_a_run_stopped_mid_round_resumes_to_the_same_policy(uninterrupted, tiny_lm, tmp_path,
                                                            monkeypatch):
    final, _ = uninterrupted
    out = tmp_path / "run"
    real = iterate.run_rl_round
    calls = {"n": 0}

    def stop_in_round_two(cfg, policy, rm, folder, *rest):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the machine went away after round 2's reward model
        return real(cfg, policy, rm, folder, *rest)

    # In this process (the stand-in cannot cross to a fresh one), against the fixture's run of
    # each phase in a fresh process: the same policy either way.
    monkeypatch.setattr(iterate, "run_rl_round", stop_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        run_iterate(settings(tiny_lm, out, fresh_processes=False))
    monkeypatch.setattr(iterate, "run_rl_round", real)
    resumed = run_iterate(settings(tiny_lm, out, resume=True, fresh_processes=False))
    a, b = load_file(str(final / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert [row["round"] for row in read_rounds(out)] == [1, 2]


def test_bad_options_are_refused_before_anything_loads(tiny_lm, tmp_path):
    with pytest.raises(ConfigError, match="--rounds"):
        run_iterate(settings(tiny_lm, tmp_path / "a", rounds=0))
    with pytest.raises(ConfigError, match="--labeler"):
        run_iterate(settings(tiny_lm, tmp_path / "b", labeler="crowd"))


def test_people_in_the_app_rank_a_round(tiny_lm, tmp_path):
    """--labeler app: the round's items go to a project in the store, the stage waits for the
    labels, and the rankings it trains on are the person's (here a thread that prefers the
    longer response)."""
    import threading
    import time as clock

    from rlhfkit.feedback.store import Store, StoreError

    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(db)
    person = store.create_user("ann", "pw-for-ann", "annotator")
    stop = threading.Event()

    def label():  # round 1, then the final policy's samples (round 2)
        while not stop.is_set():
            for name in ("iterate-r1", "iterate-r2"):
                try:
                    task = store.next_task(person, name)
                except StoreError:  # the project is not there yet
                    continue
                if task is None:
                    continue
                lengths = [len(r) for r in task.responses]
                order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
                ranks = [order.index(i) + 1 for i in range(len(lengths))]
                store.submit(person, name, task.item_id, {"rank": {"ranks": ranks}},
                             task.submission_key)
            clock.sleep(0.1)

    worker = threading.Thread(target=label, daemon=True)
    worker.start()
    try:
        out = tmp_path / "run"
        run_iterate(settings(tiny_lm, out, rounds=1, prompts_per_round=4, labeler="app",
                             feedback_db=db))
    finally:
        stop.set()
        worker.join(timeout=10)
    rankings = read_records(out / "round-1" / "rankings.jsonl")
    assert len(rankings) == 4 and all(r.annotator == "ann" for r in rankings)
    for r in rankings:
        best = r.responses[r.ranks.index(min(r.ranks))]
        assert len(best) == max(len(x) for x in r.responses)


def test_the_labeler_ceiling_is_the_gold_scorers_agreement_with_the_labeler():
    from rlhfkit.data.records import Ranking
    from rlhfkit.train.iterate import labeler_ceiling

    def ranking(responses, ranks, gold):
        return Ranking(prompt="p", responses=responses, ranks=ranks, meta={"gold_scores": gold})

    rankings = [ranking(["a", "b", "c"], [0, 2, 1], [0.9, 0.1, 0.5]),  # 3 pairs, all agree
                ranking(["x", "y"], [0, 1], [0.3, 0.6]),  # the labeler took the worse one
                ranking(["p", "q"], [1, 0], [0.4, 0.4]),  # equal gold: one half
                ranking(["s", "t"], [0, 0], [0.2, 0.8])]  # the labeler's tie: left out
    assert labeler_ceiling(rankings) == pytest.approx((3 + 0 + 0.5) / 5)
    assert labeler_ceiling([Ranking(prompt="p", responses=["a", "b"], ranks=[0, 1])]) is None


def test_rm_accuracy_scores_each_response_once_and_agrees_with_pair_by_pair(uninterrupted):
    import torch

    from rlhfkit.data.chat import encode_pair
    from rlhfkit.evaluate.metrics import rm_accuracy
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward import RewardModel

    _, out = uninterrupted
    rm_path = out / "round-2" / "rm" / "model"
    rankings = read_records(out / "round-2" / "rankings.jsonl")
    tok = load_tokenizer(str(rm_path))
    rm = RewardModel.from_pretrained(str(rm_path), pad_token_id=tok.pad_token_id).eval()
    chosen, rejected = [], []
    with torch.no_grad():
        for c in (c for r in rankings for c in r.to_comparisons() if not c.tie):
            for response, into in ((c.chosen, chosen), (c.rejected, rejected)):
                ids = torch.tensor([encode_pair(tok, c.prompt, response, 256).input_ids])
                into.append(float(rm(ids, torch.ones_like(ids))[0]))
    expected = rm_accuracy(chosen, rejected)
    assert iterate.rm_accuracy_on(rm_path, rankings) == pytest.approx(expected, abs=1e-9)
