"""Weight-sync buckets: the trainer's weights sent to an engine in flat buffers of bounded size.

Syncing the trainer's weights into a generation engine sends them in buckets of a bounded size
(one flat buffer each, cast to the engine's dtype): :func:`plan_buckets` groups the parameters
in order, sends each tied weight once, and :func:`tied_names` finds the tied ones;
:func:`pack` and :func:`unpack` turn a bucket's tensors into its buffer and back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# --------------------------------------------------------------------------------------------
# Weight-sync buckets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketEntry:
    """One tensor in a bucket.

    Attributes:
        name: The parameter's name.
        shape: Its shape.
        dtype: The dtype it is sent in (the target dtype for floating-point tensors).
        offset: Its first byte in the bucket's flat buffer (a multiple of its element size).
        nbytes: Its size in ``dtype``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Bucket:
    """Tensors sent together in one flat buffer of ``nbytes`` bytes (alignment included)."""

    entries: tuple[BucketEntry, ...]
    nbytes: int

    @property
    def names(self) -> list[str]:
        """The parameter names, in order."""
        return [e.name for e in self.entries]


def _root(name: str, tied: Mapping[str, str]) -> str:
    seen = {name}
    while name in tied:
        name = tied[name]
        if name in seen:
            raise ValueError(f"tied names form a cycle through {name!r}")
        seen.add(name)
    return name


def plan_buckets(params: Sequence[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int,
                 target_dtype: torch.dtype, tied: Mapping[str, str] | None = None
                 ) -> list[Bucket]:
    """Group parameters, in order, into buckets of at most ``bucket_bytes`` bytes.

    Sizes are in the dtype each tensor is sent in: ``target_dtype`` for floating-point
    tensors, their own dtype for the rest (integer or bool buffers are not cast). Each tensor
    starts at a multiple of its element size in the bucket. A tensor larger than a bucket gets
    a bucket of its own; a tensor never spans two. A name in ``tied`` (tied name -> the name
    whose tensor it shares, e.g. ``lm_head.weight -> model.embed_tokens.weight``, as
    :func:`tied_names` finds them) is left out: its tensor is sent once, under the earlier name,
    and the receiver ties it again.

    Args:
        params: ``(name, shape, dtype)`` of each tensor, in the order to send them.
        bucket_bytes: Most bytes per bucket (>= 1).
        target_dtype: The floating-point dtype the receiver holds its weights in.
        tied: Tied name -> shared name; the shared name must come earlier in ``params``.

    Returns:
        The buckets in order; :func:`total_bytes` is what the sync sends.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    if not target_dtype.is_floating_point:
        raise ValueError(f"target_dtype must be floating point, got {target_dtype}")
    tied = dict(tied or {})
    buckets: list[Bucket] = []
    entries: list[BucketEntry] = []
    used, seen = 0, set()
    for name, shape, dtype in params:
        if name in seen:
            raise ValueError(f"parameter {name!r} given twice")
        seen.add(name)
        if name in tied:
            root = _root(name, tied)
            if root == name or root not in seen:
                raise ValueError(f"{name!r} is tied to {root!r}, which does not come before it")
            continue
        sent = target_dtype if dtype.is_floating_point else dtype
        size = sent.itemsize
        offset = -(-used // size) * size  # aligned to the element size
        nbytes = math.prod(shape) * size
        if entries and offset + nbytes > bucket_bytes:
            buckets.append(Bucket(tuple(entries), used))
            entries, offset = [], 0
        entries.append(BucketEntry(name, tuple(shape), sent, offset, nbytes))
        used = offset + nbytes
    if entries:
        buckets.append(Bucket(tuple(entries), used))
    return buckets


def total_bytes(buckets: Sequence[Bucket]) -> int:
    """Bytes sent for ``buckets`` (alignment padding included)."""
    return sum(b.nbytes for b in buckets)


def parameter_specs(module: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """``(name, shape, dtype)`` of every parameter of ``module``, tied names included."""
    return [(n, tuple(p.shape), p.dtype)
            for n, p in module.named_parameters(remove_duplicate=False)]


def tied_names(module: nn.Module) -> dict[str, str]:
    """Parameters that share storage with an earlier one: later name -> first name.

    Two names are tied when they are the same tensor or views of the same memory with the same
    start, shape, strides and dtype (``lm_head.weight`` and ``embed_tokens.weight`` under
    ``tie_word_embeddings``). Tensors on the meta device, or empty ones, have no memory to
    compare and are tied only when they are the same object.

    Args:
        module: The model.

    Returns:
        ``{tied name: first name}`` in ``named_parameters`` order, for :func:`plan_buckets`.
    """
    first: dict[tuple[Any, ...], str] = {}
    out: dict[str, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if p.device.type == "meta" or p.numel() == 0:
            key: tuple[Any, ...] = ("object", id(p))
        else:
            key = ("memory", p.device, p.data_ptr(), tuple(p.shape), p.stride(), p.dtype)
        if key in first:
            out[name] = first[key]
        else:
            first[key] = name
    return out


def pack(bucket: Bucket, tensors: Mapping[str, torch.Tensor],
         device: torch.device | str = "cpu") -> torch.Tensor:
    """The bucket's flat ``uint8`` buffer on ``device``: each tensor cast and put at its offset."""
    buffer = torch.zeros(bucket.nbytes, dtype=torch.uint8, device=device)
    for e in bucket.entries:
        flat = tensors[e.name].detach().to(device=device, dtype=e.dtype).contiguous().reshape(-1)
        buffer[e.offset:e.offset + e.nbytes] = flat.view(torch.uint8)
    return buffer


def unpack(bucket: Bucket, buffer: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """The ``(name, tensor)`` pairs of a received buffer (views into it, no copy)."""
    for e in bucket.entries:
        yield e.name, buffer[e.offset:e.offset + e.nbytes].view(e.dtype).reshape(e.shape)


def plan_for(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int,
             target_dtype: torch.dtype) -> tuple[list[Bucket], dict[str, torch.Tensor]]:
    """Buckets for ``(name, tensor)`` pairs (each tensor once) and the tensors by name."""
    tensors = dict(named)
    specs = [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    return plan_buckets(specs, bucket_bytes, target_dtype), tensors
