"""Frozen models out of memory while they are not in use (``--offload-frozen``).

An RL step uses the frozen models (the reference policy, the reward models) only in its passes
over the rollout; the update, where the step's memory peaks (gradients and activations on top
of the policy and its optimizer state), never touches them. :class:`Offloaded` writes a frozen
module's parameters to a file once, frees them once its pass is done, and maps the file back
the next time the module runs. The weights come back bit for bit, so a run computes exactly what it
would without it; what it costs is the mapping and its page faults each step (the pages come
from the page cache, and from the disk only where the system dropped them).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Offloaded:
    """A frozen module whose parameters live in ``path`` between uses.

    :meth:`release` frees the parameters (the first time it writes them to ``path``, each
    tensor once, so tied weights stay tied); the next forward of any of its parts, or
    :meth:`restore`, maps the file back (``torch.load(mmap=True)``). On a CPU the parameters
    then point into the mapped file, with no copy; on another device they are copied there.
    The parameter objects stay the same, so whatever holds them (tied weights, hooks) is
    untouched.

    Args:
        module: A module that is not trained (no parameter requires a gradient).
        path: The file for its parameters (removed by :meth:`close` and :meth:`discard`).
    """

    def __init__(self, module: nn.Module, path: str | Path) -> None:
        self.params = dict(module.named_parameters())  # each tied parameter once
        trained = [n for n, p in self.params.items() if p.requires_grad]
        if trained:
            raise ValueError(f"only a frozen module can be offloaded: {trained[0]} is trained")
        self.module, self.path = module, Path(path)
        self.devices = {n: p.device for n, p in self.params.items()}
        self.released = False
        self._written = False
        # On every submodule that holds parameters: wrappers may call into the model past its
        # own forward (the selective LM head runs the backbone, then reads the head's weight).
        self._hooks = [m.register_forward_pre_hook(lambda _module, _args: self.restore())
                       for m in module.modules() if any(True for _ in m.parameters(recurse=False))]

    def release(self) -> None:
        """Free the parameters (written to the file first, the first time)."""
        if self.released:
            return
        if not self._written:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({n: p.detach().cpu() for n, p in self.params.items()}, self.path)
            self._written = True
        self._free()

    def restore(self) -> None:
        """The parameters back from the file (a no-op when they are in memory)."""
        if self.released:
            self._fill(mmap=True)

    def close(self) -> None:
        """Back in memory for good; the hooks and the file removed."""
        if self.released:
            self._fill(mmap=False)  # copied out of the mapping, so that the file can go
        self._remove()

    def discard(self) -> None:
        """Free the parameters for good, with the hooks and the file.

        For a module that will not run again: at the end of a run, where mapping it back would
        only raise the peak.
        """
        self._free()
        self._remove()

    def _free(self) -> None:
        for p in self.params.values():
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        self.released = True

    def _fill(self, mmap: bool) -> None:
        state = torch.load(self.path, mmap=mmap, weights_only=True, map_location="cpu")
        for name, p in self.params.items():
            p.data = state[name].to(self.devices[name])
        self.released = False

    def _remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self.path.unlink(missing_ok=True)
        if self.path.parent.is_dir() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()  # the run folder keeps no empty offload/
