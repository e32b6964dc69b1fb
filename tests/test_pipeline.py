"""The demo pipeline end to end on a tiny model: SFT -> RM -> RL -> evaluation -> report."""

import json

import pytest


@pytest.mark.parametrize("algo", ["ppo"])
def test_demo_runs_end_to_end_and_writes_a_report(tiny_lm, tmp_path, algo):
    from rlhfkit.pipeline import DemoConfig, run_demo

    out = run_demo(DemoConfig(model=str(tiny_lm), output_dir=str(tmp_path), quick=True,
                              precision="fp32", sft_steps=2, rm_steps=2, rl_steps=2,
                              max_new_tokens=4, eval_prompts=4, algo=algo, progress=False))
    summary = json.loads((out / "summary.json").read_text())
    ev = summary["eval"]
    for key in ("gold/win_rate", "gold/sft", "gold/final", "kl/final", "reward/final"):
        assert key in ev
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "Samples on held-out prompts" in html
