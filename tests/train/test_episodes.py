"""Multi-turn episodes: the layout, the masks token by token, the rewards per turn, learning.

A scripted backend and environment play a three-turn episode (a tool call cut at its stop
string, a tool result, a turn, a user follow-up, a final turn); the response mask must be 1 on
exactly the policy's tokens, and the policy loss, the KL and the reference log-probs must not
see the environment's tokens. A tiny model then learns, with REINFORCE on the environment's
per-turn rewards, to say "good" in both turns of a two-turn episode.
"""

from pathlib import Path

import pytest
import torch

from rlhfkit.data.chat import encode
from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.losses import grpo_loss, kl_penalty
from rlhfkit.models.loading import load_causal_lm
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.rewards.shaping import token_rewards
from rlhfkit.rollout import SamplingConfig, encode_prompts, forward_response
from rlhfkit.tasks import get_task
from rlhfkit.tasks.arithmetic import CalculatorEnvironment, ClarifyEnvironment
from rlhfkit.tasks.environment import Environment, Episode, Step
from rlhfkit.train.episodes import chat_turn_text, cut_turn, episode_metrics, run_episodes


class ScriptedBackend:
    """Returns the next scripted turn (as token ids) for every context, recording contexts."""

    def __init__(self, tokenizer, turns):
        self.tokenizer, self.turns, self.calls = tokenizer, turns, []
        self.seed = 7

    def generate(self, model, prompt_ids, sampling, eos, pad):
        turn = len(self.calls)
        self.calls.append([list(p) for p in prompt_ids])
        return [list(self.turns[turn]) for _ in prompt_ids]


class ScriptedEnv(Environment):
    stop = ("</calc>",)

    class _Ep(Episode):
        def __init__(self):
            self.seen = []

        def step(self, text, ended):
            self.seen.append((text, ended))
            if len(self.seen) == 1:
                return Step("<result>5</result>", role="tool", info={"tool_calls": 1})
            if len(self.seen) == 2:
                return Step("more?", reward=0.5, role="user")
            return Step(reward=1.0, done=True)

    def start(self, prompt):
        self.episode = self._Ep()
        return self.episode


@pytest.fixture
def episode(tokenizer):
    eos = tokenizer.eos_token_id
    t1 = encode(tokenizer, "<calc>2+3</calc>") + encode(tokenizer, " junk after the stop")
    t2 = encode(tokenizer, "ok then") + [eos]
    t3 = encode(tokenizer, "Answer: 5") + [eos, 99, 98]  # whatever follows the EOS is dropped
    backend = ScriptedBackend(tokenizer, [t1, t2, t3])
    env = ScriptedEnv()
    rollout = run_episodes(torch.nn.Linear(1, 1), tokenizer, ["What is 2+3?"], env,
                           SamplingConfig(16, 1.0), "sys", backend, max_turns=4)
    return rollout, backend, env


def test_an_episode_is_laid_out_with_the_environment_tokens_masked(tokenizer, episode):
    rollout, backend, env = episode
    eos = tokenizer.eos_token_id
    t1 = encode(tokenizer, "<calc>2+3</calc>")
    e1 = encode(tokenizer, "<result>5</result>")
    t2 = encode(tokenizer, "ok then") + [eos]
    e2 = encode(tokenizer, chat_turn_text(tokenizer, "more?"))
    t3 = encode(tokenizer, "Answer: 5") + [eos]
    # the turn was cut right after the stop string: its first tokens that contain "</calc>"
    assert tokenizer.decode(rollout.response_ids[0][:len(t1)]) == "<calc>2+3</calc>"
    expected = t1 + e1 + t2 + e2 + t3
    assert rollout.response_ids[0] == expected
    assert rollout.input_ids[0, rollout.prompt_width:].tolist() == expected
    own = [1] * len(t1) + [0] * len(e1) + [1] * len(t2) + [0] * len(e2) + [1] * len(t3)
    assert rollout.response_mask[0].int().tolist() == own  # token by token
    assert rollout.attention_mask[0, rollout.prompt_width:].tolist() == [1] * len(expected)
    # each turn's reward on its own last token
    ends = [len(t1) - 1, len(t1 + e1 + t2) - 1, len(expected) - 1]
    assert rollout.extras["env_rewards"] == [[(ends[0], 0.0), (ends[1], 0.5), (ends[2], 1.0)]]
    assert rollout.extras["turns"].tolist() == [3.0]
    assert rollout.extras["tool_calls"].tolist() == [1.0]
    assert rollout.extras["message_roles"] == [["tool", "user"]]  # where each message went
    assert bool(rollout.ended[0])
    # what the environment and the backend saw
    assert env.episode.seen == [("<calc>2+3</calc>", True), ("ok then", True),
                                ("Answer: 5", True)]
    prompt = encode_prompts(tokenizer, ["What is 2+3?"], "sys")[0]
    assert backend.calls[1] == [prompt + t1 + e1]
    assert backend.calls[2] == [prompt + t1 + e1 + t2 + e2]
    assert backend.seed == 7  # restored after the per-turn seeds
    assert episode_metrics(rollout)["episode/env_tokens"] == len(e1) + len(e2)
    assert "user" in rollout.texts[0] and rollout.texts[0].endswith("Answer: 5")


