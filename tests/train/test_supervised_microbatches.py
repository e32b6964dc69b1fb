"""``--micro-batch-tokens`` in the supervised stages: the step's items re-cut by tokens give the
same losses, gradient norms and weights as the fixed ``--batch-size x --grad-accum`` cut.

KTO is the exception by design: its reference point z0 is estimated from the mismatched pairs
of each micro-batch (as TRL's KTOTrainer does per batch), so another cut gives another z0; the
test checks only that the cut ran and trained the same steps.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.data.io import write_records
from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.tasks import get_task
from rlhfkit.train import loop as looplib
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.rm import RMConfig, train_rm
from rlhfkit.train.sft import SFTConfig, train_sft

pytestmark = pytest.mark.usefixtures("one_thread")

STAGES = {  # stage: (config, train, its loss key, extra options)
    "sft": (SFTConfig, train_sft, "loss/sft", {}),
    "rm": (RMConfig, train_rm, "loss/rm", {}),
    "dpo": (DPOConfig, train_dpo, "loss/dpo", {"loss": "dpo"}),
    "kto": (DPOConfig, train_dpo, "loss/kto", {"loss": "kto"}),
}


def weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_micro_batches_by_tokens_train_as_the_fixed_cut(stage, tiny_lm, tmp_path, monkeypatch):
    make, train, key, extra = STAGES[stage]
    plans = []
    real = looplib.plan_by_tokens

    def spy(lengths, budget, world=1):
        plan = real(lengths, budget, world)
        plans.append((list(lengths), plan))
        return plan

    monkeypatch.setattr(looplib, "plan_by_tokens", spy)

    data = "task:reviews"  # SFT: the task's demonstrations
    if stage != "sft":  # 16 rankings of 3 (the task's own are many; DPO scores them all first)
        data = str(tmp_path / "rankings.jsonl")
        write_records(get_task("reviews", n_demos=0, n_ranked=16, k=3).rankings(), data)

    def run(name, **kw):
        cfg = make(model=str(tiny_lm), data=data, output_dir=str(tmp_path / name), max_steps=3,
                   batch_size=4, grad_accum=2, learning_rate=1e-3, warmup_ratio=0.0,
                   progress=False, precision="fp32", eval_fraction=0.0, report_to="none", seed=3,
                   **extra, **kw)
        return train(cfg), read_metrics(tmp_path / name)

    fixed_out, fixed = run("fixed")
    assert not plans
    budget = 90
    cut_out, cut = run("cut", micro_batch_tokens=budget)
    # The budget cut differently from 2 x 4: some step ran another number of forwards, and no
    # micro-batch of two or more items went over the budget.
    assert len(plans) == 3
    assert any(p.num_micro_batches != 2 for _, p in plans), [p.num_micro_batches for _, p in plans]
    for lengths, p in plans:
        assert sorted(i for mb in p.rank(0) for i in mb) == list(range(8))
        assert all(len(mb) < 2 or sum(lengths[i] for i in mb) <= budget for mb in p.rank(0))
    if stage == "kto":  # z0 per micro-batch: the same steps, near but not equal losses
        assert len(fixed) == len(cut) == 3
        assert all(0 < b[key] < 2 * a[key] and b["kto/kl"] >= 0 for a, b in zip(fixed, cut))
        return
    for a, b in zip(fixed, cut, strict=True):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5, abs=1e-6)
    wa, wb = weights(fixed_out), weights(cut_out)
    assert wa.keys() == wb.keys()
    # Adam moves each weight by about the learning rate (1e-3) a step whatever the gradient's
    # size, so a gradient near 0 that differs in its last bits moves its weight a little
    # differently (seen: 1.5e-5 for the reward model, 1.5% of one step); a cut that changed the
    # gradient would move weights by steps.
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 5e-5


def test_an_empty_micro_batch_changes_nothing(tiny_lm, tmp_path, monkeypatch):
    """A process with fewer items than the others runs an empty micro-batch as a one-item
    forward and backward times zero (each backward is a collective): its weights come out as
    without it."""
    from rlhfkit.train.microbatch import MicroBatchPlan

    real = looplib.plan_by_tokens
    padded = []

    def with_an_empty_one(lengths, budget, world=1):
        plan = real(lengths, budget, world)
        padded.append(True)
        return MicroBatchPlan([[*plan.rank(0), []]], [[*plan.tokens[0], 0]], budget)

    def run(name, **kw):
        return train_sft(SFTConfig(model=str(tiny_lm), output_dir=str(tmp_path / name),
                                   max_steps=2, batch_size=4, grad_accum=2, learning_rate=1e-3,
                                   warmup_ratio=0.0, progress=False, precision="fp32",
                                   eval_fraction=0.0, report_to="none", **kw))

    plain = run("plain", micro_batch_tokens=100_000)
    monkeypatch.setattr(looplib, "plan_by_tokens", with_an_empty_one)
    padded_out = run("padded", micro_batch_tokens=100_000)
    assert len(padded) == 2
    wa, wb = weights(plain), weights(padded_out)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) == 0.0
    for a, b in zip(read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "padded")):
        assert a["loss/sft"] == b["loss/sft"]
