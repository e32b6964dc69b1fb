"""Tiny-model runs of the verifiable-reward stages, from the command line and from Python.

- GRPO learns from a reward function given as ``--reward-model py:FILE:FUNCTION``, with the
  DAPO recipe on (clip-higher, token-level loss, dynamic sampling with refills, overlong
  shaping) and the recipe's metrics logged;
- ``rlhfkit self-improve --mode majority`` raises held-out accuracy without labels on a toy
  verifiable task (the majority vote of 5 samples is right more often than one sample, and
  fine-tuning on the agreeing paths moves the policy towards it); ``--mode star`` keeps only
  verified paths; with ``--environment`` the paths are tool-using episodes (a toy tool whose
  answers agree, so the vote picks them and the policy learns to call it), and an environment
  that answers in a new user turn is refused;
- ``rlhfkit accuracy`` reports pass@k, and with ``--environment calculator`` the episode counts;
- best-of-N and the online-DPO labeler take the same plug-in specs.
"""

import random
from pathlib import Path

import pytest

from rlhfkit.cli.main import main
from rlhfkit.data.io import read_records
from rlhfkit.data.records import Demonstration
from rlhfkit.evaluate.runs import read_json, read_metrics, read_rounds
from rlhfkit.tasks import get_task, register_task
from rlhfkit.tasks.environment import Environment, Episode, Step
from rlhfkit.tasks.verifiable import VerifiableTask

REWARDS = '''
def good_share(prompts, completions):
    return [sum(w == "good" for w in c.split()) / max(len(c.split()), 1) for c in completions]

def words(completions):
    return [float(len(c.split())) for c in completions]
'''


def metrics_of(out: Path) -> list[dict]:
    rows = read_metrics(out)
    return [r for r in rows if "reward/score" in r]


def test_grpo_learns_from_a_python_reward_with_the_dapo_recipe(good_bad_sft, tmp_path):
    plugin = tmp_path / "rewards.py"
    plugin.write_text(REWARDS)
    out = tmp_path / "grpo"
    code = main(["grpo", "--model", str(good_bad_sft), "--data", "task:reviews",
                 "--reward-model", f"good=py:{plugin}:good_share,len=py:{plugin}:words",
                 "--rewards", "good=1,len=0", "--dynamic-sampling", "refill",
                 "--max-refill-rounds", "2", "--clip-range-high", "0.28", "--loss-type", "dapo",
                 "--overlong-buffer", "2", "--max-new-tokens", "6", "--num-samples", "4",
                 "--batch-size", "2", "--max-steps", "7", "--learning-rate", "2e-3",
                 "--precision", "fp32", "--kl-coef", "0.04", "--reward-clip", "0",
                 "--no-progress", "--report-to", "none", "--no-gradient-checkpointing",
                 "--generation-backend", "hf", "--gold", "none", "--eval-prompts", "4",
                 "--output-dir", str(out)])
    assert code == 0
    rows = metrics_of(out)
    assert all(0 < r["rlvr/kept_groups"] <= 2 for r in rows)
    assert all(r["rlvr/sampled_groups"] >= 2 for r in rows)
    assert all(r["reward/overlong"] <= 0 for r in rows)  # the shaping term is logged
    assert all("reward/len" in r for r in rows)  # a source of weight 0 is still measured
    first = sum(r["reward/good"] for r in rows[:2]) / 2
    last = sum(r["reward/good"] for r in rows[-2:]) / 2
    assert last > first + 0.15, (first, last)


def test_dynamic_sampling_is_refused_with_async_generation(good_bad_sft, tmp_path, capsys):
    code = main(["grpo", "--model", str(good_bad_sft), "--reward-model", "scorer:length",
                 "--dynamic-sampling", "refill", "--async-generation",
                 "--output-dir", str(tmp_path / "x")])
    assert code == 2  # a bad option: argparse's status
    assert "does not combine with --async-generation" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # not a mode: the parser refuses it
        main(["grpo", "--model", str(good_bad_sft), "--reward-model", "scorer:length",
              "--dynamic-sampling", "sometimes", "--output-dir", str(tmp_path / "y")])
    assert stop.value.code == 2
    assert "--dynamic-sampling: invalid choice: 'sometimes'" in capsys.readouterr().err


