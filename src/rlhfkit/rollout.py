"""Rollouts: sample responses from the policy and score the sampled tokens.

A rollout of B prompts is laid out as one (B, P + R) tensor: the prompts left-padded to width
P, then the responses right-padded to width R::

    [pad pad p p p p | r r r EOS pad]
    [p p p p p p     | r r r r   r  ]   <- never ended: hit max_new_tokens

``response_mask`` (B, R) is 1 on exactly the response tokens up to and including the first EOS;
``ended`` (B,) says whether an EOS (or stop string) was produced. Position ids count real tokens
only, so a left-padded row is scored exactly as it was sampled.

Sampling goes through a :class:`GenerationBackend`: HF ``generate`` with a KV cache
(:class:`HFBackend`), or a vLLM engine (:class:`rlhfkit.engines.vllm.VLLMBackend`), chosen by
:func:`make_backend` (``--generation-backend auto|hf|vllm``). The log-probs of the sampled
tokens are then recomputed with a plain forward pass at the sampling temperature (logits only at
response positions), which is what the policy-gradient losses differentiate; an engine's own
log-probs are kept beside them (``extras["engine_logprobs"]``) to measure the gap.

The reference policy is the same weights with the LoRA adapter switched off when the policy
is a LoRA model (no second copy in memory), else a frozen copy (:class:`ReferencePolicy`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from rlhfkit.config import ConfigError, only
from rlhfkit.data.chat import encode, pad, prompt_text, repeats
from rlhfkit.engines.remote import KEY_ENV, EngineClient, RemoteBackend, start_local_engines
from rlhfkit.engines.vllm import VLLMBackend, VLLMEngine, engine_problem
from rlhfkit.losses import token_logprobs
from rlhfkit.models.loading import (
    checkpoint_weights,
    load_causal_lm,
    load_tokenizer,
    resolve,
    resolve_precision,
)
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.options import SamplingOptions


def cache_kwarg(model: nn.Module, method: str = "forward") -> str:
    """Name of the KV-cache argument of ``model.forward`` (or ``model.generate``).

    transformers 5.x renames ``past_key_values`` to ``cache`` with a decorator that warns on the
    old name until a later release removes it; ``cache`` is not in the signature (it may come
    through ``**kwargs``), so we look for the decorator. Older releases take
    ``past_key_values``.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    return _cache_kwarg_of(getattr(type(base), method))


@functools.cache
def _cache_kwarg_of(fn: Any) -> str:
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 6:
        return "cache"
    while fn is not None:
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
        if "old_name" in cells and "new_name" in cells \
                and cells["old_name"].cell_contents == "past_key_values" \
                and cells["new_name"].cell_contents == "cache":
            return "cache"
        fn = getattr(fn, "__wrapped__", None)
    return "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned (``out.cache`` in newer transformers)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


@dataclass
class SamplingConfig(only(SamplingOptions, "max_new_tokens", "temperature", "top_p", "top_k")):
    """How responses are sampled: the sampling options (declared in ``options.py``), and stops."""

    stop: tuple[str, ...] = ()
    """Strings that end a response (cut after the first one; the response counts as ended)."""


class GenerationBackend(Protocol):
    """Something that samples continuations of token-id prompts."""

    def generate(
        self,
        model: nn.Module,
        prompt_ids: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
    ) -> list[list[int]]:
        """Return the new tokens of each prompt (any tokens after the first EOS are ignored)."""
        ...


