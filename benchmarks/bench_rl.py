"""rlhfkit vs TRL on online RL: GRPO, RLOO (and PPO against TRL's last PPO trainer).

Usage::

    .venv-bench/bin/python benchmarks/bench_rl.py                  # GRPO and RLOO, 2 rounds
    .venv-bench/bin/python benchmarks/bench_rl.py --algos ppo --trl-python .venv-bench-ppo/bin/python
    python benchmarks/bench_rl.py --child --framework rlhfkit --algo grpo --out r.json ...

The driver starts every run as a fresh process (``--child``), alternating rlhfkit and TRL
within each round (and which goes first between rounds), as ``run.py`` does for SFT and RM.
Each ratio compares the two runs of one round; the table gives the median over rounds with
the min-max spread. Results: ``benchmarks/results/rl_grpo_rloo.json`` and
``rl_grpo_rloo_table.md`` (``rl_ppo.*`` for PPO; per-run records and logs in
``benchmarks/results/raw/rl-*``, not kept in git: every record is in the JSON too).

Both sides get the same model (SmolLM2-135M-Instruct from the local converted folder, fp32
weights, bf16 autocast for training), the same prompts (the reviews task's training prompts,
with its system message, through the chat template), the same group size, the same
generation length (``--max-new-tokens``, stopping early at end-of-turn), sampling at
temperature 1 with no top-k/top-p, the same KL coefficient, learning rate and reward: VADER
sentiment of the response (``rlhfkit.feedback.gold.SentimentScorer``, called by both), so no
reward model differs. PPO needs a reward *model* in TRL, so for PPO both sides score with the
same sequence-classification folder (SmolLM2 with a fixed, seeded random head) and TRL's
separate value model is matched by ``--critic rm`` in rlhfkit.

A step is one rollout batch: generation, reward, reference/old log-probs, and the update (one
optimizer step for GRPO/RLOO). ``samples_per_s`` counts completions over the wall time of the
timed steps (after ``--warmup`` untimed ones); ``tokens_per_s`` counts generated tokens, since
responses that end early make a step cheaper. ``peak_rss_mb`` is the process's ``ru_maxrss``
at the end of the last timed step.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
T_START = time.perf_counter()


@dataclass
class Settings:
    """What both sides share in one run."""

    algo: str
    model: str
    warmup: int = 1
    steps: int = 3
    prompts_per_step: int = 2
    group_size: int = 4
    max_new_tokens: int = 32
    kl_coef: float = 0.05
    learning_rate: float = 1e-6
    seed: int = 0
    reward_model: str = ""
    """PPO only: the shared sequence-classification reward model."""
    ppo_epochs: int = 1
    """PPO only: passes over each rollout batch (one mini-batch = the whole batch)."""


class Finished(Exception):
    """Raised after the last timed step so that nothing after training runs."""


def vader():
    """The shared reward: VADER compound sentiment of the response, in [-1, 1]."""
    from rlhfkit.feedback.gold import SentimentScorer

    return SentimentScorer()


def reviews_prompts() -> tuple[list[str], str | None]:
    """The reviews task's training prompts and its system message."""
    from rlhfkit.tasks import get_task

    task = get_task("reviews")
    return task.prompts("train"), task.system_prompt


def messages(system: str | None, user: str) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}]


# ------------------------------------------------------------------------------ rlhfkit