def test_the_loss_the_kl_and_the_reference_never_see_environment_tokens(tiny_lm, episode):
    rollout, _, _ = episode
    own = rollout.response_mask
    model = SelectiveLM(load_causal_lm(str(tiny_lm)))
    out = forward_response(model, rollout)
    assert out["logits"].shape[0] == int(own.sum())  # scored only at the policy's tokens
    assert (out["logprobs"][~own] == 0).all() and (out["logprobs"][own] != 0).all()
    # the KL penalty of every environment token is 0, whatever the two policies say
    ref = out["logprobs"].detach() + torch.randn_like(out["logprobs"])
    rewards, parts = token_rewards(own, out["logprobs"].detach(), ref, 0.1,
                                   dense=[rollout.extras["env_rewards"]])
    assert (parts["kl"][~own] == 0).all() and (parts["kl"][own] != 0).any()
    assert rewards[0].nonzero().flatten().tolist() == own[0].nonzero().flatten().tolist()
    # the GRPO loss (policy term and k3 KL term) has no gradient at environment positions
    logprobs = (torch.randn(own.shape) * 0.1).requires_grad_()
    loss, _ = grpo_loss(logprobs, torch.zeros(own.shape), torch.randn(own.shape),
                        torch.ones(own.shape), own, kl_coef=0.5)
    loss.backward()
    assert (logprobs.grad[~own] == 0).all() and (logprobs.grad[own] != 0).all()
    assert (kl_penalty(logprobs, ref, "k3") * own)[~own].abs().sum() == 0


def test_cut_turn_and_the_chat_turn_text(tokenizer):
    eos = {tokenizer.eos_token_id}
    ids = encode(tokenizer, "a <calc>1+1</calc> b") + [tokenizer.eos_token_id]
    cut, how = cut_turn(tokenizer, ids, eos, ("</calc>",))
    assert how == "stop" and tokenizer.decode(cut).endswith("</calc>")
    assert cut_turn(tokenizer, ids, eos, ()) == (ids, "eos")
    assert cut_turn(tokenizer, ids[:-1], eos, ()) == (ids[:-1], "length")
    text = chat_turn_text(tokenizer, "hi")
    assert text == "\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert chat_turn_text(tokenizer, "hi", closed=False) == "<|im_end|>" + text


def test_a_stop_string_that_ends_inside_a_token_still_makes_a_tool_call(tokenizer):
    """SmolLM2 writes "</calc><result>" as "</", "calc", "><", ...: the turn's last token
    carries the "<" of "<result>". The calculator must still see a call, and its message must
    go on from what the policy already wrote ("result>5</result>", not "<<result>...")."""
    from rlhfkit.train.episodes import split_at_stop

    assert split_at_stop("<calc>2+3</calc><", ("</calc>",)) == ("<calc>2+3</calc>", "<")
    assert split_at_stop("no call", ("</calc>",)) == ("no call", "")
    task = get_task("arithmetic-tool")
    prompt = task.prompts("eval")[0]
    p = task.problem_of(prompt)
    written = encode(tokenizer, f"<calc>{p.expression}</calc><result>")
    assert "><" in [tokenizer.decode([t]) for t in written]  # the stop ends inside "><"
    eos = tokenizer.eos_token_id
    final = encode(tokenizer, f"\nAnswer: {p.answer}") + [eos]
    backend = ScriptedBackend(tokenizer, [written, final])
    rollout = run_episodes(torch.nn.Linear(1, 1), tokenizer, [prompt], CalculatorEnvironment(task),
                           SamplingConfig(16, 1.0), task.system_prompt, backend, max_turns=3)
    assert float(rollout.extras["tool_calls"][0]) == 1.0
    assert rollout.extras["env_rewards"][0][-1][1] == 1.0
    context = tokenizer.decode(backend.calls[1][0])
    assert context.endswith(f"<calc>{p.expression}</calc><result>{p.answer}</result>")