class HFBackend:
    """Batched sampling with transformers' ``generate``: left padding and a KV cache.

    When every prompt comes k times in a row (k samples per prompt, as the group baselines ask for),
    the prompts are run through the model once each and their KV cache is repeated k times
    before decoding, instead of prefilling every copy (``share_prompts``).

    Args:
        autocast: Run generation under this ``torch.autocast`` dtype (e.g. ``torch.bfloat16``),
            or None for the model's own precision.
        share_prompts: Prefill repeated prompts once.
    """

    def __init__(self, autocast: torch.dtype | None = None, share_prompts: bool = True) -> None:
        self.autocast = autocast
        self.share_prompts = share_prompts
        self.synced = False
        """Decode in step with the other processes (``synced_gpus``) and on the model itself:
        set for a sharded (FSDP2) model, whose every forward is a collective."""
        self._copy: nn.Module | None = None
        self._copy_of: int | None = None

    def _generation_model(self, model: nn.Module, device: torch.device) -> tuple[nn.Module, Any]:
        """The module to decode with and the context to decode in.

        On a GPU, autocast is cheap. On a CPU it re-casts every weight to bf16 at every decode
        step, which made sampling ~3x *slower* than plain fp32 here (SmolLM2-135M, 8 x 32 new
        tokens). So on CPU we decode with a bf16 copy of the parameters, refreshed in place from
        the fp32 weights at each call (one cast per rollout instead of one per token); buffers
        such as the rotary frequencies stay fp32. The sampled tokens come from the bf16 weights;
        their log-probs are recomputed afterwards by the training model, as the RL losses need.
        """
        if self.autocast is None:
            return model, contextlib.nullcontext()
        if device.type != "cpu" or self.synced:  # a sharded model is not copied
            return model, torch.autocast(device.type, dtype=self.autocast)
        if self._copy is None or self._copy_of != id(model):
            self._copy = copy.deepcopy(model)
            for p in self._copy.parameters():
                p.requires_grad_(False)
                p.data = p.data.to(self.autocast)
            self._copy_of = id(model)
        else:
            with torch.no_grad():
                for dst, src in zip(self._copy.parameters(), model.parameters()):
                    dst.copy_(src)
        return self._copy, contextlib.nullcontext()

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        prompt_ids: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
    ) -> list[list[int]]:
        """Sample one continuation per prompt; see :class:`GenerationBackend`."""
        from transformers import GenerationConfig

        device = next(model.parameters()).device
        ids, mask = pad(prompt_ids, pad_token_id, side="left")
        greedy = sampling.temperature <= 0
        # A fresh config, so nothing from the model's generation_config (a default temperature,
        # top-k 50, a repetition penalty) silently changes the distribution we sample from:
        # the log-probs we recompute later must be those of the tokens' true distribution.
        gen_cfg = GenerationConfig(
            do_sample=not greedy,
            temperature=1.0 if greedy else sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=list(eos_token_ids),
            pad_token_id=pad_token_id,
            use_cache=True,
        )
        was_training = model.training
        model.eval()
        decoder, ctx = self._generation_model(model, device)
        decoder.eval()
        k = repeats(prompt_ids) if self.share_prompts else 1
        with ctx:
            extra = {}
            if k > 1 and ids.shape[1] > 1:
                cache = self._prefill(decoder, ids[::k].to(device), mask[::k].to(device), k)
                extra[cache_kwarg(decoder, "generate")] = cache
            if self.synced:
                extra["synced_gpus"] = True
            out = decoder.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                   generation_config=gen_cfg, **extra)
        model.train(was_training)
        return out[:, ids.shape[1]:].tolist()

    @staticmethod
    def _prefill(decoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, k: int) -> Any:
        """KV cache of all but the last prompt token of each distinct prompt, repeated k times.

        ``generate`` then runs only the last prompt token and the new ones. Positions count
        real tokens, as ``generate`` numbers them for left-padded rows.
        """
        from transformers import DynamicCache

        cache = DynamicCache()
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        decoder(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                position_ids=position_ids[:, :-1], use_cache=True, logits_to_keep=1,
                **{cache_kwarg(decoder): cache})
        cache.batch_repeat_interleave(k)
        return cache


