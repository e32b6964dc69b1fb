"""Run by test_sharding.py under torchrun: SFT with --fsdp, and a frozen sharded model.

    multiproc_fsdp.py JOBS_JSON

runs each job of the list in turn in the same two processes (one launch: each start of two
processes that import torch and transformers costs seconds):

    {"sft": OUT, "kwargs": {...}}     # train_sft(SFTConfig(fsdp=True, **kwargs)); each process
                                      # also saves the gathered weights as OUT/gathered-rankR.pt
    {"frozen": MODEL, "out": OUT}     # a frozen sharded copy gives the unsharded logits
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def sft(out: Path, kwargs: dict) -> None:
    from rlhfkit.train import loop
    from rlhfkit.train.sft import SFTConfig, train_sft
    from rlhfkit.train.sharding import full_state_dict, is_sharded

    export_copy = loop.Run.export_copy

    def spy(self, module, build):
        assert self.sharded and is_sharded(module)
        torch.save(full_state_dict(module, all_ranks=True), out / f"gathered-rank{self.rank}.pt")
        assert all(type(p).__name__ == "DTensor" for p in module.parameters())  # resharded
        return export_copy(self, module, build)

    loop.Run.export_copy = spy
    try:
        train_sft(SFTConfig(output_dir=str(out), fsdp=True, **kwargs))
    finally:
        loop.Run.export_copy = export_copy


def frozen(model: str, out: Path) -> None:
    from types import SimpleNamespace

    from rlhfkit.models.loading import load_causal_lm
    from rlhfkit.train.sharding import shard_model

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    plain = load_causal_lm(model, dtype=torch.float32).eval()
    sharded = shard_model(load_causal_lm(model, dtype=torch.float32).eval(),
                          SimpleNamespace(fsdp_offload=False, fsdp_reshard_after_forward=False),
                          frozen=True)
    ids = torch.arange(3, 19).view(2, 8) + dist.get_rank()
    with torch.no_grad():
        diff = (plain(ids).logits - sharded(ids).logits).abs().max().item()
    record = {"diff": diff, "requires_grad": any(p.requires_grad for p in sharded.parameters()),
              "local_params": sum(p.to_local().numel() for p in sharded.parameters()),
              "params": sum(p.numel() for p in plain.parameters())}
    (out / f"frozen-rank{dist.get_rank()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    for job in json.loads(sys.argv[1]):
        if "sft" in job:
            sft(Path(job["sft"]), job["kwargs"])
        else:
            frozen(job["frozen"], Path(job["out"]))
