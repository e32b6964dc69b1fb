"""rlhfkit's DPO trainer vs TRL's DPOTrainer: same losses on the same batch, and throughput.

Run with an environment that has both rlhfkit and TRL (``.venv-bench``)::

    # 1. the losses of both on one batch of identical token ids (DPO and IPO)
    .venv-bench/bin/python benchmarks/bench_dpo.py check --model DIR
    # 2. alternating timed runs, each in a fresh process, and a table
    .venv-bench/bin/python benchmarks/bench_dpo.py compare --model DIR --reps 2
    # (one run: bench_dpo.py run --framework rlhfkit|trl --model DIR --out r.json)

``DIR`` is a local HF folder (never a hub download), e.g. the converted default model
(``python -c "from rlhfkit.models.loading import resolve; print(resolve('smollm2-135m'))"``).

**check**: the policy is the model with its weights slightly perturbed, the reference is the
model itself, so the log-ratios are not all 0. TRL's collator pads *rlhfkit's* token ids (so
both see exactly the same tokens: TRL's own tokenization keeps the newline after the end-of-turn
token, which rlhfkit drops) and ``DPOTrainer.compute_loss`` runs its policy and reference
forwards; rlhfkit caches the reference log-probs and runs :func:`rlhfkit.train.dpo.pairwise_step`.
Both losses and the implicit-reward metrics are printed with their largest difference.

**run / compare**: both frameworks train the same model on the same comparisons of the
built-in ``reviews`` task (each ranking's pairs, ties dropped), with the same pairs per
optimizer step, maximum length, precision (bf16 autocast where the CPU has it, else fp32),
learning rate, beta and number of steps, no evaluation and no checkpoints in the timed region,
and only the pairs the run uses. Everything else is each framework's own: TRL computes the
reference with a second forward pass each step (its default; ``--trl-precompute`` switches on its
``precompute_ref_log_probs``) and uses gradient checkpointing (its default); rlhfkit computes
reference log-probs once before the first step (outside the timed steps, like TRL's precompute;
the startup time of each run is reported) and runs one forward pass per step with logits only
at response tokens. ``pairs_per_s`` = pairs over the wall time of the timed steps;
``peak_rss_mb`` = the process's peak resident memory at the end of the last timed step.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

T_START = time.perf_counter()
HERE = Path(__file__).resolve().parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reviews_pairs(n: int):
    """The first ``n`` non-tied comparisons of the reviews task's rankings, and its system prompt."""
    from rlhfkit.tasks import get_task

    task = get_task("reviews")
    # Plain pairs (no ranking group), so both frameworks batch exactly the same pairs.
    pairs = [dataclasses.replace(c, group=None) for r in task.rankings()
             for c in r.to_comparisons() if not c.tie]
    return pairs[:n], task.system_prompt


def precision_flag(precision: str) -> str:
    from rlhfkit.models.loading import resolve_precision

    return resolve_precision(precision, "cpu")


# ------------------------------------------------------------------------------ check