@dataclass
class Rollout:
    """B sampled responses and their log-probs; see the module docstring for the layout."""

    prompts: list[Any]
    """The B prompts (text or chat messages), one per response (repeated for k samples)."""
    prompt_ids: list[list[int]]
    """Token ids of each prompt (chat template applied)."""
    response_ids: list[list[int]]
    """Token ids of each response, up to and including the EOS when it ended."""
    texts: list[str]
    """Decoded responses, without the EOS token."""
    input_ids: torch.Tensor
    """(B, P + R) prompt (left-padded) then response (right-padded)."""
    attention_mask: torch.Tensor
    """(B, P + R) 1 on real tokens."""
    position_ids: torch.Tensor
    """(B, P + R) positions counting real tokens only."""
    response_mask: torch.Tensor
    """(B, R) bool, True on response tokens up to and including EOS."""
    ended: torch.Tensor
    """(B,) bool, True where the response ended with EOS or a stop string."""
    logprobs: torch.Tensor | None = None
    """(B, R) log-probs of the sampled tokens at sampling time (0 on padding)."""
    ref_logprobs: torch.Tensor | None = None
    """(B, R) log-probs of the same tokens under the reference policy."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Per-sample tensors a trainer attaches (scores, values, advantages, ...)."""
    packed: bool = False
    """Forward passes take the rows packed into one, without padding (:meth:`model_inputs`)."""

    @property
    def prompt_width(self) -> int:
        """P, the width of the left-padded prompt block."""
        return self.input_ids.shape[1] - self.response_mask.shape[1]

    @property
    def target_mask(self) -> torch.Tensor:
        """(B, P + R) True at the response tokens, the positions a forward pass must score."""
        pre = torch.zeros(self.response_mask.shape[0], self.prompt_width, dtype=torch.bool,
                          device=self.response_mask.device)
        return torch.cat([pre, self.response_mask.bool()], dim=1)

    def model_inputs(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                    torch.Tensor]:
        """``(input_ids, attention_mask, target_mask, position_ids)`` of a forward pass.

        Padded: the (B, P + R) tensors as they are. :attr:`packed`: the real tokens of every
        row back to back in one row (1, L), positions restarting at 0 with each sequence and no
        attention mask, so that transformers keeps each sequence to itself (a block-diagonal
        causal mask; flash-attention's variable-length kernels on GPU) and no compute goes to
        padding. The targets come out in the same order either way (row by row, left to
        right), so a model that returns its outputs at the N targets returns the same N.
        """
        if not self.packed:
            return self.input_ids, self.attention_mask, self.target_mask, self.position_ids
        real = self.attention_mask.bool()
        return (self.input_ids[real][None], None, self.target_mask[real][None],
                self.position_ids[real][None])

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) number of response tokens (EOS included)."""
        return self.response_mask.sum(-1)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: Sequence[int] | torch.Tensor) -> Rollout:
        """The sub-rollout of the rows in ``index`` (tensors and lists alike)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        rows = idx.tolist()
        values: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "extras":
                values[f.name] = {k: x[idx.to(x.device)] if torch.is_tensor(x) else
                                  [x[i] for i in rows] for k, x in v.items()}
            elif torch.is_tensor(v):
                values[f.name] = v[idx.to(v.device)]
            elif isinstance(v, list):
                values[f.name] = [v[i] for i in rows]
            else:
                values[f.name] = v
        return Rollout(**values)

    def trimmed(self) -> Rollout:
        """The same rows without the columns that are padding in every one of them.

        A micro-batch of short sequences then runs a forward as narrow as its longest: the
        leading prompt columns no row uses and the trailing response columns after every
        row's end go (positions count real tokens, so no token's position changes). Per-token
        (B, R) tensors, ``extras`` included, lose the same response columns.
        """
        width, resp = self.prompt_width, self.response_mask.shape[1]
        used = self.attention_mask[:, :width].bool().any(0)
        first = int(used.int().argmax()) if bool(used.any()) else width
        ends = self.response_mask.bool().any(0).nonzero()
        keep = int(ends.max()) + 1 if ends.numel() else 0
        if first == 0 and keep == resp:
            return self

        def cut(x: Any) -> Any:
            if not torch.is_tensor(x) or x.dim() != 2:
                return x
            if x.shape[1] == width + resp:
                return x[:, first:width + keep]
            return x[:, :keep] if x.shape[1] == resp else x

        values = {f.name: cut(getattr(self, f.name)) for f in fields(self) if f.name != "extras"}
        return Rollout(**values, extras={k: cut(v) for k, v in self.extras.items()})

    def to(self, device: torch.device | str) -> Rollout:
        """The same rollout with every tensor on ``device``."""
        for f in fields(self):
            v = getattr(self, f.name)
            if torch.is_tensor(v):
                setattr(self, f.name, v.to(device))
        self.extras = {k: v.to(device) if torch.is_tensor(v) else v
                       for k, v in self.extras.items()}
        return self


