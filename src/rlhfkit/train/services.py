"""Frozen models on Ray actors of their own: the reference policy and the reward sources.

With ``--ray auto --ray-ref-actor`` (and/or ``--ray-reward-actor``), :func:`rlhfkit.engines.
placement.run_on_ray` reserves one more bundle for each and starts a :class:`ModelActor` in it
(the trainer hands it the class; placement sits floors below the models);
the trainer processes then hold neither model. Each step, every trainer process sends its
rollout to the actor (a Ray call: the token ids and masks, a few kilobytes) and gets back the
reference's per-token log-probs, or each reward source's scores. This is how OpenRLHF places
its reference and reward models on GPUs apart from the policy; here on CPU it only moves the
memory (the reference's copy of the policy, the reward models) out of the trainer processes.

The actor computes exactly what the trainer would (:func:`rlhfkit.rollout.response_logprobs`
with the run's precision; the sources of :func:`rlhfkit.train.inputs.reward_sources` built from
the run's own options), so a run gives the same rewards and KL with the actors as without.
Only frozen models move: the PPO critic trains, and stays with its optimizer in the trainer.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch

from rlhfkit.engines.placement import ServiceError, service
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.rewards.sources import RewardSource, SourceContext
from rlhfkit.rollout import response_logprobs
from rlhfkit.train.inputs import reward_sources, task_of

__all__ = ["ModelActor", "RemoteReference", "ServiceError", "remote_reference", "remote_sources"]


def _on_cpu(rollout: Any) -> Any:
    """A shallow copy of ``rollout`` with its tensors on the CPU, to send (``to`` moves in place)."""
    return copy.copy(rollout).to("cpu")


def _autocast(bf16: bool, device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


class ModelActor:
    """A frozen model served to the trainer processes (run as a Ray actor).

    :meth:`load_reference` or :meth:`load_rewards` sets it up from the run's config; then
    :meth:`logprobs` / :meth:`score` answer the trainers' calls, one at a time.
    """

    def __init__(self) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.bf16 = False
        self.reference: Any = None
        self.sources: list[Any] = []

    def load_reference(self, cfg: Any, bf16: bool) -> None:
        """The run's reference: ``--reference``, else the starting policy ``--model``.

        With LoRA the trainer's reference is the policy with its adapter off, which is the
        base model ``--model`` too. ``bf16``: the trainer runs its passes under bf16 autocast.
        """
        lm = load_causal_lm(cfg.reference or cfg.model)
        lm.eval()
        lm.requires_grad_(False)
        self.reference = SelectiveLM(lm).to(self.device)
        self.bf16 = bf16

    @torch.no_grad()
    def logprobs(self, rollout: Any, temperature: float, batch_size: int) -> torch.Tensor:
        """(B, R) log-probs of the rollout's sampled tokens under the reference (on CPU)."""
        with _autocast(self.bf16, self.device):
            lp = response_logprobs(self.reference, rollout.to(self.device), temperature,
                                   batch_size)
        return lp.float().cpu()

    def load_rewards(self, cfg: Any, bf16: bool) -> list[dict[str, Any]]:
        """Build the reward sources of ``--reward-model`` and ``--rewards``; their descriptions."""
        self.bf16 = bf16
        tokenizer = load_tokenizer(cfg.model)
        ctx = SourceContext(tokenizer, self.device, self._autocast, cfg.segment_unit,
                            cfg.normalize_reward)
        self.sources = reward_sources(cfg.reward_model, cfg.rewards, ctx, task_of(cfg.data))
        for source in self.sources:
            if isinstance(source.model, torch.nn.Module):
                source.model.to(self.device).eval()
        return [{"name": s.name, "weight": s.weight, "stats": s.stats, "path": s.path}
                for s in self.sources]

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        with _autocast(self.bf16, self.device):
            yield

    @torch.no_grad()
    def score(self, index: int, rollout: Any) -> Any:
        """Source ``index``'s raw scores of the rollout (its ``DenseRewards``)."""
        return self.sources[index].fn(rollout.to(self.device))


class RemoteReference:
    """The trainer's side of a reference on a :class:`ModelActor` (``--ray-ref-actor``).

    Stands where :class:`rlhfkit.rollout.ReferencePolicy` does for the log-probs; it holds no
    model, so nothing of it is moved, sharded or counted in the trainer.
    """

    shared = False
    model = None

    def __init__(self, actor: Any, device: torch.device | str) -> None:
        self.actor, self.device = actor, device

    def logprobs(self, rollout: Any, temperature: float = 1.0,
                 batch_size: int = 16) -> torch.Tensor:
        """(B, R) reference log-probs of the sampled tokens, computed on the actor."""
        import ray

        lp = ray.get(self.actor.logprobs.remote(_on_cpu(rollout), temperature, batch_size))
        return lp.to(self.device)

    def active(self) -> Any:
        """Sampling from the reference in the trainer (Nash-MD's mixture) is not offered."""
        raise ServiceError("this stage samples from the reference in the trainer (Nash-MD's "
                           "mixture with the policy): leave --ray-ref-actor off")


def remote_reference(device: torch.device | str, cfg: Any, bf16: bool) -> RemoteReference:
    """Load the run's reference on its actor and return the trainer's side of it.

    ``bf16``: the trainer's passes run under bf16 autocast, so the actor's do too.
    """
    import ray

    actor = service("reference")
    ray.get(actor.load_reference.remote(cfg, bf16))
    return RemoteReference(actor, device)


def remote_sources(cfg: Any, bf16: bool) -> list[Any]:
    """Build the run's reward sources on their actor; the trainer's side of each, in order."""
    import ray

    actor = service("rewards")
    described = ray.get(actor.load_rewards.remote(cfg, bf16))

    def call(index: int) -> Any:
        def fn(rollout: Any) -> Any:
            return ray.get(actor.score.remote(index, _on_cpu(rollout)))
        return fn

    return [RewardSource(d["name"], call(i), d["weight"], d["stats"], None, d["path"])
            for i, d in enumerate(described)]
