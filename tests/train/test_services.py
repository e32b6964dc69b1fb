"""The model actor (``--ray-ref-actor``, ``--ray-reward-actor``) computes what the trainer would.

The class is used here directly, without Ray: the Ray runs are in tests/engines/test_vllm.py.
"""

from types import SimpleNamespace

import pytest
import torch

from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.rollout import ReferencePolicy, SamplingConfig, sample
from rlhfkit.train.services import ModelActor


@pytest.mark.parametrize("bf16", [False, True])
def test_the_model_actor_gives_the_trainers_reference_logprobs(tiny_lm, bf16):
    tokenizer, lm = load_tokenizer(str(tiny_lm)), load_causal_lm(str(tiny_lm))
    rollout = sample(lm, tokenizer, ["a movie", "the plot"] * 2, SamplingConfig(6, 1.0, 1.0))
    cfg = SimpleNamespace(model=str(tiny_lm), reference=None)
    actor = ModelActor()
    actor.load_reference(cfg, bf16)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16
                else torch.autocast("cpu", enabled=False))
    with autocast:
        expected = ReferencePolicy(lm).logprobs(rollout, 1.0, 2)
    got = actor.logprobs(rollout, 1.0, 2)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert torch.equal(got, expected.float())
    assert got[rollout.response_mask.bool()].lt(0).all()  # real log-probs on the response


def test_the_model_actor_scores_with_the_runs_reward_sources(tiny_lm):
    tokenizer, lm = load_tokenizer(str(tiny_lm)), load_causal_lm(str(tiny_lm))
    rollout = sample(lm, tokenizer, ["a movie", "the plot"], SamplingConfig(6, 1.0, 1.0))
    rollout.texts = ["great and wonderful", "awful and boring"]
    cfg = SimpleNamespace(model=str(tiny_lm), reward_model="scorer:sentiment", rewards="",
                          segment_unit="sentence", normalize_reward=True, data="task:reviews")
    actor = ModelActor()
    described = actor.load_rewards(cfg, False)
    assert [d["name"] for d in described] == [actor.sources[0].name]
    dense = actor.score(0, rollout)
    scores = [sum(v for _, v in row) for row in dense]
    assert scores[0] > scores[1]  # the sentiment scorer, on the actor
