"""The algorithm registry: entries are commands, options are checked, a user's algorithm trains.

Also the fixes the one loop brought: RL refuses ``--temperature 0`` (it sampled greedily but
scored at temperature 1), and Nash-MD's opponent samples with the run's top-k/top-p.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch

from rlhfkit.cli.main import BY_NAME, main
from rlhfkit.config import ConfigError
from rlhfkit.train.algorithms import ALGORITHMS, Update, get_algorithm
from rlhfkit.train.estimators import reinforce_objective
from rlhfkit.train.trainer import TrainRLConfig, rl_config

EXAMPLE = Path(__file__).parents[2] / "examples" / "custom_algorithm.py"
CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="a refusal on machines "
                              "without CUDA")


def test_every_algorithm_of_the_registry_is_a_command_running_the_one_loop():
    for name in ALGORITHMS:
        command = BY_NAME[name]
        assert command.load("config") is TrainRLConfig
        assert command.run == "rlhfkit.train.trainer:train_rl"
        assert command.fixed == {"algo": name}
    assert BY_NAME["rl"].load("config") is TrainRLConfig


def test_an_algorithm_s_defaults_apply_where_the_user_set_nothing():
    grpo = rl_config("grpo", model="m")
    assert (grpo.num_samples, grpo.batch_size, grpo.kl_coef, grpo.output_dir) == \
        (4, 4, 0.04, "runs/grpo")
    ppo = rl_config("ppo", model="m", batch_size=8)
    assert (ppo.batch_size, ppo.mini_batch_size, ppo.update_epochs, ppo.whiten_advantages) == \
        (8, 8, 2, True)
    assert rl_config("grpo", num_samples=8).num_samples == 8


def _update(logprobs, old, adv, on_policy):
    mask = torch.ones_like(old, dtype=torch.bool)
    return Update(logprobs=logprobs, old_logprobs=old, ref_logprobs=old, advantages=adv,
                  mask=mask, on_policy=on_policy, kl_coef=0.0, normalizer=1.0,
                  cfg=rl_config("reinforce", clip_range=0.2))


def test_reinforce_on_reused_samples_weights_tokens_by_the_clipped_ratio():
    """pi(y) = 0.6 where the sampler had 0.4: ratio 1.5, past 1 + eps = 1.2 with A = 1.

    On fresh samples (one pass) the loss is -A log pi and its gradient -A. On reused samples
    (the second epoch, another mini-batch) the clipped surrogate gives the token no gradient:
    it has already moved as far as the clip allows.
    """
    old = torch.log(torch.tensor([[0.4]]))
    adv = torch.ones(1, 1)
    logp = torch.log(torch.tensor([[0.6]])).requires_grad_()
    loss, _ = reinforce_objective(_update(logp, old, adv, on_policy=True))
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(0.6))
    assert logp.grad.item() == pytest.approx(-1.0)
    logp.grad = None
    loss, metrics = reinforce_objective(_update(logp, old, adv, on_policy=False))
    loss.backward()
    assert loss.item() == pytest.approx(-1.2)
    assert logp.grad.item() == 0.0 and metrics["policy/clipfrac"].item() == 1.0


# ------------------------------------------------------------------ options


@pytest.mark.parametrize(("algo", "values", "message"), [
    ("grpo", {"lam": 0.9}, "--lam is not an option of grpo (it is read by ppo)"),
    ("ppo", {"loss_type": "dr_grpo"}, "--loss-type is not an option of ppo"),
    ("grpo", {"num_samples": 1}, "grpo needs --num-samples >= 2, got 1"),
    ("rloo", {"temperature": 0.0}, "--temperature must be > 0 for RL"),
    ("ppo", {"kl_coef": -1.0}, "--kl-coef must be >= 0, got -1.0"),
    ("nash", {"mixture_beta": 1.5}, "--mixture-beta must be >= 0 and <= 1, got 1.5"),
    ("ppo", {"gamma": 2.0}, "--gamma must be >= 0 and <= 1, got 2.0"),
    pytest.param("grpo", {"vllm_sleep": 1}, "--vllm-sleep needs CUDA", marks=CPU_ONLY),
    pytest.param("grpo", {"vllm_tensor_parallel_size": 2},
                 "--vllm-tensor-parallel-size needs CUDA", marks=CPU_ONLY),
    ("grpo", {"vllm_gpu_memory_utilization": 1.5}, "--vllm-gpu-memory-utilization must be > 0 "
                                                   "and <= 1"),
])
def test_bad_options_are_one_sentence_before_anything_loads(algo, values, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("+", r"\+")):
        rl_config(algo, model="does-not-exist", **values)


@pytest.mark.parametrize("argv", [
    ["grpo", "--temperature", "0"],
    ["ppo", "--kl-coef", "-1"],
    ["rl", "--algo", "grpo", "--lam", "0.5"],
    ["rl", "--algo", "nope"],
])
def test_a_bad_value_on_an_rl_command_is_one_line_and_exit_code_2(argv, capsys, tmp_path):
    code = main([*argv, "--model", str(tmp_path / "missing"), "--output-dir",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith(f"rlhfkit {argv[0]}: error: --")
    assert not (tmp_path / "out").exists()  # nothing started


def test_temperature_zero_used_to_train_online_dpo_and_is_refused_now(tmp_path, capsys):
    """``online-dpo --temperature 0`` sampled every response of a prompt alike (no pair to
    learn from) and trained anyway."""
    code = main(["online-dpo", "--temperature", "0", "--model", str(tmp_path / "m"),
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2 and "--temperature must be > 0" in capsys.readouterr().err


def test_an_algorithm_s_command_shows_only_its_own_options(capsys):
    with pytest.raises(SystemExit):
        main(["grpo", "--help"])
    grpo = capsys.readouterr().out
    assert "--loss-type" in grpo and "--lam " not in grpo and "--algo" not in grpo
    assert "--num-samples" in grpo and "[default: 4; >= 1]" in grpo
    with pytest.raises(SystemExit):
        main(["rl", "--help"])
    every = capsys.readouterr().out
    assert "--lam" in every and "--loss-type" in every and "--algo" in every


def test_a_yaml_file_of_another_algorithm_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("algo: ppo\n")
    assert main(["grpo", "--config", str(tmp_path / "c.yaml"), "--model", "x"]) == 2


# ------------------------------------------------------------------ py:FILE.py:NAME


def test_a_user_file_registers_an_algorithm():
    algo = get_algorithm(f"py:{EXAMPLE}:loo_median")
    assert algo.name == "loo_median" and algo.source == str(EXAMPLE.resolve())
    cfg = rl_config(f"py:{EXAMPLE}:loo_median", model="m")
    assert (cfg.num_samples, cfg.output_dir) == (4, "runs/loo_median")


def test_the_median_baseline_by_hand():
    """Returns 1, 2, 3, 10 in one group: each response's baseline is the median of the other
    three, (2, 3, 10) -> 3, (1, 3, 10) -> 3, (1, 2, 10) -> 2, (1, 2, 3) -> 2; advantages
    -2, -1, 1, 8 on every response token."""
    from rlhfkit.train.algorithms import AdvantageInputs

    algo = get_algorithm(f"py:{EXAMPLE}:loo_median")
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]], dtype=torch.bool)
    rewards = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 2.0], [4.0, 6.0]])
    batch = AdvantageInputs(rewards, rewards.sum(-1), mask, None, 4, 0.0, None)
    adv = algo.advantage_fn()(batch).advantages
    assert torch.equal(adv, torch.tensor([[-2.0, -2.0], [-1.0, 0.0], [1.0, 1.0], [8.0, 8.0]]))


def _user_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "algo.py"
    path.write_text("from rlhfkit.train.algorithms import *\n" + textwrap.dedent(body))
    return path


@pytest.mark.parametrize(("body", "message"), [
    ("", "registers no algorithm, advantage estimator or policy loss named 'mine' (it "
         "registers nothing"),
    ("@register_advantage('other')\ndef f(b):\n    return b.rewards\n",
     "registers no algorithm, advantage estimator or policy loss named 'mine' (it registers "
     "other)"),
    ("@register_advantage('mine')\ndef f(batch, extra):\n    return batch\n",
     "advantage estimator 'mine' must take one argument (an AdvantageInputs), but its "
     "signature is (batch, extra)"),
    ("@register_policy_loss('mine')\ndef f():\n    return 0\n",
     "policy loss 'mine' must take one argument (an Update), but its signature is ()"),
    ("raise RuntimeError('boom')\n", "importing .* failed: RuntimeError: boom"),
])
def test_a_bad_user_file_is_one_clear_sentence(tmp_path, body, message):
    path = _user_file(tmp_path, body)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_algorithm(f"py:{path}:mine")


def test_a_missing_file_or_name_is_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="no file"):
        get_algorithm(f"py:{tmp_path}/none.py:x")
    with pytest.raises(ConfigError, match="expected py:FILE.py:NAME"):
        get_algorithm("py:only-a-file.py")
    with pytest.raises(ConfigError, match="no algorithm named 'ppo2'; the algorithms are ppo"):
        get_algorithm("ppo2")


def test_an_estimator_of_the_wrong_shape_fails_with_its_name(tmp_path, good_bad_policy):
    from good_bad import good_share, rl_common
    from rlhfkit.train.trainer import train_rl

    path = _user_file(tmp_path, "@register_advantage('flat')\ndef f(b):\n"
                                "    return b.scores\n")
    cfg = rl_config(f"py:{path}:flat", **rl_common(good_bad_policy, tmp_path / "out",
                                                    max_steps=1, num_samples=2, batch_size=2))
    with pytest.raises(ConfigError, match=r"the advantage estimator of 'flat' \(.*algo.py\) "
                                          r"returned advantages of shape \(4,\); expected"):
        train_rl(cfg, reward_fn=good_share)


def test_the_example_algorithm_trains_from_the_cli_and_learns(good_bad_policy, tmp_path):
    """``rlhfkit rl --algo py:examples/custom_algorithm.py:loo_median`` on the tiny policy: the
    share of "good" words (a py: reward) rises while the KL stays bounded."""
    from good_bad import SYSTEM, assert_learned

    reward = tmp_path / "reward.py"
    reward.write_text("def good(completions):\n    return [sum(w == 'good' for w in t.split())"
                      " / max(len(t.split()), 1) for t in completions]\n")
    out = tmp_path / "run"
    code = main(["rl", "--algo", f"py:{EXAMPLE}:loo_median", "--model", str(good_bad_policy),
                 "--reward-model", f"py:{reward}:good", "--output-dir", str(out),
                 "--max-steps", "6", "--batch-size", "2", "--num-samples", "4",
                 "--max-new-tokens", "6", "--learning-rate", "2e-3", "--precision", "fp32",
                 "--no-progress", "--eval-prompts", "8", "--kl-coef", "0.01",
                 "--reward-clip", "0", "--system-prompt", SYSTEM, "--report-to", "none",
                 "--no-gradient-checkpointing", "--no-normalize-reward"])
    assert code == 0
    assert_learned(out)


# ------------------------------------------------------------------ Nash-MD's opponent


def test_nash_opponent_samples_with_the_run_s_top_k(tiny_lm, tokenizer):
    """With top-k 1 the opponent's mixture is sampled greedily: two draws with different seeds
    give the same responses (before the fix it sampled from every token, whatever --top-k)."""
    from rlhfkit.models.loading import load_causal_lm
    from rlhfkit.rollout import ReferencePolicy, SamplingConfig, encode_prompts
    from rlhfkit.train.nash import sample_mixture

    lm = load_causal_lm(str(tiny_lm)).eval()
    reference = ReferencePolicy(lm, None)
    ids = encode_prompts(tokenizer, ["Review: the film", "Review: a book"], None, 32)
    draws = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        draws.append(sample_mixture(lm, reference.active, tokenizer, ids, 0.5,
                                    SamplingConfig(8, 1.0, 1.0, 1)))
    assert draws[0] == draws[1]
    free = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        free.append(sample_mixture(lm, reference.active, tokenizer, ids, 0.5,
                                   SamplingConfig(8, 1.0, 1.0, 0)))
    assert free[0] != free[1]  # without top-k the two seeds differ (the test can tell)
