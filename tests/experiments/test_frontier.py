"""The reward-KL frontier on a tiny model: every method and strength becomes a judged point."""

from __future__ import annotations

import json

import pytest

from rlhfkit.config import ConfigError
from rlhfkit.experiments.frontier import FrontierConfig, pareto, run_frontier


def test_pareto_front_by_hand():
    """(KL, gold): a (1, 0.5) and b (2, 0.4) -> b is dominated by a; c (3, 0.9) is not."""
    pts = [{"kl": 1.0, "gold": 0.5}, {"kl": 2.0, "gold": 0.4}, {"kl": 3.0, "gold": 0.9}]
    assert pareto(pts) == [True, False, True]


def test_frontier_measures_each_point_and_resumes(tiny_lm, tmp_path):
    from rlhfkit.data.io import write_records
    from rlhfkit.tasks import get_task
    from rlhfkit.train.rm import RMConfig, train_rm

    rankings = write_records(get_task("reviews").rankings()[:32], tmp_path / "rankings.jsonl")
    rm = train_rm(RMConfig(model=str(tiny_lm), data=str(rankings), output_dir=str(tmp_path / "rm"),
                           max_steps=2, batch_size=4, precision="fp32", progress=False,
                           report_to="none", eval_fraction=0.0))
    cfg = FrontierConfig(sft_model=str(tiny_lm), reward_model=str(rm), preferences=str(rankings),
                         output_dir=str(tmp_path / "frontier"), methods="grpo,dpo,best-of-n",
                         betas="0.1", dpo_betas="0.1", best_of="1,2", rl_steps=1, dpo_steps=1,
                         eval_prompts=4, max_new_tokens=3, precision="fp32", progress=False,
                         generation_backend="hf")
    report = run_frontier(cfg)
    points = [json.loads(x) for x in (tmp_path / "frontier" / "points.jsonl").read_text().splitlines()]
    assert [(p["method"], p["value"]) for p in points] == [
        ("grpo", 0.1), ("dpo", 0.1), ("best-of-n", 1.0), ("best-of-n", 2.0)]
    assert points[2]["kl"] == 0.0  # best of 1 is the SFT policy itself
    assert "Reward-KL frontier" in report.read_text()
    cfg.resume = True
    run_frontier(cfg)  # nothing left to measure: no new line
    assert len((tmp_path / "frontier" / "points.jsonl").read_text().splitlines()) == 4
    with pytest.raises(ConfigError, match="--methods"):
        run_frontier(FrontierConfig(methods="ppo,sac", output_dir=str(tmp_path / "x")))