def concat_rollouts(rollouts: Sequence[Rollout], pad_id: int) -> Rollout:
    """One rollout of several (sampled apart, so their prompt and response widths differ).

    Prompts are re-padded on the left to the widest, responses (and every (B, R) tensor:
    ``logprobs``, ``ref_logprobs``, per-token extras) on the right; position ids are
    recomputed from the attention mask, as :func:`build_rollout` makes them.
    """
    if len(rollouts) == 1:
        return rollouts[0]
    P = max(r.prompt_width for r in rollouts)
    R = max(r.response_mask.shape[1] for r in rollouts)

    def widen(x: torch.Tensor, width: int, fill: Any, left: bool = False) -> torch.Tensor:
        extra = width - x.shape[1]
        if extra == 0:
            return x
        pad_block = torch.full((x.shape[0], extra, *x.shape[2:]), fill, dtype=x.dtype,
                               device=x.device)
        return torch.cat([pad_block, x] if left else [x, pad_block], dim=1)

    def both(r: Rollout, x: torch.Tensor, fill: Any) -> torch.Tensor:
        w = r.prompt_width
        return torch.cat([widen(x[:, :w], P, fill, left=True), widen(x[:, w:], R, fill)], 1)

    input_ids = torch.cat([both(r, r.input_ids, pad_id) for r in rollouts])
    attention_mask = torch.cat([both(r, r.attention_mask, 0) for r in rollouts])

    def per_token(x: Any, r: Rollout) -> Any:
        is_token = torch.is_tensor(x) and x.dim() >= 2 and x.shape[1] == r.response_mask.shape[1]
        return widen(x, R, 0) if is_token else x

    def join(values: list[Any]) -> Any:
        if any(v is None for v in values):
            return None
        if torch.is_tensor(values[0]):
            return torch.cat(values)
        return [item for v in values for item in v]

    extras = {k: join([per_token(r.extras[k], r) for r in rollouts])
              for k in rollouts[0].extras if all(k in r.extras for r in rollouts)}
    return Rollout(
        prompts=join([r.prompts for r in rollouts]),
        prompt_ids=join([r.prompt_ids for r in rollouts]),
        response_ids=join([r.response_ids for r in rollouts]),
        texts=join([r.texts for r in rollouts]), input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
        response_mask=torch.cat([widen(r.response_mask, R, False) for r in rollouts]),
        ended=torch.cat([r.ended for r in rollouts]),
        logprobs=join([None if r.logprobs is None else widen(r.logprobs, R, 0)
                       for r in rollouts]),
        ref_logprobs=join([None if r.ref_logprobs is None else widen(r.ref_logprobs, R, 0)
                           for r in rollouts]),
        extras=extras)


def eos_ids_of(tokenizer: Any) -> list[int]:
    """Token ids that end a response: the tokenizer's EOS (the chat end-of-turn for SmolLM2)."""
    ids = {tokenizer.eos_token_id}
    vocab = tokenizer.get_vocab()  # builds a dict of the whole vocabulary: once, not per name
    for name in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        if name in vocab:
            ids.add(vocab[name])
    return sorted(i for i in ids if i is not None)


