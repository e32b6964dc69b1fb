"""Tiny-model RL runs: each algorithm raises a programmatic reward while the KL stays bounded.

The policy is a tiny random Llama fine-tuned (SFT, a few seconds) to answer with a random mix of
the words "good" and "bad"; the reward is the share of "good" words. The SFT policy sits near
0.5, so every algorithm has room to improve and the signal is strong enough to see in a few
rollout batches.
"""

import json
import random

import pytest

from rlhfkit.data.io import read_records, write_records
from rlhfkit.data.records import Demonstration
from rlhfkit.tasks import get_task

SYSTEM = get_task("reviews").system_prompt


def good_share(prompts, texts, rollout=None):
    return [sum(w == "good" for w in t.split()) / max(len(t.split()), 1) for t in texts]


@pytest.fixture(scope="session")
def good_bad_policy(tmp_path_factory, tiny_lm):
    from rlhfkit.train.sft import SFTConfig, train_sft

    root = tmp_path_factory.mktemp("good-bad")
    rng = random.Random(0)
    prompts = get_task("reviews").prompts("train")[:64]
    demos = [Demonstration(prompt=p, response=" ".join(rng.choice(["good", "bad"])
                                                        for _ in range(4))) for p in prompts]
    write_records(demos, root / "demos.jsonl")
    return train_sft(SFTConfig(
        model=str(tiny_lm), data=str(root / "demos.jsonl"), output_dir=str(root / "sft"),
        max_steps=24, batch_size=16, learning_rate=1e-2, precision="fp32", progress=False,
        max_length=96, eval_fraction=0.0, system_prompt=SYSTEM, warmup_ratio=0.0,
        lr_scheduler="constant"))


def rl_common(policy, out, **kw):
    return dict(model=str(policy), output_dir=str(out), max_steps=5, batch_size=8,
                max_new_tokens=6, learning_rate=2e-3, precision="fp32", progress=False,
                eval_prompts=8, kl_coef=0.01, reward_clip=0.0, system_prompt=SYSTEM, **kw)


def read_metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward/score" in r]
    evals = [r for r in rows if "eval/reward" in r]
    return train, evals


def assert_learned(out, min_gain=0.15, max_kl=10.0):
    train, evals = read_metrics(out)
    first = train[0]["reward/score"]
    final = evals[-1]["eval/reward"]
    assert final > first + min_gain, (first, final)
    assert evals[-1]["eval/kl"] < max_kl
    assert all(r["kl/seq"] < max_kl for r in train)
    assert (out / "model" / "config.json").exists()


def test_ppo_learns_with_bounded_kl(good_bad_policy, tmp_path):
    from rlhfkit.train.ppo import PPOConfig, train_ppo

    out = tmp_path / "ppo"
    kw = rl_common(good_bad_policy, out, mini_batch_size=4, update_epochs=2)
    kw.update(learning_rate=1e-3, max_steps=6)  # 4 optimizer steps per batch: a smaller step
    train_ppo(PPOConfig(**kw),
              reward_fn=good_share)
    assert_learned(out)
    train, _ = read_metrics(out)
    for key in ("loss/policy", "loss/value", "policy/entropy", "policy/approx_kl",
                "policy/clipfrac", "value/clipfrac", "kl/coef", "gold/mean", "response/length"):
        assert key in train[-1], key


@pytest.mark.parametrize("algo,extra", [
    ("reinforce", {"baseline": "mean"}),
    ("rloo", {"num_samples": 4, "batch_size": 2}),
    ("grpo", {"num_samples": 4, "batch_size": 2, "kl_coef": 0.04}),
])
def test_policy_gradient_methods_learn(good_bad_policy, tmp_path, algo, extra):
    from rlhfkit.train.pg import PGConfig, train_pg

    out = tmp_path / algo
    kw = rl_common(good_bad_policy, out)
    kw.update(extra)
    train_pg(PGConfig(algo=algo, **kw), reward_fn=good_share)
    assert_learned(out, min_gain=0.1)


def test_best_of_n_selects_and_writes_demonstrations(good_bad_policy, tmp_path):
    from rlhfkit.train.best_of_n import BestOfNConfig, run_best_of_n

    out = run_best_of_n(BestOfNConfig(model=str(good_bad_policy), output_dir=str(tmp_path),
                                      n=4, max_prompts=8, max_new_tokens=6, precision="fp32",
                                      progress=False, system_prompt=SYSTEM),
                        reward_fn=good_share)
    summary = json.loads((out / "eval.json").read_text())
    assert summary["reward/best"] >= summary["reward/first"]
    assert summary["reward/best"] > 0.7
    demos = read_records(out / "demonstrations.jsonl")
    assert len(demos) == 8 and all(isinstance(d, Demonstration) for d in demos)


def test_cli_has_the_rl_stages():
    from rlhfkit.cli import build_parser

    parser = build_parser()
    for stage in ("ppo", "reinforce", "rloo", "grpo", "best-of-n"):
        args = parser.parse_args([stage, "--seed", "3"])
        assert args._stage.name == stage