def run_rlhfkit(s: Settings, clock, workdir: str) -> dict:
    """One rlhfkit run through its own stage function, stopped after the timed steps."""
    import torch

    from rlhfkit.train import rl

    counted = {"samples": 0, "tokens": 0}
    live: dict = {}  # read from the run itself: what actually ran
    start_step, end_step = rl.RLRun.start_step, rl.RLRun.end_step

    def on_start(self):
        if not clock.stamps:
            clock.begin()
        start_step(self)

    def on_end(self, metrics, rollout, kl_seq):
        end_step(self, metrics, rollout, kl_seq)
        opt = getattr(self.optimizer, "optimizer", self.optimizer)
        live.update(fused_adamw=bool(opt.defaults.get("fused")),
                    gradient_checkpointing=bool(getattr(self.lm, "is_gradient_checkpointing",
                                                        False)))
        if s.warmup <= self.step < s.warmup + s.steps:
            counted["samples"] += len(rollout)
            counted["tokens"] += int(rollout.response_lengths.sum())
        if clock.step_done():
            raise Finished

    rl.RLRun.start_step, rl.RLRun.end_step = on_start, on_end
    common = dict(model=s.model, data="task:reviews", output_dir=workdir, precision="bf16",
                  learning_rate=s.learning_rate, lr_scheduler="constant", warmup_ratio=0.0,
                  max_steps=s.warmup + s.steps, max_new_tokens=s.max_new_tokens,
                  kl_coef=s.kl_coef, seed=s.seed, eval_prompts=0, gold="none",
                  progress=False, report_to="none", temperature=1.0, top_k=0, top_p=1.0)
    try:
        if s.algo == "ppo":
            from rlhfkit.train.ppo import PPOConfig, train_ppo

            train_ppo(PPOConfig(reward_model=s.reward_model, critic="rm",
                                batch_size=s.prompts_per_step,
                                mini_batch_size=s.prompts_per_step, update_epochs=s.ppo_epochs,
                                normalize_reward=False, **common))
        else:
            from rlhfkit.train.pg import ALGORITHMS, train_pg

            train_pg(ALGORITHMS[s.algo].config(reward_model="scorer:sentiment",
                              batch_size=s.prompts_per_step, num_samples=s.group_size,
                              **common))
    except Finished:
        pass
    return {**counted, "settings": {"precision": "bf16 autocast for training, bf16 weight "
                                                 "copy for decoding on CPU",
                                    "torch_threads": torch.get_num_threads(), **live}}


# ------------------------------------------------------------------------------ TRL

