"""The demo pipeline end to end on a tiny model: SFT -> RM -> RL -> evaluation -> report.

This checks the plumbing between the stages, not learning (each stage's own tests do that), so
it runs the smallest settings that still pass through every stage: a one-layer model of width
16 (the vocabulary projection dominates every forward pass), one RL batch, two new tokens.
"""


import pytest

from rlhfkit.evaluate.runs import read_json, read_rounds


@pytest.mark.parametrize("algo", ["ppo"])
def test_demo_runs_end_to_end_and_writes_a_report(smallest_lm, tmp_path, algo):
    from rlhfkit.pipeline import DemoConfig, run_demo

    out = run_demo(DemoConfig(model=str(smallest_lm), output_dir=str(tmp_path), quick=True,
                              precision="fp32", sft_steps=2, rm_steps=2, rl_steps=1,
                              max_new_tokens=2, eval_prompts=2, algo=algo, progress=False,
                              rank_prompts=8))
    summary = read_json(out, "summary.json")
    ev = summary["eval"]
    for key in ("gold/win_rate", "gold/sft", "gold/final", "kl/final", "reward/final"):
        assert key in ev
    assert ev["prompts"] == 2
    for stage in ("sft", "rm", algo):
        assert (out / stage / "model" / "config.json").exists(), stage
    assert set(summary["timings"]) == {"sft_s", "rank_s", "rm_s", "rl_s", "eval_s"}
    # the reward model learned from the SFT policy's own samples, ranked by the labeler
    from rlhfkit.data.io import read_records

    rankings = read_records(out / "rankings.jsonl")
    assert len(rankings) == 8 and all(len(r.responses) == 4 for r in rankings)
    assert all(len(set(r.responses)) == 4 and len(r.ranks) == 4 for r in rankings)
    assert "rankings.jsonl" in (out / "rm" / "config.yaml").read_text()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "Samples on held-out prompts" in html


def test_demo_dpo_learns_from_the_reward_models_preferences(smallest_lm, tmp_path):
    import yaml

    from rlhfkit.pipeline import DemoConfig, run_demo

    # the task's rankings here: a one-layer random model's 2-token samples all tie on the gold
    # scorer, which leaves DPO no pairs
    out = run_demo(DemoConfig(model=str(smallest_lm), output_dir=str(tmp_path), quick=True,
                              precision="fp32", sft_steps=1, rm_steps=1, rl_steps=1,
                              max_new_tokens=2, eval_prompts=2, algo="dpo", progress=False,
                              rm_data="task"))
    rm_cfg = yaml.safe_load((out / "rm" / "config.yaml").read_text())
    dpo_cfg = yaml.safe_load((out / "dpo" / "config.yaml").read_text())
    assert dpo_cfg["data"] == rm_cfg["data"] == "task:reviews"
    assert (out / "dpo" / "model" / "config.json").exists()
    assert "rank_s" not in read_json(out, "summary.json")["timings"]


def test_demo_with_best_of_n_reports_its_analytic_kl(smallest_lm, tmp_path):
    from rlhfkit.evaluate.metrics import best_of_n_kl
    from rlhfkit.pipeline import DemoConfig, run_demo

    out = run_demo(DemoConfig(model=str(smallest_lm), output_dir=str(tmp_path), quick=True,
                              precision="fp32", sft_steps=1, rm_steps=1, max_new_tokens=2,
                              eval_prompts=2, algo="best-of-n", progress=False, rm_data="task"))
    ev = read_json(out, "summary.json")["eval"]
    assert ev["kl/final"] == pytest.approx(best_of_n_kl(4))
    assert 0 < ev["length/final"] <= 2


def test_demo_checks_its_options_before_training(tmp_path):
    from rlhfkit import config as cfglib
    from rlhfkit.pipeline import DemoConfig, run_demo

    with pytest.raises(cfglib.ConfigError, match="--sft-model: .* is not a model folder"):
        run_demo(DemoConfig(output_dir=str(tmp_path / "a"), sft_model=str(tmp_path)))
    with pytest.raises(cfglib.ConfigError, match="--rm-data must be one of 'samples', 'task', got 'people'"):
        run_demo(DemoConfig(output_dir=str(tmp_path / "b"), rm_data="people"))
    with pytest.raises(cfglib.ConfigError, match="--rank-k must be >= 2 and <= 9, got 12"):
        run_demo(DemoConfig(output_dir=str(tmp_path / "c"), rank_k=12))
    assert not any((tmp_path / d).exists() for d in "abc")  # nothing ran


def test_demo_with_rounds_refits_on_the_new_policy_and_reports_each_round(smallest_lm, tmp_path):
    """--rounds 2: round 1 reuses the SFT samples' rankings and reward model; round 2 samples
    the round-1 policy, refits, trains again; the report shows both rounds and the
    over-optimisation curve; the summary has the length-controlled win rate and the final reward
    model's accuracy on the final policy's samples."""
    from rlhfkit.pipeline import DemoConfig, run_demo

    out = run_demo(DemoConfig(model=str(smallest_lm), output_dir=str(tmp_path), quick=True,
                              precision="fp32", sft_steps=2, rm_steps=2, rl_steps=1,
                              max_new_tokens=2, eval_prompts=2, progress=False, rank_prompts=8,
                              rounds=2, round_prompts=4, round_rm_steps=1,
                              generation_backend="hf"))
    rounds = read_rounds(out / "ppo")
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[1]["policy"] == str(out / "ppo" / "round-1" / "rl" / "model")
    ev = read_json(out, "summary.json")["eval"]
    assert "gold/lc_win_rate" in ev and "rm/accuracy_on_final_policy" in ev
    html = (out / "report.html").read_text()
    assert "Iterative rounds" in html and "Over-optimisation" in html
