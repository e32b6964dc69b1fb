"""Run by test_sharding.py under torchrun: the supervised stages with --fsdp, a frozen sharded model.

    multiproc_fsdp.py JOBS_JSON

runs each job of the list in turn in the same two processes (one launch: each start of two
processes that import torch and transformers costs seconds):

    {"train": STAGE, "out": OUT, "kwargs": {...}}
                                      # STAGE (sft, rm, dpo, preference or segment_rm) with
                                      # fsdp=True and **kwargs; each process also saves the
                                      # weights it gathers for the saved model as
                                      # OUT/gathered-rankR.pt, and what DPO shards besides the
                                      # policy (a --reference) in OUT/also-sharded-rankR.json;
                                      # report.html holds no plots (see undrawn_report)
    {"frozen": MODEL, "out": OUT}     # a frozen sharded copy gives the unsharded logits
"""

import importlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

STAGES = {
    "sft": ("rlhfkit.train.sft", "SFTConfig", "train_sft"),
    "rm": ("rlhfkit.train.rm", "RMConfig", "train_rm"),
    "dpo": ("rlhfkit.train.dpo", "DPOConfig", "train_dpo"),
    "preference": ("rlhfkit.train.preference", "PreferenceConfig", "train_preference"),
    "segment_rm": ("rlhfkit.train.segment_rm", "SegmentRMConfig", "train_segment_rm"),
}


def undrawn_report(run_dir: Path, stage: str):
    """Stands in for ``report.training_section``: its plots cost about 1 s a run (matplotlib),
    and no test here reads them."""
    from rlhfkit.evaluate.report import Section

    return Section(f"{stage}: training", "(plots not drawn in the tests)")


def train(stage: str, out: Path, kwargs: dict) -> None:
    from rlhfkit.train import loop
    from rlhfkit.train.sharding import full_state_dict, is_sharded

    module_name, config_name, train_name = STAGES[stage]
    stage_module = importlib.import_module(module_name)
    export_copy = loop.Run.export_copy

    def spy(self, module, build):
        assert self.sharded and is_sharded(module)
        torch.save(full_state_dict(module, all_ranks=True), out / f"gathered-rank{self.rank}.pt")
        assert all(type(p).__name__ == "DTensor" for p in module.parameters())  # resharded
        return export_copy(self, module, build)

    shard_model = getattr(stage_module, "shard_model", None)  # DPO's, for a --reference
    also_sharded = []

    def shard_spy(module, options, mesh=None, frozen=False):
        name = type(module).__name__  # before fully_shard makes it FSDP<name>
        sharded = shard_model(module, options, mesh, frozen)
        also_sharded.append({"frozen": frozen, "class": name,
                             "requires_grad": any(p.requires_grad for p in module.parameters()),
                             "local_params": sum(p.to_local().numel() for p in module.parameters()),
                             "params": sum(p.numel() for p in module.parameters())})
        return sharded

    loop.Run.export_copy = spy
    training_section, loop.training_section = loop.training_section, undrawn_report
    if shard_model is not None:
        stage_module.shard_model = shard_spy
    try:
        config = getattr(stage_module, config_name)(output_dir=str(out), fsdp=True, **kwargs)
        getattr(stage_module, train_name)(config)
    finally:
        loop.Run.export_copy = export_copy
        loop.training_section = training_section
        if shard_model is not None:
            stage_module.shard_model = shard_model
    if also_sharded:
        (out / f"also-sharded-rank{dist.get_rank()}.json").write_text(json.dumps(also_sharded))


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
        if "train" in job:
            train(job["train"], Path(job["out"]), job["kwargs"])
        else:
            frozen(job["frozen"], Path(job["out"]))