def run_trl(s: Settings, clock, workdir: str) -> dict:
    """One TRL run (GRPOTrainer, RLOOTrainer, or the experimental PPOTrainer)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    prompts, system = reviews_prompts()
    tokenizer = AutoTokenizer.from_pretrained(s.model)
    counted = {"samples": 0, "tokens": 0, "lengths": []}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            if clock.step_done():
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                counted["lengths"].append(float(logs["completions/mean_length"]))

    model = AutoModelForCausalLM.from_pretrained(s.model, dtype=torch.float32)
    common = dict(output_dir=workdir, max_steps=s.warmup + s.steps, learning_rate=s.learning_rate,
                  lr_scheduler_type="constant", warmup_steps=0, bf16=True, use_cpu=True,
                  seed=s.seed, save_strategy="no", report_to="none", logging_steps=1)
    per_step = s.prompts_per_step * s.group_size
    if s.algo in ("grpo", "rloo"):
        scorer = vader()

        def sentiment(prompts, completions, **kwargs):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return scorer(prompts, texts)

        dataset = Dataset.from_list([{"prompt": messages(system, p)} for p in prompts])
        gen = dict(num_generations=s.group_size, max_completion_length=s.max_new_tokens,
                   per_device_train_batch_size=per_step, gradient_accumulation_steps=1,
                   temperature=1.0, top_k=0, top_p=1.0, beta=s.kl_coef)
        if s.algo == "grpo":
            args = trl.GRPOConfig(**common, **gen)
            trainer = trl.GRPOTrainer(model=model, reward_funcs=[sentiment], args=args,
                                      train_dataset=dataset, processing_class=tokenizer,
                                      callbacks=[Clock()])
        else:
            args = trl.RLOOConfig(**common, **gen)
            trainer = trl.RLOOTrainer(model=model, reward_funcs=[sentiment], args=args,
                                      train_dataset=dataset, processing_class=tokenizer,
                                      callbacks=[Clock()])
        trainer.train()
        counted["samples"] = s.steps * per_step
        timed = counted["lengths"][s.warmup:s.warmup + s.steps]
        counted["tokens"] = int(round(sum(timed) * per_step)) if len(timed) == s.steps else None
        info = {"gradient_checkpointing": bool(args.gradient_checkpointing),
                "loss_type": getattr(args, "loss_type", None)}
    else:
        info = run_trl_ppo(s, model, tokenizer, prompts, system, workdir, common, counted, Clock)
    return {**counted, "settings": {"precision": "bf16 autocast, fp32 weights",
                                    "trl": trl.__version__,
                                    "torch_threads": torch.get_num_threads(), **info}}


def run_trl_ppo(s, model, tokenizer, prompts, system, workdir, common, counted, Clock) -> dict:
    """TRL's last PPO trainer (trl.experimental.ppo, TRL <= 1.12): tokenized prompts, a reward
    model and a separate value model, both from the shared reward-model folder."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    rows = []
    for p in prompts:
        text = tokenizer.apply_chat_template(messages(system, p), add_generation_prompt=True,
                                             tokenize=False)
        rows.append({"input_ids": tokenizer(text, add_special_tokens=False)["input_ids"]})
    dataset = Dataset.from_list(rows)
    ref = AutoModelForCausalLM.from_pretrained(s.model, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(s.reward_model, num_labels=1,
                                                                dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(s.reward_model, num_labels=1,
                                                               dtype=torch.float32)
    for m in (reward, value):
        m.config.pad_token_id = tokenizer.pad_token_id
    args = PPOConfig(**common, per_device_train_batch_size=s.prompts_per_step,
                     gradient_accumulation_steps=1, num_mini_batches=1,
                     num_ppo_epochs=s.ppo_epochs, response_length=s.max_new_tokens,
                     temperature=1.0, kl_coef=s.kl_coef, stop_token="eos",
                     total_episodes=(s.warmup + s.steps) * s.prompts_per_step,
                     num_sample_generations=0)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=model, ref_model=ref,
                         reward_model=reward, value_model=value, train_dataset=dataset,
                         callbacks=[Clock()])
    # TRL's PPO loop calls the callbacks' on_step_end only every step too, but runs its own loop.
    try:
        trainer.train()
    except Finished:
        pass
    counted["samples"] = s.steps * s.prompts_per_step
    counted["tokens"] = None
    return {"gradient_checkpointing": bool(args.gradient_checkpointing)}


# ------------------------------------------------------------------------------ child main

def child(a: argparse.Namespace) -> int:
    """One timed run; writes its JSON record."""
    sys.path.insert(0, str(HERE))
    from bench_sft_rm import StepClock

    s = Settings(algo=a.algo, model=a.model, warmup=a.warmup, steps=a.steps,
                 prompts_per_step=a.prompts_per_step, group_size=a.group_size,
                 max_new_tokens=a.max_new_tokens, kl_coef=a.kl_coef,
                 learning_rate=a.learning_rate, reward_model=a.reward_model or "")
    clock = StepClock(s)  # uses s.warmup and s.steps only
    with tempfile.TemporaryDirectory(prefix=f"bench-{a.framework}-{a.algo}-") as workdir:
        info = (run_rlhfkit if a.framework == "rlhfkit" else run_trl)(s, clock, workdir)
    if len(clock.stamps) < s.warmup + s.steps + 1:
        print(f"only {len(clock.stamps) - 1} steps ran", file=sys.stderr)
        return 1
    seconds = clock.timed_seconds()
    record = {
        "framework": a.framework, "algo": a.algo, "samples": info.pop("samples"),
        "tokens": info.pop("tokens"), "timed_seconds": seconds,
        "timed_cpu_seconds": clock.timed_cpu_seconds(), "peak_rss_mb": clock.peak_rss_mb,
        "rss_before_training_mb": clock.rss_before_training_mb,
        "step_seconds": clock.step_seconds(), "startup_seconds": clock.stamps[0] - T_START,
        **info, "args": asdict(s),
    }
    record["samples_per_s"] = record["samples"] / seconds
    record["tokens_per_s"] = record["tokens"] / seconds if record["tokens"] else None
    record["cpu_seconds_per_sample"] = record["timed_cpu_seconds"] / record["samples"]
    Path(a.out).write_text(json.dumps(record, indent=2))
    print(f"{a.framework} {a.algo}: {record['samples_per_s']:.3f} samples/s, "
          f"peak RSS {record['peak_rss_mb']:.0f} MiB")
    return 0


# ------------------------------------------------------------------------------ driver

def policy_folder(model: str, out: Path) -> str:
    """The model folder with ``architectures`` named in its config (TRL loads the reference
    model from the path and picks the class from that field; the converted folder has none).
    Everything else is a link to the original files; both sides load this folder."""
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(model).iterdir():
        if f.name != "config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f)
    config = json.loads((Path(model) / "config.json").read_text())
    config.setdefault("architectures", None)
    config["architectures"] = config["architectures"] or ["LlamaForCausalLM"]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return str(out)


def make_reward_model(model: str, out: Path) -> str:
    """PPO: the shared reward model, SmolLM2 with a seeded random scalar head."""
    # The converted folder stores the tied embedding only as lm_head.weight, which a
    # sequence-classification class does not read: copy it in, or the RM's embeddings are random.
    code = (
        "import torch, sys; torch.manual_seed(0)\n"
        "from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, "
        "AutoTokenizer\n"
        "m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], num_labels=1)\n"
        "lm = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "m.model.embed_tokens.weight.data.copy_(lm.get_input_embeddings().weight.data)\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1]); m.config.pad_token_id = t.pad_token_id\n"
        "m.save_pretrained(sys.argv[2]); t.save_pretrained(sys.argv[2])\n")
    if not (out / "config.json").exists():
        subprocess.run([sys.executable, "-c", code, model, str(out)], check=True)
    return str(out)


