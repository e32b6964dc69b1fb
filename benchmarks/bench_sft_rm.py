"""One timed training run of rlhfkit or TRL, in its own process; ``run.py`` starts it.

Usage::

    python benchmarks/bench_sft_rm.py --framework rlhfkit --stage sft --model DIR --out r.json

Both frameworks train the same model (a local HF folder, never a hub download) on the same
records of the built-in ``reviews`` task, with the same batch, maximum length, precision
(bf16 autocast, fp32 master weights), learning rate and number of optimizer steps, with no
evaluation and no checkpoint in the timed region. Everything else is each framework's own
default (TRL: gradient checkpointing on, fused AdamW, token accuracy and entropy logged, no
packing; rlhfkit: length-grouped batches, logits only at response tokens, one forward pass per
distinct response of a ranking).

What is measured:

* ``samples_per_s``: samples over the wall time of the timed optimizer steps (the steps after
  ``--warmup`` untimed ones). SFT counts demonstrations; RM counts comparisons (pairs): a
  ranking of K responses counts as its C(K,2) pairs on both sides.
* ``peak_rss_mb``: ``ru_maxrss`` of this process at the end of the last timed step, i.e. the
  peak over imports, model loading, data preparation and training (not the final save, which
  is never reached or not timed).
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub / transformers / torch.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

T_START = time.perf_counter()


@dataclass
class Settings:
    """The knobs both frameworks share in one run (see ``run.py`` for the defaults)."""

    stage: str
    model: str
    warmup: int = 3
    steps: int = 20
    batch_size: int = 8
    """Per optimizer step: demonstrations (SFT) or rankings (RM; TRL gets their pairs)."""
    max_length: int = 256
    learning_rate: float = 5e-5
    seed: int = 0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class StepClock:
    """Time stamps at the end of each optimizer step, and memory at the end of the timed ones."""

    def __init__(self, s: Settings, profile_steps: int = 0, profile_out: str | None = None) -> None:
        self.s = s
        self.profile_steps = profile_steps
        self.profile_out = profile_out
        self._profiler = None
        self.stamps: list[float] = []
        self.cpu: list[float] = []
        self.peak_rss_mb = 0.0
        self.rss_before_training_mb = 0.0

    def begin(self) -> None:
        """Called once just before the first step."""
        self.rss_before_training_mb = current_rss_mb()
        self._stamp()
        self._maybe_profile(0)

    def _stamp(self) -> None:
        self.stamps.append(time.perf_counter())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu.append(usage.ru_utime + usage.ru_stime)

    def step_done(self) -> bool:
        """Record one finished step; True once the last timed step is done."""
        self._stamp()
        self._maybe_profile(len(self.stamps) - 1)
        done = len(self.stamps) - 1 >= self.s.warmup + self.s.steps
        if done and not self.peak_rss_mb:
            self.peak_rss_mb = peak_rss_mb()
        return done

    def _maybe_profile(self, steps_done: int) -> None:
        """With ``--profile N``, run torch.profiler over the first N timed steps."""
        if not self.profile_steps:
            return
        if steps_done == self.s.warmup:
            import torch

            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self._profiler.start()
        elif self._profiler is not None and steps_done == self.s.warmup + self.profile_steps:
            self._profiler.stop()
            averages = self._profiler.key_averages()
            text = averages.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=70)
            text += "\n\n" + averages.table(sort_by="cpu_time_total", row_limit=40, max_name_column_width=70)
            Path(self.profile_out).write_text(text)
            self._profiler = None

    def timed_seconds(self) -> float:
        """Wall time of the timed steps (after the warm-up steps)."""
        w = self.s.warmup
        return self.stamps[w + self.s.steps] - self.stamps[w]

    def timed_cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) of the timed steps."""
        w = self.s.warmup
        return self.cpu[w + self.s.steps] - self.cpu[w]

    def step_seconds(self) -> list[float]:
        """Duration of every step, warm-up included."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


class Finished(Exception):
    """Raised after the last timed step so that nothing after training runs."""


# ------------------------------------------------------------------------------ data

def reviews_records():
    """The reviews task's demonstrations, rankings and their pairs, plus the system prompt."""
    from rlhfkit.tasks import get_task

    task = get_task("reviews")
    return task.demonstrations(), task.rankings(), task.system_prompt