def check(a: argparse.Namespace) -> int:
    import copy

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    from rlhfkit.models.policy import SelectiveLM
    from rlhfkit.train.dpo import (
        DPOConfig,
        attach_reference_logps,
        build_pair_groups,
        collate_groups,
        pairwise_step,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    reference = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * a.noise * p.std().clamp(min=1e-3))
    pairs, system = reviews_pairs(a.pairs)
    groups, _ = build_pair_groups(pairs, tokenizer, a.max_length, system)
    attach_reference_logps(groups, SelectiveLM(reference), tokenizer.pad_token_id)
    rows = []
    for g in groups:
        (i, j, _), = g.pairs
        p_len = g.prompt_lens[i]
        rows.append({"prompt_ids": g.sequences[i][:p_len], "chosen_ids": g.sequences[i][p_len:],
                     "rejected_ids": g.sequences[j][p_len:]})
    text_rows = [{"prompt": "x", "chosen": "a", "rejected": "b"}] * 2  # TRL needs a dataset
    failures = 0
    with tempfile.TemporaryDirectory() as out:
        for loss in ("dpo", "ipo"):
            beta = 0.1 if loss == "dpo" else 0.5
            args = TRLConfig(output_dir=out, beta=beta, loss_type=["sigmoid" if loss == "dpo"
                                                                   else "ipo"],
                             bf16=False, use_cpu=True, gradient_checkpointing=False,
                             report_to="none", max_length=a.max_length)
            trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=reference, args=args,
                                 train_dataset=Dataset.from_list(text_rows),
                                 processing_class=tokenizer)
            trainer.model.eval()
            batch = trainer.data_collator(rows)
            with torch.no_grad():
                trl_loss = float(trainer.compute_loss(trainer.model, batch))
            trl_metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
            ours = collate_groups(groups, tokenizer.pad_token_id)
            with torch.no_grad():
                loss_sum, sums = pairwise_step(SelectiveLM(policy).eval(), ours,
                                               DPOConfig(loss=loss, beta=beta))
            n = ours["num_units"]
            mine = {"loss": float(loss_sum) / n, **{k: float(v) / n for k, v in sums.items()}}
            compare = {"loss": trl_loss, "rewards/chosen": trl_metrics["rewards/chosen"],
                       "rewards/rejected": trl_metrics["rewards/rejected"],
                       "rewards/margins": trl_metrics["rewards/margins"],
                       "rewards/accuracy": trl_metrics["rewards/accuracies"],
                       "logps/chosen": trl_metrics["logps/chosen"],
                       "logps/rejected": trl_metrics["logps/rejected"]}
            print(f"--- {loss} (beta {beta}), {len(rows)} pairs")
            for k, v in compare.items():
                diff = abs(mine[k] - v)
                tol = a.tol * max(1.0, abs(v)) if k.startswith("logps") else a.tol
                failures += diff > tol
                print(f"{k:18s} rlhfkit {mine[k]: .6f}  trl {v: .6f}  |diff| {diff:.2e}"
                      f"{'  <-- over ' + str(tol) if diff > tol else ''}")
    # KTO with the roles swapped (the perturbed model as the reference): the unperturbed model
    # finds the mismatched responses likelier than the perturbed one does, so z0 > 0 and the
    # clamp does not hide the KL term.
    failures += check_kto(a, reference, policy, tokenizer)
    print("all within tolerance" if not failures else f"{failures} value(s) over tolerance")
    return 1 if failures else 0


def check_kto(a: argparse.Namespace, policy, reference, tokenizer) -> int:
    """KTO: TRL's KTOTrainer.compute_loss vs rlhfkit's kto_step on the same examples, each with
    the same mismatched (KL) completion; returns the number of values over tolerance."""
    import copy

    import torch
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    from rlhfkit.models.policy import SelectiveLM
    from rlhfkit.train.dpo import (
        DPOConfig,
        attach_reference_logps,
        build_kto_groups,
        collate_groups,
        kto_step,
    )

    pairs, system = reviews_pairs(a.pairs)
    groups, _ = build_kto_groups(pairs, tokenizer, a.max_length, system)
    groups = groups[:a.pairs]
    attach_reference_logps(groups, SelectiveLM(reference), tokenizer.pad_token_id)
    rows = []
    for g in groups:
        (i, desirable), = g.points
        p_len, kl_len = g.prompt_lens[i], g.kl_prompt_lens[0]
        assert g.kl_sequences[0][:kl_len] == g.sequences[i][:p_len]
        rows.append({"prompt_ids": g.sequences[i][:p_len], "completion_ids": g.sequences[i][p_len:],
                     "KL_completion_ids": g.kl_sequences[0][kl_len:], "label": desirable})
    text_rows = [{"prompt": "x", "completion": "a", "label": True},
                 {"prompt": "y", "completion": "b", "label": False}]
    beta, w_d, w_u = 0.5, 1.0, 1.5
    with tempfile.TemporaryDirectory() as out:
        args = KTOConfig(output_dir=out, beta=beta, desirable_weight=w_d, undesirable_weight=w_u,
                         bf16=False, use_cpu=True, gradient_checkpointing=False,
                         report_to="none", max_length=a.max_length,
                         per_device_train_batch_size=2)
        trainer = KTOTrainer(model=copy.deepcopy(policy), ref_model=reference, args=args,
                             train_dataset=Dataset.from_list(text_rows),
                             processing_class=tokenizer)
        trainer.model.eval()
        batch = trainer.data_collator(rows)
        with torch.no_grad():
            trl_loss = float(trainer.compute_loss(trainer.model, batch))
        trl_kl = trainer._metrics["eval"]["kl"][-1]
    ours = collate_groups(groups, tokenizer.pad_token_id)
    with torch.no_grad():
        loss_sum, sums = kto_step(SelectiveLM(policy).eval(), ours,
                                  DPOConfig(loss="kto", beta=beta, desirable_weight=w_d,
                                            undesirable_weight=w_u))
    n = ours["num_units"]
    mine = {"loss": float(loss_sum) / n, "kl": float(sums["kto/kl"]) / n}
    theirs = {"loss": trl_loss, "kl": trl_kl}
    failures = 0
    print(f"--- kto (beta {beta}, weights {w_d}/{w_u}), {len(rows)} examples "
          f"({sum(r['label'] for r in rows)} desirable)")
    for k, v in theirs.items():
        diff = abs(mine[k] - v)
        failures += diff > a.tol
        print(f"{k:18s} rlhfkit {mine[k]: .6f}  trl {v: .6f}  |diff| {diff:.2e}"
              f"{'  <-- over ' + str(a.tol) if diff > a.tol else ''}")
    return failures