def run_one(framework: str, algo: str, a: argparse.Namespace, model: str, raw: Path, tag: str,
            reward_model: str | None) -> dict:
    from run import child_env

    out, log = raw / f"{tag}.json", raw / f"{tag}.log"
    python = a.trl_python if (framework == "trl" and a.trl_python) else sys.executable
    cmd = [python, str(Path(__file__).resolve()), "--child", "--framework", framework,
           "--algo", algo, "--model", model, "--out", str(out), "--warmup", str(a.warmup),
           "--steps", str(a.steps), "--prompts-per-step", str(a.prompts_per_step),
           "--group-size", str(a.group_size), "--max-new-tokens", str(a.max_new_tokens),
           "--kl-coef", str(a.kl_coef), "--learning-rate", str(a.learning_rate)]
    if reward_model:
        cmd += ["--reward-model", reward_model]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-25:]
        raise SystemExit(f"{tag} failed (exit {proc.returncode}); end of {log}:\n" + "\n".join(tail))
    record = json.loads(out.read_text())
    record.update(tag=tag, wall_seconds=time.perf_counter() - t0, load_before=load_before,
                  load_after=os.getloadavg()[0], python=python)
    tok = record["tokens_per_s"]
    print(f"  {tag:22s} {record['samples_per_s']:6.3f} samples/s "
          f"{'' if tok is None else f'{tok:6.1f} tokens/s '}peak RSS "
          f"{record['peak_rss_mb']:6.0f} MiB (load {load_before:.1f})", flush=True)
    return record


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def fmt(s: dict, digits: int = 2, unit: str = "") -> str:
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}{unit}"
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def summarize(runs: list[dict], algo: str) -> dict:
    by: dict[str, dict[int, dict]] = {}
    for r in runs:
        if r["algo"] == algo:
            by.setdefault(r["framework"], {})[r["round"]] = r
    out: dict = {"contenders": {}, "ratios": {}}
    for fw, rounds in by.items():
        rs = list(rounds.values())
        out["contenders"][fw] = {
            m: spread([r[m] for r in rs]) for m in ("samples_per_s", "peak_rss_mb",
                                                     "cpu_seconds_per_sample")}
        toks = [r["tokens_per_s"] for r in rs if r.get("tokens_per_s")]
        if toks:
            out["contenders"][fw]["tokens_per_s"] = spread(toks)
    if "rlhfkit" in by and "trl" in by:
        common = sorted(set(by["rlhfkit"]) & set(by["trl"]))
        ours, theirs = by["rlhfkit"], by["trl"]
        out["ratios"] = {
            "speedup": spread([ours[k]["samples_per_s"] / theirs[k]["samples_per_s"]
                               for k in common]),
            "cpu_speedup": spread([theirs[k]["cpu_seconds_per_sample"]
                                   / ours[k]["cpu_seconds_per_sample"] for k in common]),
            "rss_ratio": spread([ours[k]["peak_rss_mb"] / theirs[k]["peak_rss_mb"]
                                 for k in common]),
        }
    return out