class VoteToyTask(VerifiableTask):
    """Every answer should be "good"; the answer is a response's first word."""

    name = "vote-toy"
    system_prompt = None

    def prompts(self, split="train"):
        return get_task("reviews").prompts(split)

    def reference_of(self, prompt):
        return "good"

    def verify(self, reference, response):
        return float(self.extract_answer(response) == reference)

    def extract_answer(self, response):
        words = response.split()
        return words[0] if words else None

    def demonstrations(self):
        """One-word answers, "good" 70% of the time."""
        rng = random.Random(0)
        return [Demonstration(prompt=p, response="good" if rng.random() < 0.7 else "bad")
                for p in self.prompts("train")[:96]]


register_task("vote-toy", VoteToyTask)


def toy_policy(tmp_path_factory, tiny_lm, task: str, steps: int) -> Path:
    """The tiny model fine-tuned on a toy task's demonstrations."""
    from rlhfkit.train.sft import SFTConfig, train_sft

    root = tmp_path_factory.mktemp(task)
    return train_sft(SFTConfig(
        model=str(tiny_lm), data=f"task:{task}", output_dir=str(root / "sft"), max_steps=steps,
        batch_size=16, learning_rate=1e-2, precision="fp32", progress=False, max_length=96,
        eval_fraction=0.0, warmup_ratio=0.0, lr_scheduler="constant", report_to="none",
        gradient_checkpointing=False))


@pytest.fixture(scope="module")
def mostly_right_policy(tmp_path_factory, tiny_lm):
    return toy_policy(tmp_path_factory, tiny_lm, "vote-toy", 30)


def self_improve(policy, out, mode, rounds=2):
    return main(["self-improve", "--model", str(policy), "--data", "task:vote-toy",
                 "--mode", mode, "--rounds", str(rounds), "--problems-per-round", "24",
                 "--samples", "5", "--min-agreement", "0.6", "--max-paths", "1",
                 "--learning-rate", "3e-3", "--epochs", "2", "--batch-size", "8",
                 "--max-new-tokens", "3", "--eval-problems", "32", "--eval-samples", "4",
                 "--generation-backend", "hf", "--precision", "fp32", "--output-dir", str(out)])


def test_self_improvement_by_majority_vote_raises_accuracy_without_labels(
        mostly_right_policy, tmp_path):
    out = tmp_path / "majority"
    assert self_improve(mostly_right_policy, out, "majority") == 0
    rounds = read_rounds(out)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert 0.4 < rounds[0]["eval/pass@1"] < 0.95  # room to improve
    # the vote is right more often than one sample is: what self-consistency relies on
    assert rounds[1]["vote_accuracy"] > rounds[0]["eval/pass@1"] + 0.1
    # ... and than one sample on the same problems, as the round reports it
    assert rounds[1]["vote_accuracy"] > rounds[1]["kept_problem_sample_accuracy"]
    assert 0 < rounds[1]["sample_accuracy"] < 1
    if rounds[1]["kept_problems"] == 1.0:  # every problem kept: the two shares are one
        assert rounds[1]["kept_problem_sample_accuracy"] == rounds[1]["sample_accuracy"]
    assert rounds[-1]["eval/pass@1"] > rounds[0]["eval/pass@1"] + 0.1, rounds
    paths = read_records(out / "round-1" / "paths.jsonl")
    assert paths and len(paths) <= 24 and all(p.source == "ai" for p in paths)
    assert (out / "model" / "config.json").exists()
    report = (out / "report.html").read_text()
    assert "Self-improvement rounds" in report and "eval/pass@1" in report


def test_self_improvement_rounds_skip_the_problems_the_warm_up_was_shown():
    from rlhfkit.train.self_improve import fresh_problems

    task = get_task("arithmetic")
    shown = {d.prompt for d in task.demonstrations()}
    fresh = fresh_problems(task)
    assert len(fresh) == len(task.prompts("train")) - len(shown) and not shown & set(fresh)
    assert fresh[0] == task.prompts("train")[256]  # the demonstrations are the first 256


