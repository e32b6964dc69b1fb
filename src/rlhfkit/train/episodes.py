"""Multi-turn episodes as one rollout: model turns, environment messages, per-turn rewards.

:func:`run_episodes` plays a batch of episodes with an environment
(:class:`rlhfkit.tasks.environment.Environment`): the policy writes a turn (until its
end-of-turn token, one of the environment's stop strings, or ``max_new_tokens``), the
environment answers with a message, a reward and whether the episode is over, and the next
turn is sampled with the whole conversation so far as its context. The episode is laid out like
any rollout, the prompt left-padded and everything after it right-padded::

    [pad p p p | m m m m | e e e | m m m EOS | pad]
                 turn 1    env     turn 2
    response_mask:  1 1 1 1   0 0 0   1 1 1 1    0

``response_mask`` is 1 on the tokens the policy wrote and 0 on the environment's, so the
policy loss, the KL penalty and the KL metrics only ever see the policy's own tokens, while the
attention mask keeps the environment's tokens in every later token's context. The reward of a
turn lands on that turn's last token (``extras["env_rewards"]``, read by the ``env`` reward
source), so PPO and REINFORCE credit each turn's reward to the tokens before it, as they credit
the rewards after each segment of fine-grained RLHF; the group baselines use the episode's sum.

Extras per episode: ``turns`` (model turns), ``message_roles`` (where each environment
message went: ``tool``, inside the model's turn, or ``user``, a new turn of the chat
template), and each count the environment reports in
:attr:`rlhfkit.tasks.environment.Step.info` (``tool_calls``, ``questions``, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhfkit.config import ConfigError
from rlhfkit.data.chat import encode
from rlhfkit.rewards.plugins import load_object
from rlhfkit.rollout import (
    GenerationBackend,
    HFBackend,
    Rollout,
    SamplingConfig,
    encode_prompts,
    eos_ids_of,
)
from rlhfkit.tasks import task_environments
from rlhfkit.tasks.environment import Environment, Step


@dataclass
class EpisodeOptions:
    """Multi-turn episodes with an environment (``--environment``)."""

    environment: str = ""
    """Multi-turn episodes: a built-in environment (calculator for task:arithmetic-tool,
    clarify for task:arithmetic-clarify) or py:FILE_OR_MODULE:FACTORY; empty = one turn.
    The environment's rewards are the reward source env (--reward-model env)."""
    max_turns: int = 4
    """Most model turns per episode (--max-new-tokens is per turn)."""
    max_env_tokens: int = 64
    """Longest environment message in tokens (longer ones are cut)."""


def episode_budget(cfg: Any) -> int:
    """The most response tokens an episode can take (model turns and environment messages)."""
    if not getattr(cfg, "environment", ""):
        return cfg.max_new_tokens
    return cfg.max_turns * cfg.max_new_tokens + (cfg.max_turns - 1) * (cfg.max_env_tokens + 8)


def build_environment(spec: str) -> Environment:
    """The environment of ``--environment``: a built-in name or ``py:FILE_OR_MODULE:FACTORY``."""
    if spec.startswith("py:"):
        factory = load_object(spec[3:], what="environment")
        return factory()
    known = task_environments()
    if spec not in known:
        raise ConfigError(f"unknown --environment {spec!r}; built in: {', '.join(sorted(known))} "
                          "(or py:FILE_OR_MODULE:FACTORY)")
    return known[spec]()


def chat_turn_text(tokenizer: Any, message: str, closed: bool = True) -> str:
    r"""What the chat template writes between the end of an assistant turn and the next one.

    For ChatML (SmolLM2): ``"\\n<|im_start|>user\\n{message}<|im_end|>\\n<|im_start|>assistant\\n"``.
    ``closed=False`` (the assistant stopped at a stop string, not its end-of-turn token) puts
    the end-of-turn token first, closing the assistant's turn.
    """
    eos = tokenizer.eos_token or ""
    if not getattr(tokenizer, "chat_template", None):
        return ("" if closed else eos) + "\n" + message + "\n"
    base = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    before = tokenizer.apply_chat_template(base, tokenize=False)
    after = tokenizer.apply_chat_template([*base, {"role": "user", "content": message}],
                                          tokenize=False, add_generation_prompt=True)
    cut = before.rfind("y" + eos)
    if cut < 0 or not after.startswith(before[:cut]):
        raise ValueError("the tokenizer's chat template does not continue a conversation as a "
                         "suffix; multi-turn episodes need that")
    return ("" if closed else eos) + after[cut + 1 + len(eos):]