# ------------------------------------------------------------------------------ timed runs


class Finished(Exception):
    """Raised after the last timed step so that nothing after training runs."""


class Clock:
    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.stamps: list[float] = []
        self.cpu: list[float] = []
        self.peak = 0.0

    def stamp(self) -> bool:
        self.stamps.append(time.perf_counter())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu.append(usage.ru_utime + usage.ru_stime)
        done = len(self.stamps) - 1 >= self.warmup + self.steps
        if done and not self.peak:
            self.peak = peak_rss_mb()
        return done

    def timed(self) -> float:
        return self.stamps[self.warmup + self.steps] - self.stamps[self.warmup]

    def timed_cpu(self) -> float:
        """CPU seconds (user + system, all threads) of the timed steps: steadier than wall
        time on a machine that other jobs share."""
        return self.cpu[self.warmup + self.steps] - self.cpu[self.warmup]


def run_rlhfkit(a, clock: Clock, pairs, system, workdir: str) -> dict:
    from rlhfkit.data.io import write_records
    from rlhfkit.train import loop as looplib
    from rlhfkit.train.dpo import DPOConfig, train_dpo

    path = Path(workdir) / "pairs.jsonl"
    write_records(pairs, path)
    original = looplib.Loop.train_step
    last = {}

    def train_step(self, step_fn):
        if not clock.stamps:
            clock.stamp()
        metrics = original(self, step_fn)
        last["loss"] = metrics[f"loss/{self.stage}"]
        if clock.stamp():
            raise Finished
        return metrics

    looplib.Loop.train_step = train_step
    cfg = DPOConfig(model=a.model, data=str(path), eval_fraction=0.0, output_dir=workdir,
                    max_length=a.max_length, precision=a.precision, learning_rate=a.lr,
                    lr_scheduler="constant", warmup_ratio=0.0, max_steps=a.warmup + a.steps,
                    batch_size=a.batch_size, group_by_length=False, beta=0.1,
                    system_prompt=system, progress=False, report_to="none",
                    gradient_checkpointing=a.rlhfkit_gc)
    try:
        train_dpo(cfg)
    except Finished:
        pass
    return {"last_loss": last.get("loss")}


def run_trl(a, clock: Clock, pairs, system, workdir: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    head = [{"role": "system", "content": system}] if system else []
    rows = [{"prompt": [*head, {"role": "user", "content": c.prompt}],
             "chosen": [{"role": "assistant", "content": c.chosen}],
             "rejected": [{"role": "assistant", "content": c.rejected}]} for c in pairs]
    tokenizer = AutoTokenizer.from_pretrained(a.model)

    class Stamp(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.stamp()

        def on_step_end(self, args, state, control, **kwargs):
            if clock.stamp():
                control.should_training_stop = True

    args = TRLConfig(output_dir=workdir, max_steps=a.warmup + a.steps,
                     per_device_train_batch_size=a.batch_size, learning_rate=a.lr,
                     lr_scheduler_type="constant", warmup_steps=0, max_length=a.max_length,
                     bf16=precision_flag(a.precision) == "bf16", use_cpu=True, beta=0.1,
                     save_strategy="no", eval_strategy="no", report_to="none", seed=0,
                     precompute_ref_log_probs=a.trl_precompute, logging_steps=1)
    # Models are loaded here (fp32, as rlhfkit loads them) and handed over: the converted cache
    # folder's config.json names no ``architectures``, so TRL cannot load it from the path.
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    ref_model = None if a.trl_precompute else AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.float32)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[Stamp()])
    result = trainer.train()
    return {"last_loss": float(result.training_loss),
            "gradient_checkpointing": bool(args.gradient_checkpointing),
            "precompute_ref_log_probs": a.trl_precompute}