def _cut_at_stop(tokenizer: Any, ids: list[int], stop: Sequence[str]) -> tuple[list[int], bool]:
    """Shortest prefix of ``ids`` whose text contains a stop string (if any does)."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if not any(s in text for s in stop):
        return ids, False
    for n in range(1, len(ids) + 1):
        if any(s in tokenizer.decode(ids[:n], skip_special_tokens=True) for s in stop):
            return ids[:n], True
    return ids, False


def build_rollout(
    tokenizer: Any,
    prompts: Sequence[Any],
    prompt_ids: Sequence[Sequence[int]],
    raw_responses: Sequence[Sequence[int]],
    eos_token_ids: Sequence[int],
    stop: Sequence[str] = (),
) -> Rollout:
    """Lay prompts and raw sampled tokens out as a :class:`Rollout` (no log-probs yet).

    Each raw response is cut after its first EOS (kept, and counted in the mask) or stop
    string; whatever a backend produced after that (padding, more tokens) is dropped.
    """
    eos = set(eos_token_ids)
    pad_id = tokenizer.pad_token_id
    responses, ended = [], []
    for raw in raw_responses:
        ids = list(raw)
        cut = next((i for i, t in enumerate(ids) if t in eos), None)
        done = cut is not None
        if done:
            ids = ids[: cut + 1]
        if stop:
            body = ids[:-1] if done else ids
            body, hit = _cut_at_stop(tokenizer, body, stop)
            if hit:
                ids, done = body, True
        responses.append(ids)
        ended.append(done)
    B = len(responses)
    P = max(len(p) for p in prompt_ids)
    R = max(1, max(len(r) for r in responses))
    input_ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + R), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, responses)):
        input_ids[i, P - len(p):P] = torch.as_tensor(p, dtype=torch.long)
        attention_mask[i, P - len(p):P] = 1
        if r:
            input_ids[i, P:P + len(r)] = torch.as_tensor(r, dtype=torch.long)
            attention_mask[i, P:P + len(r)] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P + R)
    response_mask = attention_mask[:, P:].bool()  # (B, R)
    texts = [tokenizer.decode([t for t in r if t not in eos], skip_special_tokens=True)
             for r in responses]
    return Rollout(
        prompts=list(prompts), prompt_ids=[list(p) for p in prompt_ids], response_ids=responses,
        texts=texts, input_ids=input_ids, attention_mask=attention_mask,
        position_ids=position_ids, response_mask=response_mask,
        ended=torch.tensor(ended, dtype=torch.bool),
    )


def encode_prompts(
    tokenizer: Any, prompts: Sequence[Any], system_prompt: str | None = None,
    max_prompt_tokens: int | None = None,
) -> list[list[int]]:
    """Prompt ids exactly as every other stage writes them (:func:`rlhfkit.data.chat.prompt_text`).

    Long prompts lose their oldest tokens first, as in :func:`rlhfkit.data.chat.encode_pair`.
    """
    out = []
    for p in prompts:
        ids = encode(tokenizer, prompt_text(tokenizer, p, system_prompt))
        if max_prompt_tokens and len(ids) > max_prompt_tokens:
            ids = ids[-max_prompt_tokens:]
        out.append(ids)
    return out


# --------------------------------------------------------------------------------------------
# Scoring sampled tokens
# --------------------------------------------------------------------------------------------


class PolicyWithValue(SelectiveLM):
    """A causal LM plus a scalar value head on its last hidden state (one body pass for both).

    ``forward`` has :class:`rlhfkit.models.policy.SelectiveLM`'s signature and returns
    ``(logits (N, V), values (N,))`` at the N positions where ``target_mask[:, 1:]`` is true:
    the logits that predict each response token and ``V(s_t)`` of the state before it.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__(lm)
        hidden = lm.config.hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        target_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, V) and values (N,) at the target positions."""
        selected = self.selected_hidden(input_ids, attention_mask, target_mask,
                                        position_ids)  # (N, H)
        return self.lm_head(selected), self.value_head(selected).squeeze(-1).float()


def scatter_tokens(values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Put (N,) per-token values, in row-major mask order, into a (B, R) tensor (0 elsewhere)."""
    out = values.new_zeros(response_mask.shape)
    out[response_mask.bool()] = values
    return out


def forward_response(
    model: nn.Module, rollout: Rollout, temperature: float = 1.0
) -> dict[str, torch.Tensor]:
    """Run ``model`` over prompt + response and score the response tokens.

    Args:
        model: A ``SelectiveLM`` or :class:`PolicyWithValue` (possibly wrapped by DDP).
        rollout: The sampled sequences.
        temperature: The sampling temperature; log-probs are those of ``softmax(logits / T)``.

    Returns:
        ``logprobs`` (B, R), ``logits`` (N, V) (at the N response tokens, temperature applied)
        and, for a model with a value head, ``values`` (B, R).
    """
    out = model(*rollout.model_inputs())
    logits, values = out if isinstance(out, tuple) else (out, None)
    mask = rollout.response_mask
    targets = rollout.input_ids[:, rollout.prompt_width:][mask]  # (N,)
    if temperature > 0 and temperature != 1.0:
        logits = logits.float() / temperature
    result = {"logprobs": scatter_tokens(token_logprobs(logits, targets), mask),  # (B, R)
              "logits": logits}
    if values is not None:
        result["values"] = scatter_tokens(values, mask)  # (B, R)
    return result