def messages(system: str | None, user: str) -> list[dict[str, str]]:
    """A chat prompt with the task's system message, as rlhfkit builds it."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}]


# ------------------------------------------------------------------------------ rlhfkit

def run_rlhfkit(s: Settings, clock: StepClock, workdir: str, fused_adamw: bool = False,
                gradient_checkpointing: bool = False) -> dict:
    """Train with rlhfkit's own stage function; returns what was counted.

    Two what-ifs measure changes without editing rlhfkit: ``fused_adamw`` forces
    ``fused=True`` on the loop's ``torch.optim.AdamW``, and ``gradient_checkpointing`` turns
    on gradient checkpointing (rlhfkit's own option where it has one, else transformers'). The
    record says which optimizer and checkpointing actually ran.
    """
    import torch

    from rlhfkit.train import loop as looplib
    from rlhfkit.train import rm as rmlib
    from rlhfkit.train import sft as sftlib

    if fused_adamw:
        class FusedAdamW(torch.optim.AdamW):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **{**kwargs, "fused": True})

        torch.optim.AdamW = FusedAdamW
    has_gc_option = "gradient_checkpointing" in looplib.TrainConfig.__dataclass_fields__
    if gradient_checkpointing and not has_gc_option:
        build_policy, build_reward_model = sftlib.build_policy, rmlib.build_reward_model

        def policy_with_gc(cfg):
            model = build_policy(cfg)
            model.gradient_checkpointing_enable()
            return model

        def reward_model_with_gc(cfg, pad_token_id):
            model = build_reward_model(cfg, pad_token_id)
            model.seq_model.gradient_checkpointing_enable()
            return model

        sftlib.build_policy, rmlib.build_reward_model = policy_with_gc, reward_model_with_gc

    counted = {"samples": 0, "tokens": 0}
    original_train_step = looplib.Loop.train_step
    original_micro_batches = looplib.Loop.micro_batches

    def micro_batches(self, step):
        batches = original_micro_batches(self, step)
        if clock.s.warmup <= step < clock.s.warmup + clock.s.steps:
            for b in batches:
                counted["samples"] += (len(b["chosen_idx"]) if s.stage == "rm"
                                       else b["input_ids"].shape[0])
                counted["tokens"] += int(b["num_tokens"])
        return batches

    def train_step(self, step_fn):
        if not clock.stamps:
            clock.begin()
            # What actually runs, whatever rlhfkit's defaults are at the time.
            owner = getattr(self, "run_", self)  # the Run holds the optimizer (since 9dbad4a)
            optimizer = getattr(owner.optimizer, "optimizer", owner.optimizer)
            counted["optimizer_fused"] = bool(optimizer.defaults.get("fused"))
            counted["gradient_checkpointing"] = any(
                getattr(m, "is_gradient_checkpointing", False) for m in self.model.modules())
        metrics = original_train_step(self, step_fn)
        counted["last_loss"] = float(metrics[f"loss/{self.stage}"])
        if clock.step_done():
            raise Finished
        return metrics

    looplib.Loop.micro_batches = micro_batches
    looplib.Loop.train_step = train_step
    common = dict(
        model=s.model, data="task:reviews", eval_fraction=0.0, output_dir=workdir,
        max_length=s.max_length, precision="bf16", learning_rate=s.learning_rate,
        lr_scheduler="constant", warmup_ratio=0.0, max_steps=s.warmup + s.steps,
        batch_size=s.batch_size, grad_accum=1, seed=s.seed,
    )
    if has_gc_option:
        common["gradient_checkpointing"] = gradient_checkpointing
    try:
        if s.stage == "sft":
            from rlhfkit.train.sft import SFTConfig, train_sft

            train_sft(SFTConfig(**common))
        else:
            from rlhfkit.train.rm import RMConfig, train_rm

            train_rm(RMConfig(**common))
    except Finished:
        pass
    fused = counted.pop("optimizer_fused")
    settings = {"precision": "bf16 autocast, fp32 weights",
                "optimizer": "AdamW, fused" if fused else "AdamW, for-loop (torch's CPU default)",
                "gradient_checkpointing": counted.pop("gradient_checkpointing"),
                "torch_threads": torch.get_num_threads()}
    return {**counted, "settings": settings}


# ------------------------------------------------------------------------------ TRL

def run_trl(s: Settings, clock: StepClock, workdir: str, gradient_checkpointing: bool | None):
    """Train with TRL's SFTTrainer or RewardTrainer; returns what was counted."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    demos, rankings, system = reviews_records()
    if s.stage == "sft":
        rows = [{"prompt": messages(system, d.prompt),
                 "completion": [{"role": "assistant", "content": d.response}]} for d in demos]
    else:
        # TRL takes pairs: every ranking becomes its C(K,2) (chosen, rejected) pairs. TRL has no
        # notion of a tie, so tied pairs (if any) are dropped and counted.
        rows, ties = [], 0
        for r in rankings:
            for c in r.to_comparisons():
                if c.tie:
                    ties += 1
                    continue
                rows.append({"prompt": messages(system, c.prompt),
                             "chosen": [{"role": "assistant", "content": c.chosen}],
                             "rejected": [{"role": "assistant", "content": c.rejected}]})
    # Same samples per step: an RM step of rlhfkit takes ``batch_size`` whole rankings.
    per_step = s.batch_size if s.stage == "sft" else s.batch_size * math.comb(len(rankings[0].responses), 2)
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(s.model)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            if clock.step_done():
                control.should_training_stop = True

    common = dict(
        output_dir=workdir, max_steps=s.warmup + s.steps, per_device_train_batch_size=per_step,
        gradient_accumulation_steps=1, learning_rate=s.learning_rate, lr_scheduler_type="constant",
        warmup_steps=0, max_length=s.max_length, bf16=True, use_cpu=True, seed=s.seed,
        save_strategy="no", eval_strategy="no", report_to="none",
    )
    if gradient_checkpointing is not None:
        common["gradient_checkpointing"] = gradient_checkpointing
    # The model is loaded here (fp32, as rlhfkit loads it) and handed over: the converted cache
    # folder's config.json names no ``architectures``, so TRL cannot pick a class from the path.
    if s.stage == "sft":
        from transformers import AutoModelForCausalLM
        from trl import SFTConfig, SFTTrainer

        model = AutoModelForCausalLM.from_pretrained(s.model, dtype=torch.float32)
        args = SFTConfig(**common)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[Clock()])
    else:
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(
            s.model, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        args = RewardConfig(**common)
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset,
                                processing_class=tokenizer, callbacks=[Clock()])
    result = trainer.train()
    info = {
        "samples": s.steps * per_step,
        "last_loss": float(result.training_loss),
        "settings": {"precision": "bf16 autocast, fp32 weights",
                     "optimizer": str(args.optim),
                     "gradient_checkpointing": bool(args.gradient_checkpointing),
                     "packing": bool(getattr(args, "packing", False)),
                     "train_rows": len(dataset),
                     "torch_threads": torch.get_num_threads()},
    }
    if s.stage == "rm":
        info["settings"]["ties_dropped"] = ties
    return info


