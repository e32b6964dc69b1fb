"""Micro-batches in the one RL loop: the gradient of a mini-batch does not depend on the cut.

For every built-in policy loss (PPO with its value loss, with and without PPO-ptx, REINFORCE
with a learned baseline, RLOO, GRPO under each ``--loss-type``, GSPO, online DPO under each
pairwise ``--loss`` and reference), one rollout of a tiny policy is scored,
its advantages computed, and the mini-batch's gradient accumulated three ways: the whole
mini-batch in one forward, ``--micro-batch-size 3`` (uneven chunks: 3 + 3 + 2), and
``--micro-batch-tokens`` (dynamic micro-batches trimmed to their own width). The entropy bonus
is on, so its token mean is checked too. In fp32 the gradients agree to 1e-6.

The reference, old-policy and value passes use the same micro-batches: their log-probs and
values agree with the whole-batch pass to 1e-6 as well.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlhfkit.train.algorithms import get_algorithm
from rlhfkit.train.trainer import (
    accumulate_gradients,
    advantages_of,
    ptx_batch,
    ptx_items,
    rl_config,
    update_plan,
)

CASES = {  # one run each; the variants change only options the loss reads
    "ppo": ("ppo", {"ptx_coef": 0.5}, [{}, {"ptx_coef": 0.0}]),
    "reinforce-value": ("reinforce", {"baseline": "value", "num_samples": 2, "batch_size": 4},
                        [{}]),
    "rloo": ("rloo", {}, [{}]),
    "grpo": ("grpo", {}, [{"loss_type": t} for t in ("bnpo", "grpo", "dr_grpo", "dapo")]
             + [{"importance_level": "sequence"}]),
    # 4 groups of 3: a micro-batch holds whole groups (the pair of each)
    "online-dpo": ("online-dpo", {"num_samples": 3, "batch_size": 4, "mini_batch_size": 12},
                   [{"loss": loss} for loss in ("dpo", "ipo", "unlikelihood")]
                   + [{"ref_policy": "previous"}]),
}


def setup_run(name, good_bad_policy, tmp_path):
    from good_bad import SYSTEM, demos_of, good_share

    algo_name, extra, _ = CASES[name]
    if "ptx_coef" in extra:
        extra = {**extra, "ptx_data": str(demos_of(good_bad_policy))}
    options = dict(model=str(good_bad_policy), output_dir=str(tmp_path / name), max_steps=1,
                   batch_size=2, num_samples=4, max_new_tokens=8, precision="fp32",
                   progress=False, eval_prompts=0, kl_coef=0.05, entropy_coef=0.01,
                   system_prompt=SYSTEM, report_to="none", gradient_checkpointing=False,
                   reward_clip=0.0, mini_batch_size=8, update_epochs=2)  # reused: clipped ratio
    options.update(extra)
    cfg = rl_config(algo_name, **options)
    algo = get_algorithm(cfg.algo)
    run = algo.run_type()(cfg, algo.name, value=algo.value(cfg), reward_fn=good_share,
                          samples_per_prompt=cfg.num_samples, updates_per_step=1)
    rollout = run.train_rollout(0)
    # Move the weights a little from those that sampled, so the ratio is not exactly 1 and the
    # clipped surrogate and value clipping have something to do.
    with torch.no_grad():
        for p in run.model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    terms, _ = run.score(rollout)
    advantages_of(algo, run, rollout, terms)
    return cfg, algo, run, rollout


def gradients(algo, run, rollout, cfg, **micro):
    run.cfg = dataclasses.replace(cfg, **micro)
    run.run.optimizer.zero_grad(set_to_none=True)
    items = ptx_items(run, cfg) if cfg.ptx_coef else []
    import random

    ptx = ptx_batch(run, items, random.Random(0), 8)
    metrics = accumulate_gradients(algo, run, rollout, None, update_plan(run.cfg), 40.0, ptx)
    grads = {n: p.grad.detach().clone() for n, p in run.model.named_parameters()
             if p.grad is not None}
    run.cfg = cfg
    return grads, metrics


@pytest.mark.parametrize("name", list(CASES))
def test_micro_batches_give_the_gradient_of_the_whole_mini_batch(name, good_bad_policy,
                                                                  tmp_path):
    base, algo, run, rollout = setup_run(name, good_bad_policy, tmp_path)
    lengths = rollout.attention_mask.sum(-1)
    budget = int(lengths.sort().values[:3].sum())  # about three sequences a micro-batch
    plans = {"size": {"micro_batch_size": 3}, "tokens": {"micro_batch_tokens": budget},
             "packed": {"micro_batch_size": 3, "pack_micro_batches": True}}
    for variant in CASES[name][2]:
        cfg = dataclasses.replace(base, **variant)
        whole, m_whole = gradients(algo, run, rollout, cfg)
        assert whole and any(g.abs().sum() > 0 for g in whole.values())
        for how, micro in plans.items():
            run.cfg = dataclasses.replace(cfg, **micro)
            assert len(run.micro_batches(rollout)) >= 3, how  # the batch really is cut
            grads, metrics = gradients(algo, run, rollout, cfg, **micro)
            assert grads.keys() == whole.keys()
            for key, g in grads.items():
                torch.testing.assert_close(g, whole[key], atol=1e-6, rtol=1e-5,
                                           msg=f"{name} {variant}, {how}: {key}")
            for key in ("loss/total", "loss/policy", "policy/entropy"):
                # fp32 sums in another order: 1e-6 absolute, or relative where a loss is large
                # (IPO's squared margin reaches 25 here, whose ulp is 2e-6)
                assert float(metrics[key]) == pytest.approx(float(m_whole[key]), abs=1e-6,
                                                            rel=1e-6), (variant, how, key)


def test_scoring_passes_in_micro_batches_match_the_whole_batch(good_bad_policy, tmp_path):
    """Old log-probs, values (a value head) and reference log-probs, cut by tokens and trimmed
    to each micro-batch's width, equal those of the usual chunks of 16."""
    cfg, algo, run, rollout = setup_run("reinforce-value", good_bad_policy, tmp_path)
    whole = run.score_rollout(rollout.select(range(len(rollout))))
    run.cfg = dataclasses.replace(cfg, micro_batch_tokens=int(rollout.attention_mask.sum(-1)
                                                              .max()))
    cut = run.score_rollout(rollout.select(range(len(rollout))))
    assert len(run.micro_batches(rollout)) > 1
    run.cfg = dataclasses.replace(cfg, micro_batch_size=5, pack_micro_batches=True)
    packed = run.score_rollout(rollout.select(range(len(rollout))))
    for other in (cut, packed):
        for key in ("logprobs", "ref_logprobs"):
            torch.testing.assert_close(getattr(other, key), getattr(whole, key), atol=1e-6,
                                       rtol=1e-5)
        torch.testing.assert_close(other.extras["values"], whole.extras["values"], atol=1e-6,
                                   rtol=1e-5)


