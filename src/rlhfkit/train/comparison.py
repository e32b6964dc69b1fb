"""Sampling a policy and the SFT policy it started from on a task's held-out prompts.

One response per held-out prompt from each policy (or best-of-N from SFT by the reward model),
scored by the task's gold scorer and the proxy reward model, with the per-response KL to the SFT
policy (k1, recomputed by the trainer); :func:`rlhfkit.evaluate.comparison.compare` makes the
summary. The demo, the iterative rounds and the reward-KL frontier judge their policies so.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit.evaluate.comparison import Responses, compare
from rlhfkit.evaluate.metrics import best_of_n_kl
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.models.reward import RewardModel, rm_scores
from rlhfkit.rollout import ReferencePolicy, SamplingConfig, make_backend, sample
from rlhfkit.tasks import get_task
from rlhfkit.train.best_of_n import best_of_n


def compare_with_sft(task_name: str, sft: Path, final: Path | None, reward_model: Path,
                     n_prompts: int, max_new_tokens: int = 24, seed: int = 0,
                     generation_backend: str = "auto", best_of: int = 4,
                     out_dir: Path | None = None) -> dict:
    """A policy against the SFT policy on held-out prompts: one sample each per prompt.

    Args:
        task_name: The built-in task (its eval prompts and gold scorer).
        sft: The SFT policy (the reference of the KL).
        final: The policy to judge, or None for best-of-``best_of`` sampling from ``sft``
            by ``reward_model`` (its KL is then the analytic ``log n - (n - 1) / n``).
        reward_model: The proxy reward (``reward/*`` keys).
        n_prompts: Held-out prompts.
        max_new_tokens: Longest response.
        seed: Seed of the samples.
        generation_backend: hf, vllm or auto.
        best_of: N of best-of-N when ``final`` is None.
        out_dir: Created when given (best-of-N has no run folder of its own).

    Returns:
        ``summary`` (gold and proxy reward before/after, win rate raw and length-controlled,
        KL, length, distinct-2) and ``samples`` (prompt, before, after, gold of each).
    """
    torch.manual_seed(seed)
    task = get_task(task_name)
    prompts = task.prompts("eval")[:n_prompts]
    gold = task.gold_scorer()
    tok = load_tokenizer(str(sft))
    rm = RewardModel.from_pretrained(str(reward_model), pad_token_id=tok.pad_token_id).eval()
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    sft_lm = load_causal_lm(str(sft)).eval()
    backend = make_backend(generation_backend, str(sft), None, seed=seed,
                           max_model_len=max_new_tokens + 256, log=lambda *a: None)
    before = sample(sft_lm, tok, prompts, sampling, task.system_prompt, backend=backend)
    if final is None:  # best-of-n from the SFT policy, scored by the RM
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        picked = best_of_n(sft_lm, tok, prompts, best_of,
                           lambda p, t, r: rm_scores(rm, r).tolist(),
                           sampling, task.system_prompt, backend=backend)
        after_texts = [r["best"] for r in picked]
        after = None
        kl_final = best_of_n_kl(best_of)  # no per-token log-probs: the analytic value
        rm_after = [r["best_score"] for r in picked]
    else:
        lm = load_causal_lm(str(final)).eval()
        if hasattr(backend, "sync"):
            backend.sync(lm, 1)  # the same engine, now holding the final policy
        after = sample(lm, tok, prompts, sampling, task.system_prompt, scorer=SelectiveLM(lm),
                       backend=backend)
        ref = ReferencePolicy(sft_lm, frozen=sft_lm)
        ref_lp = ref.logprobs(after)
        kl_final = float(((after.logprobs - ref_lp) * after.response_mask).sum(-1).mean())
        after_texts = after.texts
        rm_after = rm_scores(rm, after).tolist()
    if hasattr(backend, "close"):
        backend.close()
    rm_before = rm_scores(rm, before).tolist()
    len_after = (after.response_lengths.float().tolist() if after is not None
                 else [len(tok.encode(t)) for t in after_texts])
    sft_side = Responses(before.texts, gold(prompts, before.texts), rm_before,
                         before.response_lengths.float().tolist())
    final_side = Responses(after_texts, gold(prompts, after_texts), rm_after, len_after)
    return compare(prompts, sft_side, final_side, kl_final)
