"""How often a majority vote is right, by how many paths agree (docs/verifiable.md).

Self-consistency (Wang et al. 2022) and majority-vote self-training (Huang et al. 2022) rest on
one premise: when more sampled paths agree, their answer is more often right, and more often
than one sample is. This samples ``--samples`` paths for ``--problems`` train problems that the
warm-up never saw (after the task's demonstrations) and as many held-out ones, and prints, for
each agreement threshold, the share of problems kept, the vote's accuracy on them and one
sample's accuracy on the same problems. The references are read only to score. Run it alone:
two vLLM processes on the same cores slow each other several times over.

    python benchmarks/vote_calibration.py --model runs/arith-sft/model --data task:arithmetic
    python benchmarks/vote_calibration.py --model runs/steps-sft/model \\
        --data task:arithmetic-steps --max-new-tokens 64

Writes the per-problem rows and the table to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.rollout import SamplingConfig
from rlhfkit.stats import majority_vote
from rlhfkit.train.accuracy import make_sampler, verifiable_task
from rlhfkit.train.inputs import system_prompt_for
from rlhfkit.train.self_improve import fresh_problems

THRESHOLDS = (0.5, 0.625, 0.75, 0.875, 1.0)


def calibration(rows: list[dict], thresholds=THRESHOLDS) -> list[dict]:
    """For each threshold: problems kept, the vote's accuracy and one sample's, on those kept."""
    out = []
    for lo in thresholds:
        kept = [r for r in rows if r["agreement"] >= lo - 1e-9]
        out.append({"min_agreement": lo, "kept": len(kept) / max(len(rows), 1),
                    "vote_accuracy": (sum(r["vote_right"] for r in kept) / len(kept)
                                      if kept else None),
                    "sample_accuracy": (sum(r["sample_accuracy"] for r in kept) / len(kept)
                                        if kept else None)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="task:arithmetic")
    ap.add_argument("--problems", type=int, default=128, help="of each split")
    ap.add_argument("--offset", type=int, default=256,
                    help="skip this many of the fresh train problems (the default leaves out "
                         "the 256 of self-improve's first round)")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--generation-backend", default="vllm")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    task = verifiable_task(a.data)
    tokenizer, lm = load_tokenizer(a.model), load_causal_lm(a.model).eval()
    sampler = make_sampler(a.generation_backend, a.model, lm, tokenizer, torch.bfloat16,
                           system_prompt_for(None, a.data), seed=0,
                           max_new_tokens=a.max_new_tokens)
    splits = {"unseen-train": fresh_problems(task)[a.offset:a.offset + a.problems],
              "eval": task.prompts("eval")[:a.problems]}
    rows = []
    for split, prompts in splits.items():
        groups, _ = sampler.episodes(prompts, a.samples, SamplingConfig(a.max_new_tokens, 1.0, 1.0),
                                     seed=a.seed)
        for prompt, paths in zip(prompts, groups):
            reference = task.reference_of(prompt)
            vote, count = majority_vote([task.extract_answer(p) for p in paths])
            right = [task.verify(reference, p) >= 1.0 for p in paths]
            rows.append({"split": split, "agreement": count / len(paths),
                         "vote_right": vote is not None
                         and task.verify(reference, task.answer_text(vote)) >= 1.0,
                         "sample_accuracy": sum(right) / len(paths), "paths": paths})
    table = calibration(rows)
    print(f"{a.data} from {a.model}: {len(rows)} problems x {a.samples} paths; one sample "
          f"right {sum(r['sample_accuracy'] for r in rows) / len(rows):.3f}, the vote "
          f"{sum(r['vote_right'] for r in rows) / len(rows):.3f}")
    print("| agreement at least | problems kept | vote right | one sample right (same problems) |")
    print("|---|---|---|---|")
    for t in table:
        print(f"| {t['min_agreement']:.3f} | {t['kept']:.2f} | {t['vote_accuracy']:.2f} | "
              f"{t['sample_accuracy']:.2f} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"model": a.model, "data": a.data,
                                           "cpu": platform.processor(), "table": table,
                                           "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