def cut_turn(tokenizer: Any, ids: Sequence[int], eos: set[int], stop: Sequence[str]
             ) -> tuple[list[int], str]:
    """A turn's tokens up to its end, and how it ended: ``eos``, ``stop`` or ``length``.

    The end-of-turn token is kept; a stop string ends the turn at the first token whose prefix
    contains it (what the backend sampled after it is dropped).
    """
    ids = list(ids)
    end = next((i for i, t in enumerate(ids) if t in eos), None)
    body = ids if end is None else ids[:end]
    if stop:
        text = tokenizer.decode(body, skip_special_tokens=True)
        if any(s in text for s in stop):
            for n in range(1, len(body) + 1):
                if any(s in tokenizer.decode(body[:n], skip_special_tokens=True) for s in stop):
                    return body[:n], "stop"
    if end is not None:
        return ids[:end + 1], "eos"
    return ids, "length"


@dataclass
class _Episode:
    """The pieces of one episode as it is played."""

    state: Any
    pieces: list[tuple[list[int], bool]] = dataclasses.field(default_factory=list)
    """(token ids, written by the policy) in order."""
    engine_logprobs: list[float] = dataclasses.field(default_factory=list)
    rewards: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    info: dict[str, float] = dataclasses.field(default_factory=dict)
    roles: list[str] = dataclasses.field(default_factory=list)
    """Where each environment message went (``tool`` or ``user``), in order."""
    turns: int = 0
    ended: bool = False
    done: bool = False

    @property
    def length(self) -> int:
        return sum(len(ids) for ids, _ in self.pieces)

    def ids(self) -> list[int]:
        return [t for ids, _ in self.pieces for t in ids]


def split_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str]:
    """``text`` up to the end of its first stop string, and what follows it.

    A stop string can end inside a token (SmolLM2 writes ``</calc><result>`` as ``</``, ``calc``,
    ``><``, ...), so the turn's last token may carry the first characters of what comes next.
    """
    ends = [text.index(s) + len(s) for s in stop if s in text]
    if not ends:
        return text, ""
    end = min(ends)
    return text[:end], text[end:]


def _answer(ep: _Episode, step: Step, how: str, tokenizer: Any, max_env_tokens: int,
            spill: str = "") -> None:
    """Record the environment's step after a turn; append its message unless the episode ends.

    ``spill``: what the turn's last token wrote past its stop string; a tool message that
    begins with it goes on from there (the policy already wrote those characters).
    """
    ep.rewards.append((ep.length - 1, float(step.reward)))
    for key, value in step.info.items():
        ep.info[key] = ep.info.get(key, 0.0) + float(value)
    if step.done or how == "length":
        ep.done = True
        return
    if step.role == "tool" and how == "stop":
        text = step.message or ""
        if spill and text.startswith(spill):
            text = text[len(spill):]
        ep.roles.append("tool")
    else:
        text = chat_turn_text(tokenizer, step.message or "", closed=how == "eos")
        ep.roles.append("user")
    ep.pieces.append((encode(tokenizer, text)[:max_env_tokens], False))


@torch.no_grad()
def run_episodes(lm: nn.Module, tokenizer: Any, prompts: Sequence[Any],
                 environment: Environment, sampling: SamplingConfig,
                 system_prompt: str | None = None, backend: GenerationBackend | None = None,
                 max_turns: int = 4, max_prompt_tokens: int | None = None,
                 max_env_tokens: int = 64) -> Rollout:
    """Play one episode per prompt; returns them as a :class:`Rollout` (see the module).

    Args:
        lm: The policy's causal LM.
        tokenizer: Its tokenizer (prompts go through the chat template).
        prompts: One prompt per episode (repeat a prompt k times for k episodes).
        environment: Starts the episodes and answers each turn.
        sampling: Per-turn sampling (``max_new_tokens`` per turn); the environment's stop
            strings are added.
        system_prompt: System message added to prompts that have none.
        backend: The generation backend (default :class:`rlhfkit.rollout.HFBackend`).
        max_turns: Most model turns per episode; the last is scored whatever it says.
        max_prompt_tokens: Keep at most this many prompt tokens (the most recent).
        max_env_tokens: Cut longer environment messages to this many tokens.
    """
    backend = backend or HFBackend()
    prompt_ids = encode_prompts(tokenizer, prompts, system_prompt, max_prompt_tokens)
    eos = eos_ids_of(tokenizer)
    stop = tuple(environment.stop) + tuple(sampling.stop)
    episodes = [_Episode(environment.start(p)) for p in prompts]
    base_seed = getattr(backend, "seed", None)
    for turn in range(max_turns):
        live = [i for i, ep in enumerate(episodes) if not ep.done]
        if not live:
            break
        if base_seed is not None:  # another stream each turn, the same for the same seed
            backend.seed = (base_seed + 1_000_033 * turn) % 2**31
        contexts = [prompt_ids[i] + episodes[i].ids() for i in live]
        raw = backend.generate(lm, contexts, sampling, eos, tokenizer.pad_token_id)
        engine = getattr(backend, "last_logprobs", None)
        for j, i in enumerate(live):
            ep = episodes[i]
            ids, how = cut_turn(tokenizer, raw[j], set(eos), stop)
            ep.pieces.append((ids, True))
            if engine is not None:
                ep.engine_logprobs += list(engine[j])[:len(ids)] + [0.0] * (len(ids) - len(engine[j]))
            ep.turns += 1
            ep.ended = how != "length"
            text = tokenizer.decode([t for t in ids if t not in eos], skip_special_tokens=True)
            spill = ""
            if how == "stop":  # the environment reads the turn up to its stop string
                text, spill = split_at_stop(text, stop)
            step = ep.state.step(text, ep.ended)
            if turn == max_turns - 1 and not step.done:
                step = dataclasses.replace(step, done=True, message=None)
            _answer(ep, step, how, tokenizer, max_env_tokens, spill)
    if base_seed is not None:
        backend.seed = base_seed
    rollout = layout_episodes(tokenizer, prompts, prompt_ids, [ep.pieces for ep in episodes],
                              [ep.ended for ep in episodes], eos)
    _attach(rollout, episodes, engine is not None if max_turns else False)
    return rollout.to(next(lm.parameters()).device)


