"""Sharded training with FSDP2 (``torch.distributed.fsdp.fully_shard``), rlhfkit's own backend.

With ``--fsdp`` and more than one process, :meth:`rlhfkit.train.loop.Run.prepare` shards each
model it is handed instead of wrapping it in DDP: every transformer block is its own FSDP unit
(its parameters are gathered just before its forward and backward, and freed after), and the
root module holds the rest (embeddings, final norm, output projection, value heads). Each
process keeps ``1/world`` of every parameter, of its gradient and of the optimizer state; the
optimizer is built after sharding, over the sharded parameters. The pieces here are the
decisions and the state handling, kept free of the loop so they can be tested on their own:

* :func:`wrap_plan`: which submodules become FSDP units (the blocks, then the root);
* :func:`shard_model`: apply ``fully_shard`` along that plan (trainable or frozen);
* :func:`full_state_dict`: gather every parameter (``DTensor.full_tensor()``) for a plain HF
  folder;
* :func:`save_sharded` / :func:`load_sharded`: model and optimizer state as a
  ``torch.distributed.checkpoint`` (DCP) folder, each process writing and reading its own shards;
* :func:`share_batches`: a process's share of held-out items in batches, as many on every
  process when each forward of a sharded model is a collective.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class FSDPOptions:
    """How models are spread over the processes (read by :meth:`Run.prepare`)."""

    fsdp: bool = False
    """Shard parameters, gradients and optimizer state over the processes with FSDP2; off = DDP."""
    fsdp_offload: bool = False
    """With --fsdp: keep parameter shards, gradients and optimizer state in CPU memory."""
    fsdp_reshard_after_forward: bool = True
    """With --fsdp: free gathered block parameters after forward (regather for backward)."""


# ---------------------------------------------------------------------------------------------
# What to wrap
# ---------------------------------------------------------------------------------------------


def block_class_names(module: nn.Module) -> set[str]:
    """Class names that the HF models inside ``module`` declare as their transformer blocks.

    Every ``PreTrainedModel`` lists them in ``_no_split_modules`` (``LlamaDecoderLayer``...);
    accelerate's FSDP auto-wrap reads the same attribute.
    """
    names: set[str] = set()
    for sub in module.modules():
        declared = getattr(sub, "_no_split_modules", None)
        if isinstance(declared, list | tuple | set):
            names.update(str(n) for n in declared)
    return names


def _inside(name: str, outer: Sequence[str]) -> bool:
    return any(name.startswith(o + ".") for o in outer)


def _block_lists(module: nn.Module) -> list[str]:
    """Children of the outermost ``nn.ModuleList``s that hold blocks of one class with weights."""
    found: list[str] = []
    lists: list[str] = []
    for name, sub in module.named_modules():
        if not isinstance(sub, nn.ModuleList) or not len(sub) or _inside(name, lists):
            continue
        kinds = {type(child) for child in sub}
        if len(kinds) == 1 and all(any(True for _ in child.parameters()) for child in sub):
            lists.append(name)
            found += [f"{name}.{i}" if name else str(i) for i in range(len(sub))]
    return found


def decoder_blocks(module: nn.Module) -> list[str]:
    """Qualified names of the transformer blocks in ``module``, in module order.

    The blocks are the submodules whose class an HF model inside declares in
    ``_no_split_modules``; this finds ``model.layers.i`` of a causal LM whether it sits bare,
    inside a peft ``PeftModel`` (``base_model.model.model.layers.i``) or inside a wrapper such as
    ``SelectiveLM`` or a value-head model. A block inside another block is not listed. Without
    such a declaration (a plain ``nn.Module``), the blocks are the children of the outermost
    ``nn.ModuleList`` s whose items are all of one class and hold parameters.
    """
    classes = block_class_names(module)
    blocks: list[str] = []
    if classes:
        for name, sub in module.named_modules():
            if name and type(sub).__name__ in classes and not _inside(name, blocks):
                blocks.append(name)
    return blocks or _block_lists(module)


def wrap_plan(module: nn.Module) -> list[str]:
    """The submodules to shard, in the order ``fully_shard`` must see them: blocks, then root.

    ``""`` is the root: it holds what no block holds (embeddings, final norm, head), and its
    forward is the one the trainer calls, so those parameters are gathered for all of it.
    """
    return [*decoder_blocks(module), ""]


# ---------------------------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------------------------


def shard_model(module: nn.Module, options: Any, mesh: Any = None, frozen: bool = False
                ) -> nn.Module:
    """Apply FSDP2's ``fully_shard`` to ``module`` along :func:`wrap_plan`, in place.

    Args:
        module: The model, on the CPU or on this process's device; it must be the module whose
            forward the trainer calls (the root unit).
        options: An :class:`FSDPOptions` (``fsdp_offload``, ``fsdp_reshard_after_forward``).
        mesh: A 1-D ``DeviceMesh`` over the processes; default: FSDP's, over the default
            process group.
        frozen: A model that is only run forward (a reference or reward model): its
            parameters stop requiring gradients and it is always resharded after forward
            (nothing would free the gathered weights otherwise). Hand it to no optimizer.

    Returns:
        ``module`` itself, now an ``FSDPModule``: its parameters are ``DTensor`` shards.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    if frozen:
        module.requires_grad_(False)
    offload = (CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if options.fsdp_offload
               else OffloadPolicy())
    reshard = True if frozen else bool(options.fsdp_reshard_after_forward)
    for name in wrap_plan(module):
        fully_shard(module.get_submodule(name), mesh=mesh, reshard_after_forward=reshard,
                    offload_policy=offload)
    return module


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` has been applied to ``module`` (or to one of its submodules)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def full_state_dict(module: nn.Module, all_ranks: bool = False) -> dict[str, torch.Tensor]:
    """The module's state dict with every sharded parameter gathered, on the CPU.

    Every process must call it (each ``DTensor.full_tensor()`` is an all-gather, done one
    tensor at a time so that no more than one gathered tensor sits on the device). Keys are
    those of the unsharded module (FSDP2 keeps the names). Units left gathered by a forward
    are resharded first.

    Args:
        module: A sharded module (plain tensors, such as buffers, are passed through).
        all_ranks: Keep the gathered tensors on every process; default: on process 0 only,
            the others get an empty dict (what saving a HF folder from process 0 needs).
    """
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    for sub in module.modules():  # a forward without backward can leave the weights gathered
        if isinstance(sub, FSDPModule):  # (--no-fsdp-reshard-after-forward after evaluation)
            sub.reshard()
    keep = all_ranks or not dist.is_initialized() or dist.get_rank() == 0
    out: dict[str, torch.Tensor] = {}
    for name, value in module.state_dict().items():
        if isinstance(value, DTensor):
            if value.device.type != value.device_mesh.device_type:  # CPU-offloaded shards
                value = value.to(value.device_mesh.device_type)
            value = value.full_tensor()
        if keep:
            out[name] = value.detach().to("cpu", copy=True)
    return out


def unsharded_copy(module: nn.Module, build: Any) -> nn.Module | None:
    """A plain copy of a sharded ``module`` on process 0 (``None`` elsewhere), for saving.

    Args:
        module: The sharded module (every process calls: the weights are gathered).
        build: A function that returns a fresh unsharded module of the same structure (for
            example the stage's model loader); called on process 0 only.
    """
    state = full_state_dict(module)
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    copy = build()
    copy.load_state_dict(state)
    return copy


T = TypeVar("T")


def share_batches(items: Sequence[T], rank: int, world: int, batch_size: int,
                  same_count: bool = False) -> list[list[T]]:
    """Process ``rank``'s share of ``items`` (every ``world``-th, from ``rank``) in batches.

    Every forward of a sharded model gathers parameters from all processes, so under
    ``--fsdp`` an evaluation loop must run as many forwards on every process, or the ones with
    more items wait forever for the others. With ``same_count`` each process gets as many
    batches as the one with the largest share (process 0's, ``ceil(len / world)`` items); the
    batches past the end of a smaller share are empty lists: the caller runs a forward on a
    stand-in batch and ignores it.

    Example: 5 items, 2 processes, batches of 2: process 0 gets ``[[i0, i2], [i4]]``,
    process 1 ``[[i1, i3]]``, or ``[[i1, i3], []]`` with ``same_count``.
    """
    share = list(items[rank::world])
    largest = math.ceil(len(items) / world) if same_count else len(share)
    rounds = math.ceil(largest / batch_size)
    return [share[k * batch_size:(k + 1) * batch_size] for k in range(rounds)]


# ---------------------------------------------------------------------------------------------
# Sharded checkpoints (torch.distributed.checkpoint)
# ---------------------------------------------------------------------------------------------


def _container(models: Sequence[nn.Module]) -> nn.Module:
    """One module over all the trained models, so one optimizer's state can be keyed by name."""
    return models[0] if len(models) == 1 else nn.ModuleList(models)


def save_sharded(path: Path, models: Sequence[nn.Module], optimizer: torch.optim.Optimizer
                 ) -> None:
    """Write the models' and the optimizer's state as a DCP folder; every process calls.

    Each process writes its own shards (``__N_0.distcp``) and process 0 the metadata; the names
    are the unsharded modules' names, so the folder can be read back with another number of
    processes (DCP reshards on load).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(_container(models), optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))


def load_sharded(path: Path, models: Sequence[nn.Module], optimizer: torch.optim.Optimizer
                 ) -> None:
    """Load a folder written by :func:`save_sharded` into the sharded models and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    container = _container(models)
    model_state, optim_state = get_state_dict(container, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(container, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
