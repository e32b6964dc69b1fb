"""Nash learning from human feedback (Munos et al. 2023, "Nash Learning from Human Feedback").

The objective is a policy preferred to any other one, ``pi* = argmax_pi min_pi' P(pi > pi')``:
the Nash equilibrium of the two-player symmetric game whose payoff is a pairwise preference
``P(y > y' | x)``. Unlike the maximiser of a Bradley–Terry reward it exists and is sensible even
when preferences are non-transitive (rock > scissors > paper > rock): then it mixes.

This module holds the tabular solver (a finite set of responses to one prompt), which states the
algorithm in a few lines and is what the unit tests check:

- :func:`nash_md` iterates Nash-MD (eq. 8): play against the geometric mixture
  ``pi_mix ∝ pi^(1 - eta*tau) * pi_ref^(eta*tau)`` and take the mirror-descent step
  ``pi_next ∝ pi_mix * exp(eta * P(y > pi_mix))``. Its last iterate converges to the
  tau-regularised Nash equilibrium (Munos et al. 2023, Theorem 1).
- :func:`fit_bradley_terry` and :func:`maximise_reward` are the RLHF baseline on the same
  preferences: fit one scalar reward per response, then solve
  ``argmax_pi E_pi[r] - tau * KL(pi || pi_ref)``, whose solution ``pi_ref * exp(r / tau)``
  collapses on the best-rewarded response as tau shrinks.
- :func:`exploitability` measures how far a policy is from the Nash equilibrium:
  ``max_y P(y > pi) - 1/2``, zero exactly at a Nash equilibrium of the unregularised game.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.losses import bradley_terry_loss, nash_md_step
from rlhfkit.train.pg import PGConfig

Tensor = torch.Tensor


def check_preference(preference: Tensor, atol: float = 1e-5) -> None:
    """Raise ``ValueError`` unless ``P`` is a (K, K) matrix in [0, 1] with ``P + P^T = 1``."""
    if preference.ndim != 2 or preference.shape[0] != preference.shape[1]:
        raise ValueError(f"preference must be (K, K), got {tuple(preference.shape)}")
    if (preference < 0).any() or (preference > 1).any():
        raise ValueError("preference probabilities must lie in [0, 1]")
    if not torch.allclose(preference + preference.T, torch.ones_like(preference), atol=atol):
        raise ValueError("preference must satisfy P(y > y') = 1 - P(y' > y)")


def exploitability(preference: Tensor, probs: Tensor) -> float:
    """``max_y P(y > pi) - 1/2``: how much the best response beats ``pi`` (0 at a Nash)."""
    return float((preference.double() @ probs.double()).max() - 0.5)


@dataclass
class NashMDResult:
    """Outcome of the tabular solver."""

    probs: Tensor
    """(K,) the last iterate pi_T."""
    exploitability: list[float] = field(default_factory=list)
    """Exploitability of each iterate, pi_0 first."""


def nash_md(
    preference: Tensor,
    ref_probs: Tensor | None = None,
    eta: float = 0.5,
    tau: float = 0.1,
    steps: int = 500,
    init_probs: Tensor | None = None,
) -> NashMDResult:
    """Run Nash-MD on a finite set of K responses (Munos et al. 2023, eq. 8).

    Args:
        preference: (K, K) ``P[y, y'] = P(y > y')`` with ``P + P^T = 1``.
        ref_probs: (K,) reference policy mu (uniform if None).
        eta: Step size of mirror descent; ``eta * tau`` must be at most 1.
        tau: Strength of the regularisation towards the reference.
        steps: Number of updates.
        init_probs: (K,) pi_0 (the reference if None).

    Returns:
        The last iterate and the exploitability along the way.
    """
    check_preference(preference)
    pref = preference.double()
    k = pref.shape[0]
    ref = torch.full((k,), 1.0 / k, dtype=torch.float64) if ref_probs is None \
        else ref_probs.double()
    log_ref = ref.log()
    log_pi = log_ref.clone() if init_probs is None else init_probs.double().log()
    history = [exploitability(pref, log_pi.exp())]
    for _ in range(steps):
        log_pi = nash_md_step(log_pi, log_ref, pref, eta, tau).double()
        history.append(exploitability(pref, log_pi.exp()))
    return NashMDResult(probs=log_pi.exp(), exploitability=history)


def fit_bradley_terry(preference: Tensor, steps: int = 300, lr: float = 1.0) -> Tensor:
    """Fit one scalar reward per response to every pairwise probability (soft-label BT).

    Minimises ``sum_{y != y'} BCE(sigmoid(r_y - r_y'), P[y, y'])`` by gradient descent; the
    rewards are centred (BT cannot see a shift).

    Args:
        preference: (K, K) pairwise probabilities.
        steps: Gradient steps.
        lr: Learning rate of plain gradient descent.

    Returns:
        (K,) rewards with mean 0.
    """
    check_preference(preference)
    k = preference.shape[0]
    rows, cols = torch.triu_indices(k, k, offset=1)
    target = preference[rows, cols].double()  # (K(K-1)/2,) P(y_i > y_j)
    rewards = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([rewards], lr=lr)
    for _ in range(steps):
        # A soft label p is the mixture of "i wins" (weight p) and "j wins" (weight 1 - p).
        win, _ = bradley_terry_loss(rewards[rows], rewards[cols])
        lose, _ = bradley_terry_loss(rewards[cols], rewards[rows])
        loss = (target * win + (1 - target) * lose).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return rewards - rewards.mean()


def maximise_reward(rewards: Tensor, ref_probs: Tensor | None = None, tau: float = 0.1) -> Tensor:
    """Solve ``argmax_pi E_pi[r] - tau * KL(pi || pi_ref)``: ``pi ∝ pi_ref * exp(r / tau)``.

    The closed form of the KL-regularised RLHF objective (e.g. Rafailov et al. 2023, eq. 4).

    Args:
        rewards: (K,) one reward per response.
        ref_probs: (K,) reference policy (uniform if None).
        tau: KL coefficient.

    Returns:
        (K,) the optimal policy.
    """
    k = rewards.shape[0]
    ref = torch.full((k,), 1.0 / k, dtype=torch.float64) if ref_probs is None \
        else ref_probs.double()
    return torch.softmax(ref.log() + rewards.double() / tau, dim=-1)


# --------------------------------------------------------------------------------------------
# Nash-MD for language models (``rlhfkit nash``)
# --------------------------------------------------------------------------------------------
# The practical version of Munos et al. (2023), §7: sample y from the policy and y' from the
# mixture pi_mix, approximated token by token by sampling from
# softmax((1 - beta) * logits_policy + beta * logits_ref); the payoff of y is P(y > y' | x) from
# the preference model, and the policy takes a REINFORCE step on that payoff minus the per-token
# KL to the reference (the tau * KL term of the regularised game).

PreferenceFn = Callable[[Sequence[Any], Sequence[str], Sequence[str]], Sequence[float]]
"""(prompts, responses y, responses y') -> P(y > y') for each triple."""


@dataclass
class NashConfig(PGConfig):
    """Nash-MD against a pairwise preference model (``rlhfkit nash``)."""

    output_dir: str = "runs/nash"
    """Run folder: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, model/."""
    preference_model: str = "runs/preference/model"
    """Folder of a pairwise preference model (rlhfkit.models.preference)."""
    mixture_beta: float = 0.125
    """beta = eta * tau: weight of the reference's logits in the opponent's token-level mixture."""


@torch.no_grad()
def sample_mixture(policy_lm: torch.nn.Module,
                   reference: Callable[[], contextlib.AbstractContextManager[torch.nn.Module]],
                   tokenizer: Any, prompt_ids: list[list[int]], beta: float,
                   max_new_tokens: int, temperature: float = 1.0) -> list[str]:
    """Sample from the token-level geometric mixture of policy and reference (no KV cache).

    At each step the next token is drawn from
    ``softmax(((1 - beta) * logits_policy + beta * logits_ref) / temperature)``, the practical
    approximation of pi_mix in Munos et al. (2023), §7.

    Args:
        policy_lm: The policy's causal LM.
        reference: Context manager factory yielding a module with ``.lm`` = the reference LM
            (``ReferencePolicy.active``: with LoRA it disables the adapter, so the policy's
            logits are taken outside it).
        tokenizer: The tokenizer.
        prompt_ids: Prompt token ids, one list per sample.
        beta: Weight of the reference logits (eta * tau).
        max_new_tokens: Length limit.
        temperature: Sampling temperature.

    Returns:
        The decoded responses (up to the first EOS).
    """
    from rlhfkit.data.chat import pad
    from rlhfkit.rollout import eos_ids_of

    device = next(policy_lm.parameters()).device
    ids, mask = pad(prompt_ids, tokenizer.pad_token_id, side="left")  # (B, T)
    ids, mask = ids.to(device), mask.to(device)
    eos = torch.tensor(eos_ids_of(tokenizer), device=device)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    new: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        # logits_to_keep=1: only the last position's (B, 1, V) logits, not (B, T, V).
        inputs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                      use_cache=False, logits_to_keep=1)
        logits = policy_lm(**inputs).logits[:, -1].float()  # (B, V)
        with reference() as ref:
            ref_logits = ref.lm(**inputs).logits[:, -1].float()  # (B, V)
        mixed = (1 - beta) * logits + beta * ref_logits  # (B, V)
        token = torch.multinomial(torch.softmax(mixed / temperature, -1), 1)[:, 0]  # (B,)
        token = torch.where(done, torch.full_like(token, tokenizer.pad_token_id), token)
        new.append(token)
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, (~done).long()[:, None]], 1)
        done |= torch.isin(token, eos)
        if done.all():
            break
    out = torch.stack(new, 1).tolist()  # (B, N)
    eos_set = set(eos.tolist())
    texts = []
    for row in out:
        cut = next((i for i, t in enumerate(row) if t in eos_set), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return texts


def preference_model_fn(path: str, tokenizer: Any, device: torch.device,
                        max_length: int = 1024, system_prompt: str | None = None
                        ) -> PreferenceFn:
    """A :data:`PreferenceFn` backed by a saved pairwise preference model."""
    from rlhfkit.models.preference import PreferenceModel, collate_duels

    model = PreferenceModel.from_pretrained(path, pad_token_id=tokenizer.pad_token_id)
    model.eval().requires_grad_(False).to(device)

    @torch.no_grad()
    def prefer(prompts, ys, ys_opp):
        batch = collate_duels(tokenizer, [(p, a, b, 1.0) for p, a, b in zip(prompts, ys, ys_opp)],
                              max_length, system_prompt)
        g = model.preference_logits(*(batch[k].to(device) for k in
                                      ("ab_ids", "ab_mask", "ba_ids", "ba_mask")))
        return torch.sigmoid(g).tolist()

    return prefer


def train_nash(cfg: NashConfig, preference_fn: PreferenceFn | None = None) -> Path:
    """Nash-MD for an LM (Munos et al. 2023, §7); returns the folder of the saved policy.

    Each step: (1) sample y ~ pi and y' ~ pi_mix for the same prompts; (2) payoff
    ``P(y > y') - 1/2``; (3) REINFORCE on the payoff with the per-token KL to the reference in
    the reward and the batch-mean baseline (``--baseline``); (4) log ``reward/preference``
    (mean P(y > y')).
    """
    from rlhfkit.losses import entropy_from_logits, masked_mean, reinforce_loss
    from rlhfkit.reward_sources import RewardTerms
    from rlhfkit.rollout import encode_prompts, forward_response
    from rlhfkit.train.pg import advantages_for
    from rlhfkit.train.rl import RLRun

    if not 0.0 <= cfg.mixture_beta <= 1.0:
        raise ValueError(f"--mixture-beta must be in [0, 1], got {cfg.mixture_beta}")
    cfg.algo = "reinforce"
    # The payoff is computed here from the preference model, not from a scalar reward model.
    run = RLRun(cfg, "nash", reward_fn=lambda p, t, r: [0.0] * len(t))
    prefer = preference_fn or preference_model_fn(cfg.preference_model, run.tokenizer,
                                                  run.device, system_prompt=run.system_prompt)
    temperature = cfg.temperature or 1.0
    for step in run.steps():
        run.start_step()
        # 1. rollouts: y from the policy, y' from the mixture ---------------------------
        prompts = run.prompt_batch(step)
        rollout = run.rollout(prompts)
        prompt_ids = encode_prompts(run.tokenizer, prompts, run.system_prompt,
                                    cfg.max_prompt_tokens)
        was_training = run.lm.training
        run.lm.eval()
        opponents = sample_mixture(run.lm, run.reference.active, run.tokenizer, prompt_ids,
                                   cfg.mixture_beta, cfg.max_new_tokens, temperature)
        run.lm.train(was_training)
        # 2. payoff P(y > y') and 3. advantages ------------------------------------------
        raw = torch.as_tensor(list(prefer(rollout.prompts, rollout.texts, opponents)),
                              dtype=torch.float32, device=run.device)  # (B,)
        terms = RewardTerms.holistic(raw, raw - 0.5, rollout.response_mask)
        adv, returns, rewards = advantages_for(cfg, run, rollout, terms)
        # 4. update ---------------------------------------------------------------------
        with run.acc.autocast():
            out = forward_response(run.model, rollout, temperature)
            loss_pg = masked_mean(reinforce_loss(out["logprobs"], adv), rollout.response_mask)
            entropy = entropy_from_logits(out["logits"])
            loss = loss_pg - cfg.entropy_coef * entropy.mean()
        run.backward(loss)
        grad_norm = run.optimizer_step()
        # 5. log ------------------------------------------------------------------------
        metrics, kl_seq = run.rollout_metrics(rollout, terms, rewards)
        metrics.update({"reward/preference": float(raw.mean()),
                        "loss/policy": float(loss_pg.detach()),
                        "policy/entropy": float(entropy.detach().mean()), "grad_norm": grad_norm})
        run.end_step(metrics, rollout, kl_seq)
    return run.finish()