def table(result: dict) -> str:
    a = result["settings"]
    lines = ["| algorithm | trainer | completions/s | generated tokens/s | peak RSS (MiB) "
             "| CPU s per completion |", "|---|---|---|---|---|---|"]
    for algo, summary in result["summary"].items():
        for fw, c in summary["contenders"].items():
            name = "rlhfkit" if fw == "rlhfkit" else f"TRL {result['trl_versions'][algo]}"
            tok = fmt(c["tokens_per_s"], 1) if "tokens_per_s" in c else "n/a"
            lines.append(f"| {algo.upper()} | {name} | {fmt(c['samples_per_s'], 3)} | {tok} "
                         f"| {fmt(c['peak_rss_mb'], 0)} | {fmt(c['cpu_seconds_per_sample'])} |")
    lines += ["", "| algorithm | rlhfkit / TRL throughput (wall) | (CPU time) | peak RSS |",
              "|---|---|---|---|"]
    for algo, summary in result["summary"].items():
        r = summary["ratios"]
        if r:
            lines.append(f"| {algo.upper()} | **{fmt(r['speedup'], 2, 'x')}** "
                         f"| {fmt(r['cpu_speedup'], 2, 'x')} | **{fmt(r['rss_ratio'], 2, 'x')}** |")
    loads = [r["load_before"] for r in result["runs"]]
    m = result["machine"]
    per_prompt = " or ".join(sorted({"1" if algo == "ppo" else str(a["group_size"])
                                     for algo in result["summary"]}))
    lines += ["", f"Median over {a['reps']} round(s) (min-max in brackets), each ratio from runs "
              f"of the same round; {a['warmup']} untimed warm-up step then {a['steps']} timed "
              f"steps per run; a step = {a['prompts_per_step']} prompts x "
              f"{per_prompt} completions, up to "
              f"{a['max_new_tokens']} new tokens, KL coefficient {a['kl_coef']}, lr "
              f"{a['learning_rate']}. Machine: {m['cpu']}, {m['nproc']} cores; 1-minute load "
              f"before each run {min(loads):.1f}-{max(loads):.1f}. {result['date']}."]
    return "\n".join(lines) + "\n"


def driver(a: argparse.Namespace) -> int:
    sys.path.insert(0, str(HERE))
    from run import machine, model_dir, versions

    out = Path(a.out)
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    cache = Path.home() / ".cache" / "rlhfkit" / "bench"  # model folders: never in results/
    model = policy_folder(model_dir(), cache / "rl-policy")
    reward_model = make_reward_model(model, cache / "rl-ppo-reward-model") \
        if "ppo" in a.algos else None
    print(f"model: {model}; {a.reps} rounds of {a.warmup} + {a.steps} steps; algos {a.algos}")
    runs, t0 = [], time.perf_counter()
    for rnd in range(a.reps):
        for algo in a.algos:
            order = ["rlhfkit", "trl"] if rnd % 2 == 0 else ["trl", "rlhfkit"]
            for fw in order:
                r = run_one(fw, algo, a, model, raw, f"rl-{algo}-{fw}-r{rnd}",
                            reward_model if algo == "ppo" else None)
                r["round"] = rnd
                runs.append(r)
    trl_versions = {algo: next((r["settings"]["trl"] for r in runs
                                if r["algo"] == algo and r["framework"] == "trl"), "?")
                    for algo in a.algos}
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "versions": versions(), "trl_versions": trl_versions,
        "settings": {k: getattr(a, k) for k in ("reps", "warmup", "steps", "prompts_per_step",
                                                "group_size", "max_new_tokens", "kl_coef",
                                                "learning_rate")} | {"model": model},
        "summary": {algo: summarize(runs, algo) for algo in a.algos},
        "total_seconds": time.perf_counter() - t0, "runs": runs,
    }
    name = f"rl_{a.name or '_'.join(a.algos)}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    md = table(result)
    (out / f"{name}_table.md").write_text(md)
    print("\n" + md)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help="run one timed run (driver's use)")
    p.add_argument("--framework", choices=["rlhfkit", "trl"])
    p.add_argument("--algo", choices=["grpo", "rloo", "ppo"])
    p.add_argument("--algos", nargs="+", choices=["grpo", "rloo", "ppo"], default=["grpo", "rloo"])
    p.add_argument("--model", help="local HF folder of the policy (child)")
    p.add_argument("--reward-model", help="PPO: shared reward-model folder (child)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default=None,
                   help="results: results/rl_NAME.json and rl_NAME_table.md (default: the algos)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--trl-python", default=None,
                   help="python of the venv with TRL (e.g. .venv-bench-ppo/bin/python for PPO)")
    a = p.parse_args(argv)
    return child(a) if a.child else driver(a)


if __name__ == "__main__":
    sys.exit(main())