@pytest.mark.parametrize("voter", ["current", "start"])
def test_self_improvement_votes_with_the_model_the_voter_option_names(mostly_right_policy,
                                                                     tmp_path, monkeypatch,
                                                                     voter):
    from rlhfkit.train import self_improve as si

    voters, real = [], si.collect_round

    def spy(cfg, task, sampler, prompts, round_):
        voters.append(sampler.lm)
        return real(cfg, task, sampler, prompts, round_)

    monkeypatch.setattr(si, "collect_round", spy)
    out = tmp_path / voter
    assert main(["self-improve", "--model", str(mostly_right_policy), "--data", "task:vote-toy",
                 "--voter", voter, "--rounds", "2", "--problems-per-round", "8",
                 "--samples", "3", "--max-paths", "1", "--learning-rate", "3e-3",
                 "--batch-size", "8", "--max-new-tokens", "3", "--eval-problems", "0",
                 "--generation-backend", "hf", "--precision", "fp32",
                 "--output-dir", str(out)]) == 0
    assert len(voters) == 2 and read_rounds(out)[1]["kept_paths"] > 0  # round 1 fine-tuned
    assert (voters[0] is voters[1]) == (voter == "start")


def test_star_keeps_only_the_paths_that_match_the_reference(mostly_right_policy, tmp_path):
    out = tmp_path / "star"
    assert self_improve(mostly_right_policy, out, "star", rounds=1) == 0
    paths = read_records(out / "round-1" / "paths.jsonl")
    assert paths and all(p.response.split()[0] == "good" for p in paths)
    rounds = read_rounds(out)
    assert rounds[1]["vote_accuracy"] == 1.0


TOOL_REPLY = " good good"
"""The toy tool's answer. The demonstrations say "good" once after the call ("look? good"), so
the policy that samples round 1's paths does not write "good good" itself: a kept path that
holds it holds the tool's own message."""


class LookupEpisode(Episode):
    """A tool: a turn that ends in "?" is answered TOOL_REPLY; any other turn is the answer."""

    def step(self, text, ended):
        if text.endswith("?") and ended:
            return Step(TOOL_REPLY, role="tool", info={"tool_calls": 1})
        return Step(done=True)


class LookupEnvironment(Environment):
    name = "toy-lookup"
    stop = ("?",)

    def start(self, prompt):
        return LookupEpisode()


class AskUserEpisode(Episode):
    """Answers every ended turn with "good" as a new user turn (which self-improve refuses)."""

    def step(self, text, ended):
        return Step("good", role="user") if ended else Step(done=True)


class AskUserEnvironment(LookupEnvironment):
    def start(self, prompt):
        return AskUserEpisode()


class ToolVoteToyTask(VoteToyTask):
    """Every answer should be "good"; a path either asks the tool ("look?", answered " good ...")
    or answers at once, wrongly, with one of four words. The answer is the first word after
    the last "?" (the whole path without one)."""

    name = "tool-vote-toy"
    environments = {"toy-lookup": LookupEnvironment, "toy-ask-user": AskUserEnvironment}

    def extract_answer(self, response):
        words = response.rsplit("?", 1)[-1].split()
        return words[0] if words else None

    def demonstrations(self):
        """40% ask the tool; the rest answer bad, poor, no or so (one token each)."""
        rng = random.Random(0)
        return [Demonstration(prompt=p, response="look? good" if rng.random() < 0.4
                              else rng.choice(["bad", "poor", "no", "so"]))
                for p in self.prompts("train")[:120]]


register_task("tool-vote-toy", ToolVoteToyTask)


@pytest.fixture(scope="module")
def sometimes_asks_policy(tmp_path_factory, tiny_lm):
    return toy_policy(tmp_path_factory, tiny_lm, "tool-vote-toy", 100)


def self_improve_with_tool(policy, out, environment="toy-lookup", rounds=2):
    return main(["self-improve", "--model", str(policy), "--data", "task:tool-vote-toy",
                 "--environment", environment, "--max-turns", "2", "--rounds", str(rounds),
                 "--problems-per-round", "24", "--samples", "5", "--min-agreement", "0.4",
                 "--max-paths", "1", "--learning-rate", "3e-3", "--epochs", "2",
                 "--batch-size", "8", "--max-new-tokens", "4", "--eval-problems", "32",
                 "--eval-samples", "4", "--generation-backend", "hf", "--precision", "fp32",
                 "--output-dir", str(out)])


