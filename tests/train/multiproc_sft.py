"""Run by test_loop.py under torchrun: SFT with 2 processes x batch 4 (global batch 8).

Writes OUT (micro-batches of 4 items), then OUT-tokens: the same run with ``--micro-batch-tokens
120``, the step's 8 items (52 to 65 tokens each) cut by tokens over both processes, and
OUT-tokens/plans-rankR.json: the items of each micro-batch each process ran at each step.
"""

import json
import os
import sys
from pathlib import Path

from rlhfkit.train import loop
from rlhfkit.train.sft import SFTConfig, train_sft

if __name__ == "__main__":
    model, out = sys.argv[1], sys.argv[2]
    plans, real = [], loop.plan_by_tokens

    def spy(lengths, budget, world=1):
        plan = real(lengths, budget, world)
        plans.append([len(mb) for mb in plan.rank(int(os.environ["RANK"]))])
        return plan

    loop.plan_by_tokens = spy
    for folder, extra in ((out, {}), (f"{out}-tokens", {"micro_batch_tokens": 120})):
        train_sft(SFTConfig(model=model, output_dir=folder, max_steps=6, batch_size=4,
                            grad_accum=1, learning_rate=1e-3, warmup_ratio=0.0, progress=False,
                            precision="fp32", eval_fraction=0.0, **extra))
    (Path(f"{out}-tokens") / f"plans-rank{os.environ['RANK']}.json").write_text(json.dumps(plans))
