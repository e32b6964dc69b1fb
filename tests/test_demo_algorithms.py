"""The demo with DPO in place of RM + RL, and two algorithms compared in one report."""


from rlhfkit.evaluate.runs import read_json


def test_demo_compares_ppo_and_dpo(smallest_lm, tmp_path):
    from rlhfkit.pipeline import DemoConfig, run_demo

    out = run_demo(DemoConfig(model=str(smallest_lm), output_dir=str(tmp_path), quick=True,
                              precision="fp32", sft_steps=2, rm_steps=2, rl_steps=1,
                              max_new_tokens=2, eval_prompts=2, algo="ppo,dpo", progress=False))
    summary = read_json(out, "summary.json")
    assert set(summary["eval_by_algo"]) == {"ppo", "dpo"}
    for algo in ("ppo", "dpo"):
        ev = summary["eval_by_algo"][algo]
        assert ev["prompts"] == 2 and 0.0 <= ev["gold/win_rate"] <= 1.0
        assert ev["kl/final"] == ev["kl/final"]  # a real number for both (not NaN)
        assert (out / algo / "model" / "config.json").exists()
    assert summary["eval"] == summary["eval_by_algo"]["ppo"]
    html = (out / "report.html").read_text()
    assert "Algorithms compared" in html
    assert html.count("<td>dpo</td>") == 1 and html.count("<td>ppo</td>") == 1