@torch.no_grad()
def response_logprobs(model: nn.Module, rollout: Rollout, temperature: float = 1.0,
                      batch_size: int = 16) -> torch.Tensor:
    """(B, R) log-probs of the sampled tokens under ``model``, in chunks, without gradients."""
    parts = []
    for start in range(0, len(rollout), batch_size):
        chunk = rollout.select(range(start, min(start + batch_size, len(rollout))))
        lp = forward_response(model, chunk, temperature)["logprobs"]
        parts.append(lp)
    return torch.cat(parts, 0)


class ReferencePolicy:
    """The frozen policy the KL penalty measures against.

    Args:
        lm: The policy's causal LM. With LoRA (a peft model) the reference is the same model
            with its adapter disabled; otherwise a frozen deep copy is made (or ``frozen``, an
            already loaded reference such as the SFT model from another folder, is used).
        frozen: Optional separate reference LM.
    """

    def __init__(self, lm: nn.Module, frozen: nn.Module | None = None) -> None:
        self.shared = frozen is None and hasattr(lm, "disable_adapter")
        self.gathered: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        """Context that gathers what the policy's root holds, for a shared reference under
        FSDP2 (the LM is called past the root's own gathering hook); set by the trainer."""
        if self.shared:
            self.model = SelectiveLM(lm)
        else:
            ref = frozen if frozen is not None else copy.deepcopy(lm)
            ref.eval()
            ref.requires_grad_(False)
            self.model = SelectiveLM(ref)

    @contextlib.contextmanager
    def active(self) -> Iterator[nn.Module]:
        """Context in which ``self.model`` computes reference outputs."""
        if self.shared:
            with self.gathered(), self.model.lm.disable_adapter():
                yield self.model
        else:
            yield self.model

    @torch.no_grad()
    def logprobs(self, rollout: Rollout, temperature: float = 1.0,
                 batch_size: int = 16) -> torch.Tensor:
        """(B, R) reference log-probs of the sampled tokens."""
        with self.active() as model:
            was_training = model.training
            model.eval()
            lp = response_logprobs(model, rollout, temperature, batch_size)
            model.train(was_training)
        return lp

    @property
    def generator(self) -> nn.Module:
        """The LM to sample from as the reference (for comparing with the policy)."""
        return self.model.lm


def place_token_values(values: Sequence[Sequence[float]], response_mask: torch.Tensor
                       ) -> torch.Tensor:
    """(B, R) tensor of per-token values given for each raw response (extra ones dropped)."""
    out = torch.zeros(response_mask.shape, dtype=torch.float32)
    for i, (row, n) in enumerate(zip(values, response_mask.sum(-1).tolist())):
        kept = torch.as_tensor(list(row)[:n], dtype=torch.float32)
        out[i, :len(kept)] = torch.nan_to_num(kept)
    return out.to(response_mask.device)


