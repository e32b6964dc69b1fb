"""The good/bad policy of the RL tests, and what its runs share.

A tiny random Llama fine-tuned (SFT, a few seconds) to answer with a random mix of the words
"good" and "bad"; the reward is the share of "good" words (:func:`good_share`). The SFT policy
sits near 0.5, so every algorithm has room to improve and the signal is strong enough to see in a
few rollout batches. ``tests/conftest.py`` trains it once per session (``good_bad_policy``, with
the reviews task's system prompt, and ``good_bad_sft``, without); the RL, engine, algorithm and
Nash tests import the helpers below.
"""

import random
from pathlib import Path

from rlhfkit.data.io import write_records
from rlhfkit.data.records import Demonstration
from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.tasks import get_task

SYSTEM = get_task("reviews").system_prompt


def good_share(prompts, texts, rollout=None):
    """The reward: the share of "good" among the words of each response."""
    return [sum(w == "good" for w in t.split()) / max(len(t.split()), 1) for t in texts]


def train_good_bad_policy(model: Path, root: Path, system_prompt: str | None = SYSTEM) -> Path:
    """SFT of ``model`` on 64 answers that mix "good" and "bad" at random; ``root`` also
    holds ``demos.jsonl``, the demonstrations."""
    from rlhfkit.train.sft import SFTConfig, train_sft

    rng = random.Random(0)
    prompts = get_task("reviews").prompts("train")[:64]
    demos = [Demonstration(prompt=p, response=" ".join(rng.choice(["good", "bad"])
                                                        for _ in range(4))) for p in prompts]
    write_records(demos, root / "demos.jsonl")
    return train_sft(SFTConfig(
        model=str(model), data=str(root / "demos.jsonl"), output_dir=str(root / "sft"),
        max_steps=24, batch_size=16, learning_rate=1e-2, precision="fp32", progress=False,
        max_length=96, eval_fraction=0.0, system_prompt=system_prompt, warmup_ratio=0.0,
        lr_scheduler="constant", report_to="none", gradient_checkpointing=False))


def demos_of(policy: Path) -> Path:
    """The demonstrations the policy of :func:`train_good_bad_policy` was fine-tuned on."""
    return policy.parent.parent / "demos.jsonl"


def rl_common(policy, out, **kw):
    """The options of a short RL run of ``policy`` into ``out`` (``kw`` overrides them)."""
    base = dict(model=str(policy), output_dir=str(out), max_steps=5, batch_size=8,
                max_new_tokens=6, learning_rate=2e-3, precision="fp32", progress=False,
                eval_prompts=8, kl_coef=0.01, reward_clip=0.0, system_prompt=SYSTEM,
                report_to="none", gradient_checkpointing=False)
    base.update(kw)
    return base


def rl_metrics(out):
    """The rows of an RL run's ``metrics.jsonl``: (one per rollout batch, one per evaluation)."""
    rows = read_metrics(out)
    train = [r for r in rows if "reward/score" in r]
    evals = [r for r in rows if "eval/reward" in r]
    return train, evals


def assert_learned(out, min_gain=0.15, max_kl=10.0):
    """The run raised the reward by ``min_gain`` with its KL under ``max_kl``, and saved a model."""
    train, evals = rl_metrics(out)
    first = train[0]["reward/score"]
    final = evals[-1]["eval/reward"]
    assert final > first + min_gain, (first, final)
    assert evals[-1]["eval/kl"] < max_kl
    assert all(r["kl/seq"] < max_kl for r in train)
    assert (out / "model" / "config.json").exists()