def test_the_calculator_answers_a_call_and_scores_the_final_answer():
    task = get_task("arithmetic-tool")
    prompt = task.prompts("eval")[0]
    p = task.problem_of(prompt)
    episode = CalculatorEnvironment(task, max_calls=1).start(prompt)
    step = episode.step(f"<calc>{p.expression}</calc>", True)
    assert (step.message, step.role, step.done) == (f"<result>{p.answer}</result>", "tool", False)
    assert step.info == {"tool_calls": 1}
    again = episode.step("<calc>1+1</calc>", True)  # over the call budget: a final answer
    assert again.done and again.reward == 0.0
    final = CalculatorEnvironment(task).start(prompt).step(f"\nAnswer: {p.answer}", True)
    assert final.done and final.reward == 1.0
    broken = CalculatorEnvironment(task).start(prompt).step("<calc>2 ** 99</calc>", True)
    assert broken.message == "<result>error</result>"


def test_the_simulated_user_gives_the_missing_number_when_asked():
    task = get_task("arithmetic-clarify")
    prompt = task.prompts("eval")[0]
    p = task.problem_of(prompt)
    episode = ClarifyEnvironment(task).start(prompt)
    step = episode.step(p.ask, True)
    assert (step.message, step.role, step.done, step.info) == (p.detail, "user", False,
                                                              {"questions": 1})
    assert episode.step(f"Answer: {p.answer}", True).reward == 1.0
    guess = ClarifyEnvironment(task).start(prompt).step("Answer: 1", True)
    assert guess.done and guess.reward == 0.0


def test_a_tiny_model_plays_calculator_episodes_on_the_hf_backend(tiny_lm, tokenizer):
    lm = load_causal_lm(str(tiny_lm))
    task = get_task("arithmetic-tool")
    rollout = run_episodes(lm, tokenizer, task.prompts("eval")[:3], CalculatorEnvironment(task),
                           SamplingConfig(8, 1.0), task.system_prompt, max_turns=2)
    assert len(rollout) == 3 and rollout.response_mask.any(-1).all()
    assert ((rollout.attention_mask[:, rollout.prompt_width:] == 0)
            <= ~rollout.response_mask).all()  # padding is never a policy token


# ---------------------------------------------------------------------------------------
# Learning on per-turn rewards
# ---------------------------------------------------------------------------------------


class GoodWordsEnv(Environment):
    """Two turns; each turn's reward is its share of the word "good"."""

    class _Ep(Episode):
        def __init__(self):
            self.turn = 0

        def step(self, text, ended):
            self.turn += 1
            words = text.split()
            reward = sum(w == "good" for w in words) / max(len(words), 1)
            if self.turn == 1:
                return Step("and again", reward=reward, role="user")
            return Step(reward=reward, done=True)

    def start(self, prompt):
        return self._Ep()


def make_env():
    return GoodWordsEnv()


def test_reinforce_raises_the_reward_of_two_turn_episodes(good_bad_sft, tmp_path):
    from rlhfkit.train.trainer import rl_config, train_rl

    env = tmp_path / "good_env.py"
    env.write_text(Path(__file__).read_text())  # this module: make_env is the factory
    out = tmp_path / "reinforce"
    cfg = rl_config("reinforce",
        model=str(good_bad_sft), output_dir=str(out), data="task:reviews", max_steps=8,
        batch_size=8, max_new_tokens=5, learning_rate=2e-3, precision="fp32", progress=False,
        eval_prompts=8, kl_coef=0.01, reward_clip=0.0, report_to="none",
        gradient_checkpointing=False, environment=f"py:{env}:make_env", max_turns=2,
        reward_model="env", gold="none", generation_backend="hf")
    train_rl(cfg)
    rows = read_metrics(out)
    train = [r for r in rows if "reward/score" in r]
    # a turn cut at --max-new-tokens ends its episode; the others get the follow-up
    assert all(1.5 <= r["episode/turns"] <= 2.0 for r in train)
    assert all(r["episode/env_tokens"] > 0 for r in train)
    first = sum(r["reward/score"] for r in train[:2]) / 2
    last = sum(r["reward/score"] for r in train[-2:]) / 2
    assert last > first + 0.3, (first, last)  # the reward of both turns, summed: 0..2
    report = (out / "report.html").read_text()
    assert "Verifiable rewards and episodes" in report and "episode/turns" in report
