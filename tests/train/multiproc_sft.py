"""Run by test_loop.py under torchrun: SFT with 2 processes x batch 4 (global batch 8)."""

import sys

from rlhfkit.train.sft import SFTConfig, train_sft

if __name__ == "__main__":
    model, out = sys.argv[1], sys.argv[2]
    train_sft(SFTConfig(model=model, output_dir=out, max_steps=6, batch_size=4, grad_accum=1,
                        learning_rate=1e-3, warmup_ratio=0.0, progress=False, precision="fp32",
                        eval_fraction=0.0))