def test_self_improvement_with_a_tool_votes_on_episodes_and_learns_to_call_it(
        sometimes_asks_policy, tmp_path):
    """The tool's paths agree with each other and the others scatter, so the vote picks the
    tool's answer, fine-tuning on the agreeing episodes makes the policy call the tool more,
    and held-out accuracy rises: no reference is read to choose the paths."""
    out = tmp_path / "tool"
    assert self_improve_with_tool(sometimes_asks_policy, out) == 0
    rounds = read_rounds(out)
    start, end = rounds[0], rounds[-1]
    assert 0.2 < start["eval/pass@1"] < 0.8, start  # room to improve
    assert rounds[1]["vote_accuracy"] > start["eval/pass@1"] + 0.1, rounds
    assert rounds[1]["kept_episode/tool_calls"] > rounds[1]["sampled_episode/tool_calls"]
    assert end["eval/episode/tool_calls"] > start["eval/episode/tool_calls"] + 0.1, rounds
    assert end["eval/pass@1"] > start["eval/pass@1"] + 0.1, rounds
    paths = read_records(out / "round-1" / "paths.jsonl")
    # the tool's reply is kept in the path, right after the call it answers. What the policy
    # wrote before its "?" is its own sample ("look?" on one CPU, "?" alone on another), so
    # only the call and the reply are checked; this policy writes " good" after a "?" but not
    # " good good", so a path whose tool message was dropped fails here
    asked = [p.response for p in paths if "?" in p.response]
    assert asked and all(r.split("?", 1)[1].startswith(TOOL_REPLY) for r in asked), asked


def test_self_improvement_refuses_an_environment_that_answers_in_a_user_turn(
        sometimes_asks_policy, tmp_path, capsys):
    code = self_improve_with_tool(sometimes_asks_policy, tmp_path / "user", "toy-ask-user", 1)
    assert code == 2  # the option --environment does not fit the command
    assert "answered in a new user turn" in capsys.readouterr().err


def test_accuracy_reports_pass_at_k_and_episode_counts(tiny_lm, tmp_path):
    out = tmp_path / "acc"
    assert main(["accuracy", "--model", str(tiny_lm), "--data", "task:arithmetic-tool",
                 "--environment", "calculator", "--max-turns", "2", "--max-problems", "4",
                 "--n", "2", "--k", "1,2", "--max-new-tokens", "6", "--generation-backend",
                 "hf", "--precision", "fp32", "--output-dir", str(out)]) == 0
    summary = read_json(out, "accuracy.json")
    assert summary["problems"] == 4 and 0 <= summary["pass@1"] <= summary["pass@2"] <= 1
    assert 1 <= summary["episode/turns"] <= 2 and "greedy" in summary
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4
    assert main(["accuracy", "--model", str(tiny_lm), "--data", "task:reviews",
                 "--output-dir", str(out)]) == 2  # not a verifiable task: one line


def test_best_of_n_and_the_online_dpo_labeler_take_plugin_specs(good_bad_sft, tmp_path):
    plugin = tmp_path / "rewards.py"
    plugin.write_text(REWARDS)
    out = tmp_path / "bon"
    assert main(["best-of-n", "--model", str(good_bad_sft), "--reward-model",
                 f"py:{plugin}:good_share", "--n", "4", "--max-prompts", "6",
                 "--max-new-tokens", "6", "--precision", "fp32", "--no-progress",
                 "--generation-backend", "hf", "--gold", "none", "--output-dir", str(out)]) == 0
    summary = read_json(out)
    assert summary["reward/best"] >= summary["reward/first"]
    out = tmp_path / "online"  # reward:SPEC labels with the loop's reward source
    assert main(["online-dpo", "--model", str(good_bad_sft), "--labeler",
                 f"reward:py:{plugin}:words", "--max-steps", "1", "--batch-size", "2",
                 "--num-samples", "4", "--max-new-tokens", "6", "--eval-prompts", "0",
                 "--precision", "fp32", "--no-progress", "--generation-backend", "hf",
                 "--gold", "none", "--output-dir", str(out)]) == 0
    labels = read_records(out / "labels.jsonl")
    assert labels and all(x.annotator.startswith("reward:py:") for x in labels)
    for ranking in labels:
        assert ranking.scores == [float(len(r.split())) for r in ranking.responses]