def run(a: argparse.Namespace) -> int:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    clock = Clock(a.warmup, a.steps)
    pairs, system = reviews_pairs((a.warmup + a.steps) * a.batch_size)
    with tempfile.TemporaryDirectory(prefix=f"bench-dpo-{a.framework}-") as workdir:
        fn = run_rlhfkit if a.framework == "rlhfkit" else run_trl
        info = fn(a, clock, pairs, system, workdir)
    if len(clock.stamps) < a.warmup + a.steps + 1:
        print(f"only {len(clock.stamps) - 1} steps ran", file=sys.stderr)
        return 1
    record = {
        "framework": a.framework, "pairs": a.steps * a.batch_size,
        "timed_seconds": clock.timed(), "pairs_per_s": a.steps * a.batch_size / clock.timed(),
        "timed_cpu_seconds": clock.timed_cpu(),
        "cpu_seconds_per_pair": clock.timed_cpu() / (a.steps * a.batch_size),
        "peak_rss_mb": clock.peak, "startup_seconds": clock.stamps[0] - T_START,
        "step_seconds": [b - x for x, b in zip(clock.stamps, clock.stamps[1:])],
        "precision": precision_flag(a.precision), "torch_threads": torch.get_num_threads(),
        **info,
        "args": {k: v for k, v in vars(a).items() if k != "func"},
    }
    Path(a.out).write_text(json.dumps(record, indent=2))
    print(f"{a.framework:8s} {record['pairs_per_s']:.3f} pairs/s, "
          f"{record['cpu_seconds_per_pair']:.2f} CPU s/pair, peak RSS "
          f"{record['peak_rss_mb']:.0f} MiB, startup {record['startup_seconds']:.1f} s")
    return 0


def add_mfu(records: list[dict], a: argparse.Namespace) -> str:
    """Give every record its MFU (6N per token of chosen + rejected); returns the table's note.

    Neither side counts tokens, and both train on the same pairs, so a pair's tokens are the
    mean over the pairs of the run (from the data, once). The reference pass is not counted
    (rlhfkit computes it once before the timed steps; see mfu.py).
    """
    from mfu import flop_parameters, mfu, pair_tokens, peak_tflops, train_flops_per_token

    pairs, system = reviews_pairs((a.warmup + a.steps) * a.batch_size)
    per_pair = pair_tokens(a.model, pairs, system, a.max_length)
    n = flop_parameters(a.model, "lm")
    peaks = set()
    for r in records:
        peak, where = peak_tflops(r["torch_threads"], a.peak_tflops)
        peaks.add(where)
        r.update(mfu=mfu(r["pairs"] * per_pair, train_flops_per_token(n), r["timed_seconds"],
                         peak), mfu_tokens=r["pairs"] * per_pair, peak_tflops=peak)
    return (f"MFU: model FLOPs over the bf16 matmul peak, 6N per token of the chosen and the "
            f"rejected sequence (prompt included; {per_pair:.1f} tokens per pair, the mean of the "
            f"pairs trained on), N = {n / 1e6:.1f}M; the reference pass and any recomputation "
            f"by gradient checkpointing are not counted. Peak: {'; '.join(sorted(peaks))}. "
            "Definition: benchmarks/mfu.py.")


