"""Run by test_rl.py under torchrun: GRPO with 2 processes, each 2 prompts x 4 samples.

Besides the run folder, every process writes ``rank{N}.json``: the prompts it sampled at each
step, its own (local) ``reward/score`` per step, its torch seed, and a checksum of its policy
weights at the end, so the test can check how the global batch was split and that the
processes stayed in sync.

The arguments after the first three name the variants to run (default: ``plain``). With
``micro`` the processes cut their mini-batches differently: rank 0 into
micro-batches of 3 sequences (3 of them), rank 1 into one by tokens, padded to 3 (an empty
micro-batch's backward carries no gradient): the weights must come out as without the cut.
With ``fsdp`` the policy and the reference are sharded with FSDP2 (``--fsdp``) instead of
replicated (DDP): the same samples, losses and weights; it saves a sharded checkpoint after
step 2, and ``fsdp-resume`` resumes from it (its folder's checkpoints hold only that one).
"""

import json
import os
import sys
from pathlib import Path

import torch

from rlhfkit.train import rl
from rlhfkit.train.trainer import rl_config, train_rl


def good_share(prompts, texts, rollout=None):
    return [sum(w == "good" for w in t.split()) / max(len(t.split()), 1) for t in texts]


def run(model: str, out: Path, system: str, variant: str) -> None:
    micro: dict = {}
    if variant == "micro":
        micro = ({"micro_batch_size": 3} if os.environ["RANK"] == "0"
                 else {"micro_batch_tokens": 100_000})
    elif variant == "fsdp":
        micro = {"fsdp": True, "save_every": 2}  # a sharded checkpoint after step 2
    elif variant == "fsdp-resume":  # OUT/checkpoints holds only the fsdp run's step 2
        micro = {"fsdp": True, "resume": True}
    record: dict = {"prompts": [], "local_score": []}
    prompt_batch, rollout_metrics, finish = (rl.RLRun.prompt_batch, rl.RLRun.rollout_metrics,
                                             rl.RLRun.finish)

    def spy_prompt_batch(self, step):
        prompts = prompt_batch(self, step)
        record["prompts"].append(prompts)
        return prompts

    def spy_rollout_metrics(self, *args, **kwargs):
        metrics, kl = rollout_metrics(self, *args, **kwargs)
        record["local_score"].append(metrics["reward/score"])
        return metrics, kl

    def spy_finish(self):
        record["seed"] = torch.initial_seed()
        whole = [p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2: gather
                 for p in self.lm.parameters()]
        record["weights"] = sum(float(p.double().abs().sum()) for p in whole)
        (out / f"rank{self.rank}.json").write_text(json.dumps(record))
        return finish(self)

    rl.RLRun.prompt_batch = spy_prompt_batch
    rl.RLRun.rollout_metrics = spy_rollout_metrics
    rl.RLRun.finish = spy_finish
    out.mkdir(parents=True, exist_ok=True)
    try:
        train_rl(rl_config("grpo", model=model, output_dir=str(out), max_steps=3, batch_size=2,
                          num_samples=4, max_new_tokens=6, learning_rate=2e-3, precision="fp32",
                          progress=False, eval_prompts=8, kl_coef=0.04, reward_clip=0.0,
                          system_prompt=system, report_to="none", gradient_checkpointing=False,
                          **micro),
                 reward_fn=good_share)
    finally:
        rl.RLRun.prompt_batch, rl.RLRun.rollout_metrics, rl.RLRun.finish = (
            prompt_batch, rollout_metrics, finish)


if __name__ == "__main__":
    model, out, system = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    # The variants run one after another in the same two processes (one launch: each start of
    # two processes that import torch and transformers costs seconds); the plain run writes to
    # OUT, each other to OUT-NAME.
    for variant in sys.argv[4:] or ["plain"]:
        run(model, out if variant == "plain" else out.with_name(f"{out.name}-{variant}"),
            system, variant)
