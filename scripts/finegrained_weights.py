"""Fine-grained RLHF: do the reward weights w_k customise the answers? (docs/finegrained.md)

Wu et al. (2023, Sec. 4.5) keep the factuality and completeness weights fixed and set the
relevance weight to 0.4 / 0.3 / 0.2, and get short / medium / long answers. This script runs
the same experiment on the built-in ``factqa`` task:

1. SFT on the task's demonstrations (which give 0..3 background facts, so lengths vary);
2. reward models: ``--rewards learned`` trains a relevance and a factuality segment RM on the
   simulated span feedback and a completeness RM on the completeness rankings;
   ``--rewards gold`` uses the span labeler's own marks (``factqa-gold:ASPECT``), a perfect
   reward model, to see the weights' effect apart from reward-model errors;
3. PPO from the SFT policy once per relevance weight, factuality 0.5 and completeness 0.3;
4. each policy (and the SFT one) answers the held-out prompts; the script reports the length
   (tokens, sentences, sub-sentences, background facts) and the gold scores, writes
   ``results.json`` and ``weights.png`` into ``--out``.

Example (tiny model, gold rewards; what docs/finegrained.md reports)::

    nice python scripts/finegrained_weights.py --out runs/fg-weights --rewards gold
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/fg-weights", help="output folder")
    p.add_argument("--model", default="tiny",
                   help="tiny (a random Llama trained here from scratch) or a model path/alias")
    p.add_argument("--tiny-size", default="128x4", help="hidden x layers of the tiny model")
    p.add_argument("--rewards", choices=("gold", "learned"), default="gold")
    p.add_argument("--rel", default="0.4,0.3,0.2", help="relevance weights to compare")
    p.add_argument("--fact", type=float, default=0.5, help="factuality weight")
    p.add_argument("--comp", type=float, default=0.3, help="completeness weight")
    p.add_argument("--sft-steps", type=int, default=300)
    p.add_argument("--sft-lr", type=float, default=3e-3)
    p.add_argument("--rm-steps", type=int, default=60)
    p.add_argument("--ppo-steps", type=int, default=40)
    p.add_argument("--ppo-lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--eval-prompts", type=int, default=64)
    p.add_argument("--eval-samples", type=int, default=2, help="samples per eval prompt")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def common(**kw):
    """Settings every stage here shares (CPU, fp32, quiet)."""
    return dict(precision="fp32", progress=False, report_to="none",
                gradient_checkpointing=False, **kw)


@torch.no_grad()
def evaluate(model_dir: Path, task, tokenizer, n_prompts: int, n_samples: int, max_new: int,
             seed: int) -> dict[str, float]:
    """Sample the held-out prompts; mean length and gold scores of the answers."""
    from rlhfkit.models.loading import load_causal_lm
    from rlhfkit.rollout import SamplingConfig, sample
    from rlhfkit.segments import split_segments
    from rlhfkit.tasks.factqa import judge, parse_prompt

    torch.manual_seed(seed)
    lm = load_causal_lm(str(model_dir)).eval()
    prompts = [p for p in task.prompts("eval")[:n_prompts] for _ in range(n_samples)]
    texts, lengths, ended = [], [], []
    for i in range(0, len(prompts), 16):
        r = sample(lm, tokenizer, prompts[i:i + 16], SamplingConfig(max_new_tokens=max_new),
                   task.system_prompt)
        texts += r.texts
        lengths += r.response_lengths.tolist()
        ended += r.ended.tolist()
    js = [judge(parse_prompt(p), t) if t.strip() else None for p, t in zip(prompts, texts)]
    scorers = task.gold_scorers()
    out = {f"gold/{k}": statistics.fmean(s(prompts, texts)) for k, s in scorers.items()}
    out.update({
        "tokens": statistics.fmean(lengths),
        "ended": statistics.fmean(ended),
        "sentences": statistics.fmean(len(split_segments(t)) if t.strip() else 0 for t in texts),
        "subsentences": statistics.fmean(len(split_segments(t, "subsentence")) if t.strip()
                                         else 0 for t in texts),
        "background_facts": statistics.fmean(len(j.background_correct) if j else 0 for j in js),
        "asked_facts": statistics.fmean(len(j.asked_correct) if j else 0 for j in js),
        "samples": [{"prompt": p.split("\nQuestion: ")[-1], "answer": t}
                    for p, t in list(zip(prompts, texts))[:: max(1, len(texts) // 6)][:6]],
    })
    return out


def main() -> None:
    """Run the experiment; see the module docstring."""
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from rlhfkit.data.io import write_records
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.tasks import get_task
    from rlhfkit.testing import make_tiny_lm
    from rlhfkit.train.rm import RMConfig, train_rm
    from rlhfkit.train.segment_rm import SegmentRMConfig, train_segment_rm
    from rlhfkit.train.sft import SFTConfig, train_sft
    from rlhfkit.train.trainer import rl_config, train_rl

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["args"] = vars(args)
    timings = results.setdefault("seconds", {})

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2))

    task = get_task("factqa", n_demos=480, n_spans=480, n_ranked=480, seed=args.seed)
    system = task.system_prompt
    tokenizer = load_tokenizer("smollm2-135m" if args.model == "tiny" else args.model)
    data = out / "data"
    data.mkdir(exist_ok=True)
    write_records(task.demonstrations(), data / "demos.jsonl")
    # 1. SFT ----------------------------------------------------------------------------
    sft = out / "sft" / "model"
    if not (sft / "config.json").exists():
        t = time.time()
        base = args.model
        if base == "tiny":
            hidden, layers = (int(x) for x in args.tiny_size.split("x"))
            base = str(make_tiny_lm(out / "tiny", tokenizer, seed=args.seed, hidden=hidden,
                                    layers=layers))
        train_sft(SFTConfig(**common(
            model=base, data=str(data / "demos.jsonl"), output_dir=str(out / "sft"),
            max_steps=args.sft_steps, batch_size=16, learning_rate=args.sft_lr,
            max_length=320, eval_fraction=0.0, warmup_ratio=0.05, system_prompt=system,
            log_every=10, seed=args.seed)))
        timings["sft"] = time.time() - t
        save()
    # 2. reward models --------------------------------------------------------------------
    if args.rewards == "gold":
        spec = "rel=factqa-gold:relevance,fact=factqa-gold:factuality,comp=factqa-gold:completeness"
    else:
        write_records(task.span_feedback(), data / "spans.jsonl")
        write_records(task.rankings(), data / "rankings.jsonl")
        rms = {}
        for name, category in (("rel", "relevance"), ("fact", "factuality")):
            folder = out / f"rm-{name}"
            if not (folder / "model" / "config.json").exists():
                t = time.time()
                train_segment_rm(SegmentRMConfig(**common(
                    model=str(sft), data=str(data / "spans.jsonl"), output_dir=str(folder),
                    category=category, max_steps=args.rm_steps, batch_size=8,
                    learning_rate=1e-3 if args.model == "tiny" else 3e-5,
                    eval_fraction=0.15, eval_every=max(1, args.rm_steps // 3),
                    system_prompt=system, seed=args.seed)))
                timings[f"rm-{name}"] = time.time() - t
            results[f"rm-{name}"] = json.loads((folder / "eval.json").read_text())
            rms[name] = folder / "model"
        folder = out / "rm-comp"
        if not (folder / "model" / "config.json").exists():
            t = time.time()
            train_rm(RMConfig(**common(
                model=str(sft), data=str(data / "rankings.jsonl"), output_dir=str(folder),
                max_steps=args.rm_steps, batch_size=4,
                learning_rate=1e-3 if args.model == "tiny" else 3e-5, eval_fraction=0.15,
                system_prompt=system, seed=args.seed)))
            timings["rm-comp"] = time.time() - t
        results["rm-comp"] = json.loads((folder / "eval.json").read_text())
        rms["comp"] = folder / "model"
        spec = ",".join(f"{k}={v}" for k, v in rms.items())
        save()
    # 3. PPO per relevance weight -----------------------------------------------------------
    evals = results.setdefault("eval", {})
    if "sft" not in evals:
        evals["sft"] = evaluate(sft, task, tokenizer, args.eval_prompts, args.eval_samples,
                                args.max_new_tokens, args.seed)
        save()
    for w in [float(x) for x in args.rel.split(",")]:
        name = f"ppo-rel{w:g}"
        folder = out / name
        if not (folder / "model" / "config.json").exists():
            t = time.time()
            train_rl(rl_config("ppo", **common(
                model=str(sft), output_dir=str(folder), data="task:factqa", reward_model=spec,
                rewards=f"rel={w:g},fact={args.fact:g},comp={args.comp:g}",
                max_steps=args.ppo_steps, batch_size=args.batch_size, mini_batch_size=8,
                update_epochs=2, max_new_tokens=args.max_new_tokens,
                learning_rate=args.ppo_lr, kl_coef=args.kl_coef, reward_clip=5.0,
                eval_prompts=16, segment_unit="sentence", system_prompt=system,
                seed=args.seed)))
            timings[name] = time.time() - t
        if name not in evals:
            evals[name] = evaluate(folder / "model", task, tokenizer, args.eval_prompts,
                                   args.eval_samples, args.max_new_tokens, args.seed)
            train = rollout_rows(folder)
            evals[name]["final_kl"] = statistics.fmean(r["kl/seq"] for r in train[-5:])
            save()
    # 4. summary ----------------------------------------------------------------------------
    keys = ["tokens", "sentences", "subsentences", "background_facts", "asked_facts",
            "gold/relevance", "gold/factuality", "gold/completeness", "gold/overall", "final_kl"]
    print("| policy | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, ev in evals.items():
        print(f"| {name} | " + " | ".join(f"{ev[k]:.3g}" if k in ev else "" for k in keys)
              + " |")
    plot(out, evals, out / "weights.png")


def rollout_rows(run_dir: Path) -> list[dict]:
    """The per-rollout-batch rows of a PPO run's metrics.jsonl (not its evaluations)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "kl/seq" in r]


def plot(out: Path, evals: dict, path: Path) -> None:
    """Per relevance weight: length, relevance and factuality reward over PPO; final lengths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    names = list(evals)
    for i, name in enumerate(n for n in names if n != "sft"):
        train = rollout_rows(out / name)
        steps = [r["step"] for r in train]
        label = "w_rel = " + name.removeprefix("ppo-rel")
        for ax, key in zip(axes, ("response/length", "reward/rel", "reward/fact")):
            ax.plot(steps, [r[key] for r in train], "-", color=f"C{i}", label=label, alpha=0.8)
    for ax, title in zip(axes, ("response length (tokens)", "relevance reward per answer",
                                "factuality reward per answer")):
        ax.set_title(title)
        ax.set_xlabel("PPO rollout batch")
    axes[0].legend(fontsize=8)
    axes[3].bar(names, [evals[n]["tokens"] for n in names],
                color=["C7"] + [f"C{i}" for i in range(len(names) - 1)])
    axes[3].set_title("held-out answer length (tokens)")
    axes[3].tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