def test_a_packed_micro_batch_has_no_padding_and_scores_as_padded(good_bad_policy, tmp_path):
    """``--pack-micro-batches``: the rows' real tokens back to back in one row, positions
    restarting per sequence, no attention mask; a critic (a reward model's body and head)
    gives the same values at the same targets as on the padded rows."""
    from rlhfkit.models.reward import RewardModel
    from rlhfkit.train.rl import Critic

    _, _, _, rollout = setup_run("rloo", good_bad_policy, tmp_path)
    assert not bool(rollout.attention_mask.all())  # the padded rows do hold padding
    packed = dataclasses.replace(rollout, packed=True)
    ids, mask, targets, positions = packed.model_inputs()
    assert mask is None and ids.shape == (1, int(rollout.attention_mask.sum()))
    assert int(targets.sum()) == int(rollout.response_mask.sum())
    starts = (positions[0] == 0).nonzero().flatten().tolist()
    assert len(starts) == len(rollout)  # one sequence per row, each from position 0
    critic = Critic(RewardModel.from_pretrained(str(good_bad_policy))).eval()
    with torch.no_grad():
        torch.testing.assert_close(critic(*packed.model_inputs()),
                                   critic(*rollout.model_inputs()), atol=1e-5, rtol=1e-5)


def test_a_trimmed_micro_batch_keeps_every_real_token(good_bad_policy, tmp_path):
    _, _, _, rollout = setup_run("rloo", good_bad_policy, tmp_path)
    lengths = rollout.response_mask.sum(-1)
    rows = [int(lengths.argmin())]
    sub = rollout.select(rows)
    cut = sub.trimmed()
    assert cut.input_ids.shape[1] < sub.input_ids.shape[1]
    assert int(cut.attention_mask.sum()) == int(sub.attention_mask.sum())
    assert int(cut.response_mask.sum()) == int(sub.response_mask.sum())
    assert cut.texts == sub.texts
    width = cut.response_mask.shape[1]
    torch.testing.assert_close(cut.extras["advantages"], sub.extras["advantages"][:, :width])


def test_no_cut_of_online_dpo_s_batch_separates_a_pair(good_bad_policy, tmp_path):
    """Micro-batches by size (smaller than a group, or between groups), by tokens, and shuffled
    mini-batches: every part is whole groups of 3, each group's rows together and in order."""
    from rlhfkit.train.microbatch import shuffled_groups

    cfg, algo, run, rollout = setup_run("online-dpo", good_bad_policy, tmp_path)
    signs = rollout.extras["advantages"].sum(-1).sign().view(-1, 3)
    assert ((signs == 1).sum(-1) == (signs == -1).sum(-1)).all()
    assert int((signs == 1).sum()) >= 2  # the batch has pairs to keep together

    def whole_groups(part):
        groups = [part[i:i + 3] for i in range(0, len(part), 3)]
        return len(part) % 3 == 0 and all(g == list(range(g[0], g[0] + 3)) and g[0] % 3 == 0
                                          for g in groups)

    lengths = rollout.attention_mask.sum(-1)
    for micro in ({"micro_batch_size": 1}, {"micro_batch_size": 4}, {"micro_batch_size": 7},
                  {"micro_batch_tokens": int(lengths.max())}):
        run.cfg = dataclasses.replace(cfg, **micro)
        plan = run.micro_batches(rollout, same_count=True, group=3)
        assert sorted(i for part in plan for i in part) == list(range(12)), micro
        assert len(plan) > 1 and all(whole_groups(part) for part in plan), (micro, plan)
    run.cfg = cfg
    torch.manual_seed(0)
    perm = shuffled_groups(12, 3)
    assert perm != list(range(12)) and sorted(perm) == list(range(12))
    assert all(whole_groups(sorted(perm[i:i + 6])) for i in (0, 6))
