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

It also holds what Nash-MD for language models adds to the one RL loop (``rlhfkit nash``, the
``nash`` entry of :mod:`rlhfkit.train.algorithms`): the opponent sampler (:func:`sample_mixture`),
the payoff from a pairwise preference model trained by ``rlhfkit preference``
(:func:`preference_model_fn`), the run that scores and evaluates with them (:class:`NashRun`),
and the run's report section (:func:`nash_section`). Each step: (1) sample y ~ pi and
y' ~ pi_mix for the same prompts; (2) payoff ``P(y > y') - 1/2``; (3) REINFORCE on the payoff
with the per-token KL to the reference in the reward and the batch-mean baseline
(``--baseline``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from rlhfkit.config import ConfigError, bounds
from rlhfkit.data.chat import pad
from rlhfkit.evaluate.report import Section, figure_html, table_html
from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.losses import nash_md_step
from rlhfkit.models.loading import ModelLoadError
from rlhfkit.models.preference import PreferenceModel, collate_duels
from rlhfkit.rewards.sources import RewardTerms
from rlhfkit.rollout import (
    Rollout,
    SamplingConfig,
    cache_kwarg,
    encode_prompts,
    eos_ids_of,
    output_cache,
    sample,
)
from rlhfkit.stats import bradley_terry
from rlhfkit.train.rl import RLRun

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


def fit_bradley_terry(preference: Tensor) -> Tensor:
    """Fit one scalar reward per response to every pairwise probability (soft-label BT).

    The maximum-likelihood Bradley–Terry rewards of the soft outcomes ``P[y, y']``: one game
    per pair ``y < y'`` with outcome ``P[y, y']``, fitted by :func:`rlhfkit.stats.bradley_terry`.
    This minimises ``sum_{y < y'} BCE(sigmoid(r_y - r_y'), P[y, y'])``; the rewards are
    centred (BT cannot see a shift).

    Args:
        preference: (K, K) pairwise probabilities.

    Returns:
        (K,) rewards with mean 0 (float64).
    """
    check_preference(preference)
    k = preference.shape[0]
    games = [(i, j, float(preference[i, j])) for i in range(k) for j in range(i + 1, k)]
    rewards = bradley_terry(games)
    return torch.tensor([rewards[i] for i in range(k)], dtype=torch.float64)


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
class NashOptions:
    """Nash-MD's opponent and payoff (``rlhfkit nash``)."""

    preference_model: str = "runs/preference/model"
    """Folder of a pairwise preference model (rlhfkit.models.preference)."""
    mixture_beta: float = field(default=0.125, metadata=bounds(ge=0, le=1))
    """beta = eta * tau: weight of the reference's logits in the opponent's token-level mixture."""


@torch.no_grad()
def sample_mixture(policy_lm: torch.nn.Module,
                   reference: Callable[[], contextlib.AbstractContextManager[torch.nn.Module]],
                   tokenizer: Any, prompt_ids: list[list[int]], beta: float,
                   sampling: SamplingConfig, use_cache: bool = True) -> list[str]:
    """Sample from the token-level geometric mixture of policy and reference.

    At each step the next token is drawn from
    ``softmax(((1 - beta) * logits_policy + beta * logits_ref) / temperature)``, the practical
    approximation of pi_mix in Munos et al. (2023), §7, cut to the run's top-k and top-p as the
    policy's own samples are (the same transformers warpers ``generate`` applies).

    Args:
        policy_lm: The policy's causal LM.
        reference: Context manager factory yielding a module with ``.lm`` = the reference LM
            (``ReferencePolicy.active``: with LoRA it disables the adapter, so the policy's
            logits are taken outside it).
        tokenizer: The tokenizer.
        prompt_ids: Prompt token ids, one list per sample.
        beta: Weight of the reference logits (eta * tau).
        sampling: Length limit, temperature, top-p and top-k of the run.
        use_cache: Keep a KV cache per model, so each step feeds one new token (the plain
            version, ``False``, re-runs both models on the whole sequence at every token).

    Returns:
        The decoded responses (up to the first EOS).
    """
    device = next(policy_lm.parameters()).device
    ids, mask = pad(prompt_ids, tokenizer.pad_token_id, side="left")  # (B, T)
    ids, mask = ids.to(device), mask.to(device)
    eos = torch.tensor(eos_ids_of(tokenizer), device=device)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    new: list[torch.Tensor] = []
    caches: list[Any] = [None, None]  # policy's and reference's past key/values

    def last_logits(lm: torch.nn.Module, which: int) -> torch.Tensor:
        """(B, V) next-token logits of ``lm`` after ``ids``.

        ``logits_to_keep=1`` keeps only the last position's logits instead of (B, T, V).
        """
        if not use_cache or caches[which] is None:  # the whole sequence
            inputs = dict(input_ids=ids, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        else:  # one new token; its position is the number of real tokens before it
            inputs = dict(input_ids=ids[:, -1:],
                          position_ids=(mask.sum(-1, keepdim=True) - 1).clamp(min=0),
                          **{cache_kwarg(lm): caches[which]})
        out = lm(**inputs, attention_mask=mask, use_cache=use_cache, logits_to_keep=1)
        if use_cache:
            caches[which] = output_cache(out)
        return out.logits[:, -1].float()

    warpers = [w for w in (TopKLogitsWarper(sampling.top_k) if sampling.top_k else None,
                           TopPLogitsWarper(sampling.top_p) if sampling.top_p < 1 else None) if w]
    for _ in range(sampling.max_new_tokens):
        logits = last_logits(policy_lm, 0)  # (B, V)
        with reference() as ref:
            ref_logits = last_logits(ref.lm, 1)  # (B, V)
        mixed = ((1 - beta) * logits + beta * ref_logits) / sampling.temperature  # (B, V)
        for warp in warpers:
            mixed = warp(ids, mixed)
        token = torch.multinomial(torch.softmax(mixed, -1), 1)[:, 0]  # (B,)
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


def check_preference_model_path(path: str) -> None:
    """Raise ``ModelLoadError`` (with what to do) when ``path`` is not a model folder."""
    if not (Path(path) / "config.json").exists():
        raise ModelLoadError(f"--preference-model {path}: not a model folder (no config.json); "
                             "train one with `rlhfkit preference --output-dir DIR`, which saves "
                             "it to DIR/model")


def preference_model_fn(path: str, tokenizer: Any, device: torch.device,
                        max_length: int = 1024, system_prompt: str | None = None,
                        batch_size: int = 16) -> PreferenceFn:
    """A :data:`PreferenceFn` backed by a saved pairwise preference model."""
    check_preference_model_path(path)
    model = PreferenceModel.from_pretrained(path, pad_token_id=tokenizer.pad_token_id)
    if not model.is_marked:
        print(f"[nash] warning: {path} was not saved as a pairwise preference model (no "
              "rlhfkit_model_kind in its config): a scalar reward model gives meaningless "
              "payoffs here")
    model.eval().requires_grad_(False).to(device)

    @torch.no_grad()
    def prefer(prompts, ys, ys_opp):
        duels = [(p, a, b, 1.0) for p, a, b in zip(prompts, ys, ys_opp)]
        probs: list[float] = []
        for i in range(0, len(duels), batch_size):
            batch = collate_duels(tokenizer, duels[i:i + batch_size], max_length, system_prompt)
            g = model.preference_logits(*(batch[k].to(device) for k in
                                          ("ab_ids", "ab_mask", "ba_ids", "ba_mask")))
            probs += torch.sigmoid(g).tolist()
        return probs

    return prefer


class NashRun(RLRun):
    """:class:`RLRun` of Nash-MD: each batch is scored against an opponent.

    Scoring (:meth:`score`) samples one opponent response per prompt from the token-level
    mixture of policy and reference and takes the payoff ``P(y > y') - 1/2`` from the
    preference function. Evaluation samples one response per held-out prompt from the policy
    and compares it with one sample of the reference, drawn once and kept (the reference does
    not change), so the curve of ``eval/win_rate`` is not blurred by fresh reference noise at
    every evaluation.

    Args:
        cfg: The run's options (with :class:`NashOptions`).
        stage: Stage name for logs.
        preference_fn: The payoff; default: the model of ``--preference-model``.
        **kwargs: The rest of :class:`RLRun`'s arguments.
    """

    _reference_eval: tuple[list[str], list[float] | None] | None = None

    def __init__(self, cfg: Any, stage: str, preference_fn: PreferenceFn | None = None,
                 **kwargs: Any) -> None:
        if cfg.async_generation:
            raise ConfigError("nash samples its opponents with transformers each step: "
                              "--async-generation is not available")
        if cfg.baseline not in ("none", "mean"):
            raise ConfigError(f"--baseline must be none or mean for Nash-MD, got "
                              f"{cfg.baseline!r}")
        if preference_fn is None:  # fail before loading the policy
            check_preference_model_path(cfg.preference_model)
        # The payoff comes from the preference model, not from a scalar reward model.
        kwargs["reward_fn"] = lambda p, t, r: [0.0] * len(t)
        super().__init__(cfg, stage, **kwargs)
        self.prefer = preference_fn or preference_model_fn(
            cfg.preference_model, self.tokenizer, self.device, system_prompt=self.system_prompt)

    @torch.no_grad()
    def score(self, rollout: Rollout) -> tuple[RewardTerms, dict[str, float]]:
        """The payoff of each response against an opponent from the mixture.

        ``reward/preference`` is the mean ``P(y > y')``.
        """
        cfg = self.cfg
        prompt_ids = encode_prompts(self.tokenizer, rollout.prompts, self.system_prompt,
                                    cfg.max_prompt_tokens)
        was_training = self.lm.training
        self.lm.eval()
        opponents = sample_mixture(self.lm, self.reference.active, self.tokenizer, prompt_ids,
                                   cfg.mixture_beta, self.sampling)
        self.lm.train(was_training)
        raw = torch.as_tensor(list(self.prefer(rollout.prompts, rollout.texts, opponents)),
                              dtype=torch.float32, device=self.device)  # (B,)
        terms = RewardTerms.holistic(raw, raw - 0.5, rollout.response_mask)
        return terms, {"reward/preference": float(raw.mean())}

    def report_sections(self) -> list[Section]:
        """The Nash-MD section (:func:`nash_section`) first, then the shared ones."""
        return [nash_section(self.out), *super().report_sections()]

    @torch.no_grad()
    def reference_samples(self, prompts: list[Any]) -> tuple[list[str], list[float] | None]:
        """(texts, gold scores or None) of one reference sample per prompt, drawn once."""
        if self._reference_eval is None:
            with self.reference.active() as ref:
                was_training = ref.lm.training
                ref.lm.eval()
                texts = sample(ref.lm, self.tokenizer, prompts, self.sampling, self.system_prompt,
                               max_prompt_tokens=self.cfg.max_prompt_tokens).texts
                ref.lm.train(was_training)
            gold = list(self.gold(prompts, texts)) if self.gold is not None else None
            self._reference_eval = (texts, gold)
        return self._reference_eval

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out prompts, y ~ pi against y_ref ~ pi_ref.

        ``eval/win_rate``: mean ``P(y > y_ref)`` under the preference model;
        ``eval/gold_win_rate``: share of prompts with gold(y) > gold(y_ref), ties 1/2;
        ``eval/gold``, ``eval/gold_ref``: mean gold score of each side; ``eval/kl``: sequence
        KL of y to the reference (k1); ``eval/length``: response tokens.
        """
        prompts = self.eval_prompts[: self.cfg.eval_prompts]
        if not prompts or self.prefer is None:
            return {}
        local = prompts[self.rank::self.world]  # each process samples its share
        names = ["eval/win_rate", "eval/kl", "eval/length"]
        if self.gold is not None:
            names += ["eval/gold", "eval/gold_ref", "eval/gold_win_rate"]
        sums = dict.fromkeys(names, 0.0)
        if local:
            rollout = self.rollout(local, with_values=False)
            ref_texts, ref_gold = self.reference_samples(local)
            kl = ((rollout.logprobs - rollout.ref_logprobs) * rollout.response_mask).sum(-1)
            win = list(self.prefer(rollout.prompts, rollout.texts, ref_texts))
            sums.update({"eval/win_rate": sum(win), "eval/kl": float(kl.sum()),
                         "eval/length": float(rollout.response_lengths.float().sum())})
            gold = self.gold_scores(rollout)
            if gold is not None and ref_gold is not None:
                sums.update({"eval/gold": sum(gold), "eval/gold_ref": sum(ref_gold),
                             "eval/gold_win_rate": sum(win_share(a, b)
                                                       for a, b in zip(gold, ref_gold))})
        return self.reduce_mean(sums, len(local))


def win_share(a: float, b: float) -> float:
    """1 if ``a`` beats ``b``, 1/2 for a tie, else 0."""
    return 1.0 if a > b else 0.5 if a == b else 0.0


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

RPS = torch.tensor([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]])
"""Rock, paper, scissors as a preference matrix: P[y, y'] = P(y > y')."""
LOPSIDED_CYCLE = torch.tensor([[0.5, 0.9, 0.2], [0.1, 0.5, 0.8], [0.8, 0.2, 0.5]])
"""0 > 1 w.p. 0.9, 1 > 2 w.p. 0.8, 2 > 0 w.p. 0.8: non-transitive, but BT ranks 0 first."""


def tabular_figure(steps: int = 300) -> Any:
    """The tabular picture of Nash-MD (a matplotlib figure, two panels).

    Left: exploitability along the iterations on rock-paper-scissors from (0.7, 0.2, 0.1),
    Nash-MD (eta = 0.5, tau = 0.1) against self-play multiplicative weights (tau = 0). Right:
    on :data:`LOPSIDED_CYCLE`, the Nash-MD policy (tau = 0.05, 1000 steps) against the maximiser
    of the Bradley–Terry reward fitted to the same preferences (same tau).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = torch.tensor([0.7, 0.2, 0.1])
    md = nash_md(RPS, eta=0.5, tau=0.1, steps=steps, init_probs=start)
    mwu = nash_md(RPS, eta=0.5, tau=0.0, steps=steps, init_probs=start)
    nash = nash_md(LOPSIDED_CYCLE, eta=0.5, tau=0.05, steps=1000).probs
    greedy = maximise_reward(fit_bradley_terry(LOPSIDED_CYCLE), tau=0.05)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    left.plot(md.exploitability, label="Nash-MD (tau = 0.1)")
    left.plot(mwu.exploitability, label="self-play MWU (tau = 0)")
    left.set_xlabel("iteration")
    left.set_ylabel("exploitability  max_y P(y > pi) - 1/2")
    left.set_title("Rock-paper-scissors: last iterate")
    left.legend()
    x = torch.arange(3).float()
    right.bar(x - 0.2, nash.tolist(), 0.4,
              label=f"Nash-MD (exploitability {exploitability(LOPSIDED_CYCLE, nash):.3f})")
    right.bar(x + 0.2, greedy.tolist(), 0.4,
              label=f"BT reward maximiser ({exploitability(LOPSIDED_CYCLE, greedy):.3f})")
    right.set_xticks(x.tolist(), ["y0", "y1", "y2"])
    right.set_ylabel("probability")
    right.set_title("Lopsided cycle: 0 > 1 (0.9), 1 > 2 (0.8), 2 > 0 (0.8)")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_figure(rows: Sequence[dict[str, float]]) -> Any | None:
    """Payoff / win rate, KL and (when logged) gold score over an ``rlhfkit nash`` run.

    Returns None when ``rows`` hold no training step.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "reward/preference" in r]
    evals = [r for r in rows if "eval/win_rate" in r]
    if not train:
        return None
    gold = any("eval/gold" in r for r in evals) or any("gold/mean" in r for r in train)
    fig, axes = plt.subplots(1, 3 if gold else 2, figsize=(15 if gold else 10, 3.4))
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["reward/preference"] for r in train], ".-",
            alpha=0.6, label="P(y > y'), y' ~ mixture (training batch)")
    if evals:
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r["eval/win_rate"] for r in evals], "o-",
                label="P(y > y_ref), held out (preference model)")
        if all("eval/gold_win_rate" in r for r in evals):
            ax.plot(steps, [r["eval/gold_win_rate"] for r in evals], "s--",
                    label="gold(y) > gold(y_ref), held out")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xlabel("rollout batch")
    ax.set_ylabel("probability")
    ax.set_title("Payoff and win rate against the reference")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot([r["step"] for r in train], [r["kl/seq"] for r in train], ".-", alpha=0.6,
            label="training batch")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval/kl"] for r in evals], "o-",
                label="held out")
    ax.set_xlabel("rollout batch")
    ax.set_ylabel("KL(policy || reference), nats per response")
    ax.set_title("KL to the reference")
    ax.legend(fontsize=7)
    if gold:
        ax = axes[2]
        if any("gold/mean" in r for r in train):
            tr = [r for r in train if "gold/mean" in r]
            ax.plot([r["step"] for r in tr], [r["gold/mean"] for r in tr], ".-", alpha=0.6,
                    label="policy, training batch")
        ev = [r for r in evals if "eval/gold" in r]
        if ev:
            ax.plot([r["step"] for r in ev], [r["eval/gold"] for r in ev], "o-",
                    label="policy, held out")
            ax.plot([r["step"] for r in ev], [r["eval/gold_ref"] for r in ev], "k--",
                    label="reference, held out")
        ax.set_xlabel("rollout batch")
        ax.set_ylabel("gold score")
        ax.set_title("Gold score (evaluation only)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


EVAL_COLUMNS = ("step", "eval/win_rate", "eval/gold_win_rate", "eval/gold", "eval/gold_ref",
                "eval/kl", "eval/length")


def nash_section(run_dir: str | Path) -> Any:
    """The report section of an ``rlhfkit nash`` run.

    Its curves (:func:`run_figure`), a table of its evaluations, and the tabular picture of why
    Nash-MD (:func:`tabular_figure`), as a :class:`rlhfkit.evaluate.report.Section`.
    """
    rows = read_metrics(run_dir)
    evals = [r for r in rows if "eval/win_rate" in r]
    parts = []
    text = ("Nash-MD (Munos et al. 2023): the policy plays against a mixture of itself and "
            "the reference, and the payoff is a pairwise preference P(y > y' | x).")
    if evals:
        first, last = evals[0], evals[-1]
        text += (f" Held out, against one reference sample per prompt: preference-model win "
                 f"rate {first['eval/win_rate']:.3f} at step {first['step']:g} and "
                 f"{last['eval/win_rate']:.3f} at step {last['step']:g}, KL "
                 f"{last['eval/kl']:.3g} nats per response.")
        if "eval/gold_win_rate" in last:
            text += (f" Gold win rate {last['eval/gold_win_rate']:.3f}; mean gold "
                     f"{last['eval/gold']:.3f} against the reference's "
                     f"{last['eval/gold_ref']:.3f}.")
    fig = run_figure(rows)
    if fig is not None:
        parts.append(figure_html(fig, "Nash-MD run: win rate, KL and gold over training"))
    else:
        text += " This run logged no training step."
    cols = [c for c in EVAL_COLUMNS if any(c in r for r in evals)]
    parts.append(table_html([{c: r.get(c, "") for c in cols} for r in evals], cols))
    parts.append("<h3>The tabular picture</h3><p>Left: on rock-paper-scissors the last iterate "
                 "of Nash-MD converges to the uniform Nash equilibrium while self-play "
                 "multiplicative weights (no mixture with the reference) cycles away from it. "
                 "Right: on a lopsided cycle the maximiser of a Bradley&ndash;Terry reward fitted "
                 "to the same preferences collapses on one response, which another beats; "
                 "Nash-MD keeps all three in play.</p>")
    parts.append(figure_html(tabular_figure(), "Tabular Nash-MD: exploitability and policies"))
    return Section("Nash learning from human feedback", text=text, parts=parts)