def make_backend(kind: str, model: str, autocast: torch.dtype | None = None, seed: int = 0,
                 max_model_len: int = 1024, kv_cache_gb: float = 0.25,
                 log: Any = print, engines: str = "", weight_sync: str = "gloo",
                 sync_bucket_mb: float = 256.0, engine_timeout: float = 600.0,
                 gpu_memory_utilization: float = 0.3, tensor_parallel_size: int = 1,
                 sleep_level: int = 0) -> GenerationBackend:
    """The generation backend of ``--generation-backend``: ``hf``, ``vllm`` or ``auto``.

    ``auto`` takes vLLM when it is installed and can serve the model here, else Hugging Face
    ``generate`` with one line saying why; ``vllm`` without the extra is an error naming it.

    Args:
        kind: ``auto``, ``hf`` or ``vllm``.
        model: The policy to serve (an id, folder, .gguf or alias; its weights at the start).
        autocast: The run's autocast dtype (bf16 runs give the engine bf16 weights).
        seed: The engine's seed.
        max_model_len: Longest prompt + response the engine must hold.
        kv_cache_gb: The engine's KV-cache memory (CPU), GiB.
        log: Where the fallback line goes.
        engines: ``""``: one engine in this process; ``N``: N engine processes started here;
            ``HOST:PORT,...``: engines already running (``rlhfkit engine``).
        weight_sync: How weights reach engines apart: ``gloo``, ``nccl`` or ``file``.
        sync_bucket_mb: Size of one weight-sync bucket (engines apart), MiB.
        engine_timeout: Seconds an engine apart may take to answer before the run stops.
        gpu_memory_utilization: The in-process engine's share of GPU memory (CUDA).
        tensor_parallel_size: GPUs of the in-process engine (CUDA).
        sleep_level: vLLM sleep level of the in-process engine between rollouts (CUDA; 0 off).
    """
    if kind not in BACKENDS:
        raise ConfigError(f"--generation-backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    if kind == "hf":
        return HFBackend(autocast)
    path = resolve(model)
    problem = engine_problem(path)
    if problem is not None:
        if kind == "vllm":
            raise ConfigError(f"--generation-backend vllm: {problem}")
        log(f"[generation] Hugging Face generate (vLLM not used: {problem})")
        return HFBackend(autocast)
    dtype = "bfloat16" if autocast == torch.bfloat16 else "float32"
    if engines:
        if engines.isdigit():
            clients, _ = start_local_engines(int(engines), path, dtype, max_model_len,
                                             kv_cache_gb, seed, log, engine_timeout)
        else:
            key = os.environ.get(KEY_ENV)
            if not key:
                raise ConfigError(f"--vllm-engines {engines}: set {KEY_ENV} to the engines' key")
            clients = [EngineClient(a.strip(), key, timeout_s=engine_timeout)
                       for a in engines.split(",") if a.strip()]
        # The address engines reach this process at for the weight broadcast (set by --ray).
        host = os.environ.get("RLHFKIT_TRAINER_HOST", "127.0.0.1")
        return RemoteBackend(clients, checkpoint_weights, sync=weight_sync, channel_host=host,
                             bucket_mb=sync_bucket_mb, timeout_s=engine_timeout)
    try:
        engine = VLLMEngine(path, dtype=dtype, seed=seed, max_model_len=max_model_len,
                            kv_cache_gb=kv_cache_gb, gpu_memory_utilization=gpu_memory_utilization,
                            tensor_parallel_size=tensor_parallel_size, sleep_level=sleep_level)
    except ValueError as err:  # a setting this device cannot take (engine_arguments)
        raise ConfigError(str(err)) from None
    return VLLMBackend(engine, checkpoint_weights)


BACKENDS = ("auto", "hf", "vllm")
"""Values of ``--generation-backend``."""


def sample(
    lm: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Any],
    sampling: SamplingConfig,
    system_prompt: str | None = None,
    backend: GenerationBackend | None = None,
    scorer: nn.Module | None = None,
    max_prompt_tokens: int | None = None,
    autocast: torch.dtype | None = None,
) -> Rollout:
    """Sample one response per prompt and (with ``scorer``) recompute their log-probs.

    Args:
        lm: The causal LM to sample from (a peft model samples with its adapter on).
        tokenizer: Its tokenizer; prompts go through the chat template as in every stage.
        prompts: Prompt texts or chat messages (repeat a prompt k times for k samples).
        sampling: Temperature, top-p/top-k, length, stop strings.
        system_prompt: System message added to prompts that have none.
        backend: Generation backend (default :class:`HFBackend`).
        scorer: A ``SelectiveLM``/``PolicyWithValue`` over ``lm`` to compute ``logprobs`` with
            (None: leave ``rollout.logprobs`` unset).
        max_prompt_tokens: Keep at most this many prompt tokens (the most recent).
        autocast: dtype for autocast during generation and scoring (None = none).

    Returns:
        The :class:`Rollout` (on ``lm``'s device).
    """
    backend = backend or HFBackend(autocast)
    device = next(lm.parameters()).device
    prompt_ids = encode_prompts(tokenizer, prompts, system_prompt, max_prompt_tokens)
    eos = eos_ids_of(tokenizer)
    raw = backend.generate(lm, prompt_ids, sampling, eos, tokenizer.pad_token_id)
    rollout = build_rollout(tokenizer, prompts, prompt_ids, raw, eos, sampling.stop).to(device)
    engine_logprobs = getattr(backend, "last_logprobs", None)
    if engine_logprobs is not None:  # what the engine said of each token it sampled
        rollout.extras["engine_logprobs"] = place_token_values(engine_logprobs,
                                                               rollout.response_mask)
    if scorer is not None:
        was_training = scorer.training
        scorer.eval()
        ctx = (torch.autocast(device.type, dtype=autocast) if autocast is not None
               else contextlib.nullcontext())
        with ctx:
            rollout.logprobs = response_logprobs(scorer, rollout, sampling.temperature or 1.0)
        scorer.train(was_training)
    return rollout