def _attach(rollout: Rollout, episodes: list[_Episode], with_engine: bool) -> None:
    """Per-episode rewards, counts and engine log-probs as the rollout's extras."""
    rollout.extras["env_rewards"] = [list(ep.rewards) for ep in episodes]
    rollout.extras["message_roles"] = [list(ep.roles) for ep in episodes]
    rollout.extras["turns"] = torch.tensor([float(ep.turns) for ep in episodes])
    for key in sorted({k for ep in episodes for k in ep.info}):
        rollout.extras[key] = torch.tensor([ep.info.get(key, 0.0) for ep in episodes])
    if with_engine:
        out = torch.zeros(rollout.response_mask.shape)
        for b, ep in enumerate(episodes):
            positions = rollout.response_mask[b].nonzero().flatten()
            values = torch.nan_to_num(torch.tensor(ep.engine_logprobs[:len(positions)]))
            out[b, positions[:len(values)]] = values
        rollout.extras["engine_logprobs"] = out


def layout_episodes(tokenizer: Any, prompts: Sequence[Any], prompt_ids: Sequence[Sequence[int]],
                    pieces: Sequence[Sequence[tuple[Sequence[int], bool]]],
                    ended: Sequence[bool], eos_token_ids: Sequence[int] = ()) -> Rollout:
    """Lay episodes out as a :class:`Rollout`; ``response_mask`` is 1 on the policy's tokens.

    Args:
        tokenizer: For the pad token and the texts.
        prompts: The prompts.
        prompt_ids: Their ids (chat template applied).
        pieces: Per episode, ``(ids, written by the policy)`` in order.
        ended: Per episode, whether its last turn ended (end of turn or stop string).
        eos_token_ids: Left out of the texts.
    """
    pad_id = tokenizer.pad_token_id
    eos = set(eos_token_ids)
    B, P = len(prompts), max(len(p) for p in prompt_ids)
    R = max(1, max(sum(len(ids) for ids, _ in ep) for ep in pieces))
    input_ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + R), dtype=torch.long)
    response_mask = torch.zeros((B, R), dtype=torch.bool)
    texts = []
    for b, (p, ep) in enumerate(zip(prompt_ids, pieces)):
        input_ids[b, P - len(p):P] = torch.as_tensor(list(p), dtype=torch.long)
        at = 0
        for ids, own in ep:
            n = len(ids)
            if n:
                input_ids[b, P + at:P + at + n] = torch.as_tensor(list(ids), dtype=torch.long)
                response_mask[b, at:at + n] = own
            at += n
        attention_mask[b, P - len(p):P + at] = 1
        flat = [t for ids, _ in ep for t in ids]
        texts.append(tokenizer.decode([t for t in flat if t not in eos],
                                      skip_special_tokens=True))
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Rollout(
        prompts=list(prompts), prompt_ids=[list(p) for p in prompt_ids],
        response_ids=[[t for ids, _ in ep for t in ids] for ep in pieces], texts=texts,
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        response_mask=response_mask, ended=torch.tensor(list(ended), dtype=torch.bool))


def episode_metrics(rollout: Rollout, prefix: str = "episode") -> dict[str, float]:
    """Means of the per-episode counts: ``episode/turns``, ``episode/tool_calls``, ..."""
    if "env_rewards" not in rollout.extras:
        return {}
    out = {}
    for key, value in rollout.extras.items():
        if torch.is_tensor(value) and value.dim() == 1 and key not in ("engine_logprobs",):
            out[f"{prefix}/{key}"] = float(value.float().mean())
    out[f"{prefix}/env_tokens"] = float(
        ((rollout.attention_mask[:, rollout.prompt_width:] > 0) & ~rollout.response_mask.bool())
        .sum(-1).float().mean())
    return out
