"""Your own RL algorithm, without editing rlhfkit: REINFORCE with a leave-one-out median baseline.

RLOO (Ahmadian et al. 2024) gives each of the k responses to a prompt the baseline "the mean
return of the other k - 1". The mean follows one lucky or unlucky sibling; the median of the
others does not, which can help when rewards have outliers (a reward model that now and then
scores one response far off). This file registers that estimator and an algorithm that pairs
it with rlhfkit's REINFORCE policy loss (``-A log pi``, PPO's clipped ratio once samples are
reused). Train with it::

    rlhfkit rl --algo py:examples/custom_algorithm.py:loo_median --reward-model runs/rm/model

The same string works in ``rlhfkit demo --algo``, ``rlhfkit iterate --algo`` and
``rlhfkit frontier --methods``. docs/custom-algorithm.md walks through it.
"""

from __future__ import annotations

import torch

from rlhfkit.train.algorithms import (
    AdvantageInputs,
    Advantages,
    register_advantage,
    register_algorithm,
)


def leave_one_out_median(returns: torch.Tensor) -> torch.Tensor:
    """(P, k) sequence returns -> (P, k) baselines: the median of each response's siblings.

    For k - 1 even, torch's median is the lower of the two middle values.
    """
    k = returns.shape[-1]
    others = torch.tensor([[j for j in range(k) if j != i] for i in range(k)])  # (k, k-1)
    return returns[:, others].median(dim=-1).values  # (P, k)


@register_advantage("loo_median")
def loo_median(batch: AdvantageInputs) -> Advantages:
    """Each response's return minus the median return of the other responses to its prompt.

    The return is the score minus beta times the sequence's KL to the reference
    (``batch.rewards`` holds both per token, as for RLOO), and every token of a response gets
    the same advantage.
    """
    returns = batch.rewards.sum(-1).view(-1, batch.group_size)  # (P, k)
    advantages = returns - leave_one_out_median(returns)  # (P, k)
    return Advantages(advantages.view(-1)[:, None] * batch.response_mask)  # (B, R)


register_algorithm(
    "loo_median", advantages=loo_median, loss="reinforce", min_samples=3,
    help="REINFORCE with a leave-one-out median baseline (examples/custom_algorithm.py)",
    defaults={"num_samples": 4, "batch_size": 4})