def generate_responses(model: str, prompts: Sequence[Any], k: int, *, max_new_tokens: int = 64,
                       temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                       seed: int = 0, batch_size: int = 16, system_prompt: str | None = None,
                       max_rounds: int = 5, device: str | None = None,
                       backend: Any = None, progress: bool = False,
                       generation_backend: str = "hf") -> list[list[str]]:
    """Sample ``k`` distinct, non-empty responses to every prompt.

    Responses that come out empty, or the same as another response to the same prompt, are
    sampled again (a ranking or comparison of two identical texts says nothing), for up to
    ``max_rounds`` rounds. Used to fill feedback projects (``rlhfkit label create-project
    --generate-from``) and by the demo's ranked samples.

    Args:
        model: a HF id, a local folder, a .gguf file or the alias ``smollm2-135m``.
        prompts: prompt texts or chat messages.
        k: responses per prompt.
        max_new_tokens: longest response in tokens.
        temperature: sampling temperature (> 0: K greedy samples would all be the same).
        top_p: nucleus sampling (1 = off).
        top_k: keep the k most likely tokens (0 = off).
        seed: seed of the sampler.
        batch_size: sequences sampled at once.
        system_prompt: system message added to prompts that have none.
        max_rounds: how many times to re-sample the responses that came out empty or repeated.
        device: ``cpu``, ``cuda``…; default CUDA when available.
        backend: a :class:`rlhfkit.rollout.GenerationBackend` (default: the one
            ``generation_backend`` names).
        progress: show a progress bar over the responses sampled.
        generation_backend: ``hf``, ``vllm`` or ``auto`` (:func:`make_backend`).

    Returns:
        ``k`` response texts per prompt, in prompt order.

    Raises:
        ValueError: a bad option, or some prompt did not get ``k`` distinct responses in
            ``max_rounds`` rounds.
    """
    if k < 1:
        raise ValueError("--k must be at least 1")
    if temperature <= 0:
        raise ValueError("sampling K responses needs a temperature above 0")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model)
    lm = load_causal_lm(model).to(device).eval()
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, top_k=top_k)
    own = backend is None  # made here: closed here (an engine holds its own memory)
    if own:
        autocast = torch.bfloat16 if resolve_precision("auto", device) == "bf16" else None
        backend = make_backend(generation_backend, model, autocast, seed=seed,
                               max_model_len=max(len(p) for p in encode_prompts(
                                   tokenizer, prompts, system_prompt)) + max_new_tokens + 1)
    if hasattr(backend, "sync"):  # an engine takes the whole batch at once
        batch_size = max(batch_size, k * len(prompts))
    out: list[list[str]] = [[] for _ in prompts]
    bar = tqdm(total=k * len(prompts), desc="sample", unit="resp", disable=not progress)
    for round_ in range(max_rounds):
        # one slot per response still missing, prompts repeated
        todo = [i for i, got in enumerate(out) for _ in range(k - len(got))]
        if not todo:
            break
        if hasattr(backend, "seed"):
            backend.seed = seed * 1_000_003 + round_
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            rollout = sample(lm, tokenizer, [prompts[i] for i in chunk], sampling,
                             system_prompt=system_prompt, backend=backend)
            for i, text in zip(chunk, rollout.texts):
                if text.strip() and text not in out[i] and len(out[i]) < k:
                    out[i].append(text)
                    bar.update()
    bar.close()
    if own and hasattr(backend, "close"):
        backend.close()
    short = [i for i, got in enumerate(out) if len(got) < k]
    if short:
        raise ValueError(f"prompt {short[0]} got only {len(out[short[0]])} distinct non-empty "
                         f"responses of {k} after {max_rounds} rounds of sampling; raise "
                         "--temperature or --max-new-tokens, or lower --k")
    return out