# ------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run one training, write its JSON record."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", choices=["rlhfkit", "trl"], required=True)
    p.add_argument("--stage", choices=["sft", "rm"], required=True)
    p.add_argument("--model", required=True, help="local HF folder of the model")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile the first N timed steps with torch.profiler (OUT.prof.txt)")
    p.add_argument("--rlhfkit-fused-adamw", action="store_true",
                   help="rlhfkit only, a what-if: create the loop's AdamW with fused=True")
    p.add_argument("--rlhfkit-gradient-checkpointing", action="store_true",
                   help="rlhfkit only, a what-if: turn on gradient checkpointing in the model")
    p.add_argument("--trl-gradient-checkpointing", choices=["default", "on", "off"],
                   default="default", help="TRL only: keep its default or force it")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0 = torch's default: one per core)")
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    s = Settings(stage=a.stage, model=a.model, warmup=a.warmup, steps=a.steps,
                 batch_size=a.batch_size, max_length=a.max_length, learning_rate=a.learning_rate)
    clock = StepClock(s, a.profile, a.out + ".prof.txt")
    with tempfile.TemporaryDirectory(prefix=f"bench-{a.framework}-{a.stage}-") as workdir:
        if a.framework == "rlhfkit":
            info = run_rlhfkit(s, clock, workdir, a.rlhfkit_fused_adamw,
                               a.rlhfkit_gradient_checkpointing)
        else:
            gc = {"default": None, "on": True, "off": False}[a.trl_gradient_checkpointing]
            info = run_trl(s, clock, workdir, gc)
    if len(clock.stamps) < s.warmup + s.steps + 1:
        print(f"only {len(clock.stamps) - 1} steps ran", file=sys.stderr)
        return 1
    seconds = clock.timed_seconds()
    record = {
        "framework": a.framework,
        "stage": a.stage,
        "variant": (a.trl_gradient_checkpointing if a.framework == "trl" else "+".join(
            ["fused-adamw"] * a.rlhfkit_fused_adamw + ["gc"] * a.rlhfkit_gradient_checkpointing)
            or "default"),
        "samples": info.pop("samples"),
        "timed_seconds": seconds,
        "samples_per_s": None,
        "timed_cpu_seconds": clock.timed_cpu_seconds(),
        "peak_rss_mb": clock.peak_rss_mb,
        "rss_before_training_mb": clock.rss_before_training_mb,
        "step_seconds": clock.step_seconds(),
        "startup_seconds": clock.stamps[0] - T_START,
        **info,
        "args": asdict(s),
    }
    record["samples_per_s"] = record["samples"] / seconds
    record["cpu_seconds_per_sample"] = record["timed_cpu_seconds"] / record["samples"]
    Path(a.out).write_text(json.dumps(record, indent=2))
    print(f"{a.framework:8s} {a.stage}: {record['samples_per_s']:.2f} samples/s, "
          f"peak RSS {record['peak_rss_mb']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