def compare(a: argparse.Namespace) -> int:
    sys.path.insert(0, str(HERE))
    from run import child_env, machine, quiet_load, versions

    results_dir = Path(a.out)
    results_dir.mkdir(parents=True, exist_ok=True)
    common = ["--model", a.model, "--warmup", str(a.warmup), "--steps", str(a.steps),
              "--batch-size", str(a.batch_size), "--max-length", str(a.max_length),
              "--precision", a.precision, "--lr", str(a.lr), "--threads", str(a.threads)]
    if a.trl_precompute:
        common.append("--trl-precompute")
    if a.rlhfkit_gc:
        common.append("--rlhfkit-gc")
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):
            order = ["rlhfkit", "trl"] if rep % 2 == 0 else ["trl", "rlhfkit"]
            for fw in order:
                out = Path(tmp) / f"{fw}-{rep}.json"
                cmd = [sys.executable, __file__, "run", "--framework", fw, "--out", str(out),
                       *common]
                load = quiet_load(a.max_load, a.wait, a.force)
                subprocess.run(cmd, check=True, env=child_env(a.threads))
                records.append({**json.loads(out.read_text()), "rep": rep, "load_before": load})
    note = add_mfu(records, a)
    suffix = ("_trl-precompute" if a.trl_precompute else "") + ("_rlhfkit-gc" if a.rlhfkit_gc
                                                                 else "")
    (results_dir / f"dpo{suffix}.json").write_text(json.dumps(records, indent=2))
    loads = [r["load_before"] for r in records]
    ratios, cpu_ratios, mems = [], [], []
    for rep in range(a.reps):
        ours = next(r for r in records if r["rep"] == rep and r["framework"] == "rlhfkit")
        theirs = next(r for r in records if r["rep"] == rep and r["framework"] == "trl")
        ratios.append(ours["pairs_per_s"] / theirs["pairs_per_s"])
        cpu_ratios.append(theirs["cpu_seconds_per_pair"] / ours["cpu_seconds_per_pair"])
        mems.append(ours["peak_rss_mb"] / theirs["peak_rss_mb"])

    def med(fw: str, key: str) -> float:
        return statistics.median(r[key] for r in records if r["framework"] == fw)

    def mfu(fw: str) -> str:
        values = [r["mfu"] for r in records if r["framework"] == fw]
        return "n/a" if None in values else f"{100 * statistics.median(values):.1f}%"

    def load(fw: str) -> str:
        values = [r["load_before"] for r in records if r["framework"] == fw]
        return f"{min(values):.1f}-{max(values):.1f}"

    table = [
        "| DPO | pairs/s | CPU s / pair | peak RSS (MiB) | startup (s) | MFU | load before |",
        "|---|---|---|---|---|---|---|",
        *[f"| {fw} | {med(fw, 'pairs_per_s'):.3f} | {med(fw, 'cpu_seconds_per_pair'):.2f} | "
          f"{med(fw, 'peak_rss_mb'):.0f} | {med(fw, 'startup_seconds'):.1f} | {mfu(fw)} "
          f"| {load(fw)} |"
          for fw in ("rlhfkit", "trl")],
        f"| rlhfkit vs TRL (speed-up, median of rounds, min-max) | {statistics.median(ratios):.2f}x "
        f"({min(ratios):.2f}-{max(ratios):.2f}) | {statistics.median(cpu_ratios):.2f}x "
        f"({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}) | {statistics.median(mems):.2f}x | | | |",
        "",
        f"Median of {a.reps} round(s); {a.warmup} + {a.steps} steps of {a.batch_size} pairs, "
        f"max length {a.max_length}, precision {a.precision}, {a.threads or 'default'} torch "
        f"thread(s). Machine: {machine()['cpu']}; 1-minute load before each run "
        f"{min(loads):.1f}-{max(loads):.1f} (benchmark alone: under {a.max_load}). rlhfkit "
        f"{versions()['rlhfkit_commit']}.",
        "",
        note,
    ]
    text = "\n".join(table)
    (results_dir / f"dpo{suffix}_table.md").write_text(text + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="same loss on the same batch")
    c.add_argument("--model", required=True)
    c.add_argument("--pairs", type=int, default=8)
    c.add_argument("--max-length", type=int, default=256)
    c.add_argument("--noise", type=float, default=0.02, help="relative weight perturbation")
    c.add_argument("--tol", type=float, default=1e-4)
    c.set_defaults(func=check)
    for name, func in (("run", run), ("compare", compare)):
        r = sub.add_parser(name)
        r.add_argument("--model", required=True)
        r.add_argument("--warmup", type=int, default=2)
        r.add_argument("--steps", type=int, default=8)
        r.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
        r.add_argument("--max-length", type=int, default=256)
        r.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
        r.add_argument("--lr", type=float, default=5e-7)
        r.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
        r.add_argument("--rlhfkit-gc", action="store_true",
                       help="rlhfkit: --gradient-checkpointing (recompute activations)")
        r.add_argument("--trl-precompute", action="store_true",
                       help="TRL: precompute_ref_log_probs=True")
        if name == "run":
            r.add_argument("--framework", choices=["rlhfkit", "trl"], required=True)
            r.add_argument("--out", required=True)
        else:
            r.add_argument("--reps", type=int, default=2)
            r.add_argument("--out", default=str(HERE / "results"), help="folder for the results")
            r.add_argument("--peak-tflops", type=float, default=0.0,
                           help="bf16 matmul peak for MFU (0 = the measured one)")
            sys.path.insert(0, str(HERE))
            from run import add_load_options

            add_load_options(r)
        r.set_defaults(func=func)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
