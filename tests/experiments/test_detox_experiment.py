"""The detox experiment's plumbing on a tiny model: SFT -> PPO (holistic, fine-grained) ->
evaluation -> results.json, table.md, plots, report.html. Not a learning test (the real run in
docs/detox.md is); the summaries are checked by hand on made-up numbers.
"""

import json
import math

import pytest

from rlhfkit.experiments.detox import (
    DetoxConfig,
    detox_section,
    markdown_table,
    method_names,
    ppo_config,
    run_detox,
    summarise,
)


def tiny_config(model, out, **kw):
    return DetoxConfig(model=str(model), output_dir=str(out), sft_steps=2, sft_batch_size=2,
                       ppo_steps=2, batch_size=2, mini_batch_size=2, update_epochs=1,
                       max_new_tokens=3, eval_every=1, curve_prompts=2, eval_prompts=2,
                       samples_per_prompt=2, precision="fp32", progress=False,
                       methods="holistic,fine-grained", **kw)


def test_runs_end_to_end_and_writes_everything(smallest_lm, tmp_path):
    out = run_detox(tiny_config(smallest_lm, tmp_path))
    results = json.loads((out / "results.json").read_text())
    assert results["methods"] == ["holistic", "fine-grained"] and results["seeds"] == [0]
    for name in ("sft", "holistic-s0", "fine-grained-s0"):
        ev = results["evals"][name]
        assert ev["prompts"] == 2 and ev["samples_per_prompt"] == 2
        assert 0.0 <= ev["avg_max_toxicity"] <= 1.0 and ev["perplexity"] > 1.0
        assert 0.0 <= ev["toxicity_probability"] <= 1.0 and 0 < ev["length"] <= 3
        assert len(results["evals_samples"][name]) == 2
        assert all(len(s["responses"]) == 2 for s in results["evals_samples"][name])
    assert results["evals"]["sft"]["kl"] == 0.0  # the reference against itself
    # the two PPO runs differ only in their reward
    for m, spec in (("holistic", "scorer:non-toxic"), ("fine-grained", "segment-gain:non-toxic")):
        run_cfg = (out / f"{m}-s0" / "config.yaml").read_text()
        assert f"reward_model: {spec}" in run_cfg
        assert (out / f"{m}-s0" / "model" / "config.json").exists()
        curve = results["curves"][f"{m}-s0"]
        assert curve["eval_samples"] == [0, 2, 4]  # before training, after each batch of 2
        assert curve["train_samples"] == [2, 4]
    assert "| SFT |" in (out / "table.md").read_text()
    assert (out / "detox_curves.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "Detoxification" in html and html.count("data:image/png;base64") == 2

    # a second call reuses every stage and only rebuilds the outputs
    before = (out / "holistic-s0" / "metrics.jsonl").read_text()
    run_detox(tiny_config(smallest_lm, tmp_path))
    assert (out / "holistic-s0" / "metrics.jsonl").read_text() == before
    (out / "report.html").unlink()
    run_detox(tiny_config(smallest_lm, tmp_path, report_only=True))
    assert (out / "report.html").exists()


def test_configs_share_everything_but_the_reward(tmp_path):
    cfg = DetoxConfig(kl_target=3.0)
    a = ppo_config(cfg, tmp_path, "holistic", 0, tmp_path / "a")
    b = ppo_config(cfg, tmp_path, "fine-grained", 0, tmp_path / "a")
    da, db = vars(a), vars(b)
    assert {k for k in da if da[k] != db[k]} == {"reward_model"}
    assert a.kl_target == 3.0 and not a.normalize_reward
    with pytest.raises(ValueError, match="unknown method"):
        method_names(DetoxConfig(methods="holistic,dense"))


def test_the_two_fine_grained_rewards_differ_only_after_the_first_sentence():
    """Wu et al.'s example: sentence 1 gets -tox(y_1); ours gets 1 - tox(y_1); then equal."""
    from rlhfkit.experiments.detox import METHODS
    from rlhfkit.rewards.gold import get_scorer
    from rlhfkit.rewards.sources import segment_gains

    prefixes = ["I am such an idiot.", "I am such an idiot. She is so smart!"]
    ours = segment_gains(get_scorer(METHODS["fine-grained"].split(":", 1)[1])(["", ""], prefixes))
    wu = segment_gains(get_scorer(METHODS["fine-grained-wu"].split(":", 1)[1])(["", ""], prefixes))
    tox = get_scorer("toxicity")(["", ""], prefixes)
    assert wu == pytest.approx([-tox[0], tox[0] - tox[1]])
    assert ours == pytest.approx([1 - tox[0], tox[0] - tox[1]])
    assert tox[0] > 0.5  # the first sentence is the toxic one


def made_up():
    """Two seeds per method; numbers chosen so the summaries can be checked by hand."""
    keys = ("avg_max_toxicity", "toxicity_probability", "mean_toxicity", "perplexity", "dist2",
            "dist3", "kl", "length", "sentences")
    evals = {"sft": dict.fromkeys(keys, 0.5)}
    evals["holistic-s0"] = {**dict.fromkeys(keys, 0.5), "avg_max_toxicity": 0.4}
    evals["holistic-s1"] = {**dict.fromkeys(keys, 0.5), "avg_max_toxicity": 0.2}
    evals["fine-grained-s0"] = {**dict.fromkeys(keys, 0.5), "avg_max_toxicity": 0.1}
    evals["fine-grained-s1"] = {**dict.fromkeys(keys, 0.5), "avg_max_toxicity": 0.1}
    curves = {
        # KL ends at 2.0 (holistic, both seeds) and 4.0 (fine-grained): the budget is 2.0
        "holistic-s0": {"eval_samples": [0, 8, 16], "eval_toxicity": [0.5, 0.4, 0.3],
                        "eval_kl": [0.0, 1.0, 2.0], "train_toxicity": [0.5, 0.3]},
        "holistic-s1": {"eval_samples": [0, 8, 16], "eval_toxicity": [0.5, 0.2, 0.1],
                        "eval_kl": [0.0, 1.0, 2.0], "train_toxicity": [0.4, 0.2]},
        "fine-grained-s0": {"eval_samples": [0, 8, 16], "eval_toxicity": [0.5, 0.2, 0.1],
                            "eval_kl": [0.0, 1.9, 4.0]},
        "fine-grained-s1": {"eval_samples": [0, 8, 16], "eval_toxicity": [0.5, 0.3, 0.1],
                            "eval_kl": [0.0, 2.6, 4.0]},
    }
    return evals, curves


def test_summary_by_hand():
    evals, curves = made_up()
    s = summarise(evals, curves, ["holistic", "fine-grained"], [0, 1])
    hol = s["rows"][1]
    # mean of 0.4 and 0.2 = 0.3; sample sd = sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1414
    assert hol["avg_max_toxicity"] == pytest.approx(0.3)
    assert hol["avg_max_toxicity_sd"] == pytest.approx(math.sqrt(0.02))
    assert s["rows"][2]["avg_max_toxicity_sd"] == 0.0
    # AUC = mean of the evaluations after step 0: holistic (0.35, 0.15) -> 0.25;
    # fine-grained (0.15, 0.2) -> 0.175
    assert s["speed"]["holistic"]["auc"][0] == pytest.approx(0.25)
    assert s["speed"]["fine-grained"]["auc"][0] == pytest.approx(0.175)
    # training batches: holistic seed 0 (0.5 + 0.3) / 2 = 0.4, seed 1 (0.4 + 0.2) / 2 = 0.3
    assert s["speed"]["holistic"]["train_mean"][0] == pytest.approx(0.35)
    # budget min(2.0, 4.0) = 2.0: fine-grained seed 0 is read at KL 1.9 (toxicity 0.2), seed 1
    # at 2.6 (|2.6 - 2| = 0.6 < 2.0, toxicity 0.3); holistic at its last evaluation
    assert s["kl_budget"] == pytest.approx(2.0)
    assert [p["toxicity"] for p in s["at_budget"]["fine-grained"]["picks"]] == [0.2, 0.3]
    assert s["at_budget"]["fine-grained"]["toxicity"][0] == pytest.approx(0.25)
    assert s["at_budget"]["holistic"]["toxicity"][0] == pytest.approx(0.2)
    table = markdown_table(s)
    assert "| holistic RLHF | 0.300 ± 0.141 |" in table and "| SFT | 0.500 |" in table


def test_section_has_table_and_plots():
    evals, curves = made_up()
    for c in curves.values():
        c.update(train_samples=c["eval_samples"][1:], train_toxicity=c["eval_toxicity"][1:])
    results = {"config": {**vars(DetoxConfig())}, "methods": ["holistic", "fine-grained"],
               "seeds": [0, 1], "evals": evals, "curves": curves,
               "evals_samples": {n: [{"prompt": "p?", "responses": [f"{n} says hi."],
                                      "toxicity": [0.0]}] for n in evals},
               "summary": summarise(evals, curves, ["holistic", "fine-grained"], [0, 1])}
    section = detox_section(results)
    html = section.html()
    assert section.title.startswith("Detoxification")
    assert html.count("<img") == 2 and "holistic RLHF" in html and "fine-grained-s0 says hi." in html
