"""The demo's figures over seeds: ``rlhfkit demo`` from scratch, once per seed, mean +- sd.

Usage::

    python benchmarks/bench_demo.py                                  # seeds 0 1 2, defaults
    python benchmarks/bench_demo.py -- --generation-backend hf       # demo options after --
    python benchmarks/bench_demo.py --seeds 0 -- --quick --rl-steps 1   # a dry run

Each seed runs ``python -m rlhfkit.cli demo --seed S --output-dir RUNS/STAMP/seed-S`` (this
checkout's ``src/`` first on ``PYTHONPATH``), with the demo's default settings plus whatever
follows ``--``, in a fresh folder, one after the other. Before each run the 1-minute load
average must be under ``--max-load`` (1.5): the script waits up to ``--wait`` seconds for it,
then refuses to start unless ``--force``; the load is recorded next to every run.

Per run it records the wall time of the process (the demo from no files to its report; the
converted model folder in ``~/.cache/rlhfkit`` is kept), the peak memory of its process tree
read every second (:func:`watch_tree`: the stages run in processes of their own), and reads
the run's ``summary.json``:
``eval`` (gold win rate against SFT, length-controlled win rate, KL, lengths, distinct-2, and
with ``--rounds`` > 1 the final reward model's accuracy on the final policy's samples) and
``rm_eval`` (the first reward model's held-out accuracy). It writes
``benchmarks/results/demo.json`` (every run, the settings, machine and versions) and
``demo_table.md``: mean +- sd over seeds, each figure next to its target, met or missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402  (benchmarks/ is not a package)
    LoadTooHigh,
    add_load_options,
    child_env,
    machine,
    quiet_load,
    versions,
)

from rlhfkit import memory  # noqa: E402

WALL_TARGET_MIN = {"hf": 15.0, "vllm": 12.0}
"""Wall clock of the demo from scratch, minutes, by the generation backend it used."""

FIGURES = [
    # key, what, direction, target (None: shown, not judged)
    ("gold/win_rate", "gold win rate of the final policy vs SFT", ">=", 0.85),
    ("kl/final", "KL of the final policy to SFT (nats)", "<=", 10.0),
    ("length_ratio", "mean response length / SFT's", ">=", 0.8),
    ("distinct2_ratio", "distinct-2 / SFT's", ">=", 0.9),
    ("rm/accuracy_on_final_policy",
     "final RM's accuracy against the labeler on final-policy samples", ">=", 0.80),
    ("rm/labeler_ceiling_on_final_policy",
     "the gold scorer's own accuracy against the labeler on the same samples", ">=", None),
    ("wall_minutes", "wall clock of the demo (min)", "<=", "backend"),
    ("memory/tree_pss_peak_gib", "peak memory of the demo's processes together (sum of PSS, "
     "GiB, read every second)", "<=", 6.0),
    ("memory/largest_process_gib", "peak resident set of its largest process (GiB)", "<=", None),
    ("gold/lc_win_rate", "length-controlled gold win rate vs SFT", ">=", None),
    ("length/final", "mean response length, final policy (tokens)", ">=", None),
    ("length/sft", "mean response length, SFT (tokens)", ">=", None),
    ("distinct2/final", "distinct-2, final policy", ">=", None),
    ("distinct2/sft", "distinct-2, SFT", ">=", None),
    ("rm_heldout_accuracy", "first RM's held-out accuracy", ">=", None),
]


def backend_used(extra: list[str], log: str) -> str:
    """``vllm`` or ``hf``: what the demo sampled with (``auto`` is read from its log)."""
    if "--generation-backend" in extra:
        asked = extra[extra.index("--generation-backend") + 1]
        if asked in ("hf", "vllm"):
            return asked
    if "vLLM not used" in log:  # auto fell back, and said why
        return "hf"
    # vLLM's own log lines carry "[file.py:line]" (its INFO lines may be silenced, its
    # start-up warnings are not); with hf no vLLM module runs.
    started = "Initializing a V1 LLM engine" in log or re.search(
        r"\[(vllm|cpu_worker|arg_utils|gpu_model_runner|cpu_model_runner)\.py:\d+\]", log)
    return "vllm" if started else "hf"


def figures_of(summary: dict, wall_seconds: float) -> dict[str, float | None]:
    """The figures of one run from its summary.json."""
    ev, rm_eval = summary.get("eval", {}), summary.get("rm_eval", {})

    def ratio(a: str, b: str) -> float | None:
        return ev[a] / ev[b] if ev.get(a) is not None and ev.get(b) else None

    out = {k: ev.get(k) for k, *_ in FIGURES if k in ev}
    out.update(length_ratio=ratio("length/final", "length/sft"),
               distinct2_ratio=ratio("distinct2/final", "distinct2/sft"),
               rm_heldout_accuracy=rm_eval.get("eval/rm_accuracy"),
               wall_minutes=wall_seconds / 60)
    for key in ("rm/accuracy_on_final_policy", "rm/labeler_ceiling_on_final_policy"):
        out.setdefault(key, ev.get(key))
    return out


def run_seed(seed: int, folder: Path, extra: list[str], a: argparse.Namespace) -> dict:
    """One demo from scratch; its record."""
    log = folder.with_suffix(".log")
    cmd = [sys.executable, "-m", "rlhfkit.cli", "demo", "--seed", str(seed), "--output-dir",
           str(folder), *extra]
    load = quiet_load(a.max_load, a.wait, a.force)
    start = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"seed {seed}: {' '.join(cmd[1:])} (load {load:.2f}; log {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)
        peak = watch_tree(proc)
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    record = {"seed": seed, "folder": str(folder), "log": str(log), "command": cmd,
              "started": start, "load_before": load, "load_after": os.getloadavg()[0],
              "wall_seconds": wall, "exit_code": proc.returncode, **peak,
              "backend": backend_used(extra, text)}
    summary_file = folder / "summary.json"
    if proc.returncode != 0 or not summary_file.exists():
        record["error_tail"] = [x for x in text.splitlines() if x.strip()][-20:]
        print(f"seed {seed}: failed (exit {proc.returncode}); end of {log}:\n  "
              + "\n  ".join(record["error_tail"][-8:]), flush=True)
        return record
    summary = json.loads(summary_file.read_text())
    record.update(figures={**figures_of(summary, wall), **peak}, timings=summary.get("timings"),
                  eval=summary.get("eval"), rm_eval=summary.get("rm_eval"))
    f = record["figures"]
    print(f"seed {seed}: {wall / 60:.1f} min, win rate {f.get('gold/win_rate')}, "
          f"KL {f.get('kl/final')}", flush=True)
    return record


def watch_tree(proc: subprocess.Popen, every_s: float = 1.0) -> dict[str, float]:
    """Wait for ``proc``, reading its process tree's memory every ``every_s`` seconds.

    The demo runs each stage in a process of its own, so neither ``/usr/bin/time`` nor the
    demo's own peak sees the whole: this reads the sum of the tree's proportional set sizes
    (the memory the processes hold together, shared pages once) and its largest process.
    """
    pss = largest = 0.0
    while proc.poll() is None:
        now, big = memory.tree_memory_gib(proc.pid)
        pss, largest = max(pss, now), max(largest, big)
        time.sleep(every_s)
    return {"memory/tree_pss_peak_gib": pss, "memory/largest_process_gib": largest}


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(runs: list[dict]) -> dict:
    """Mean, sd and per-seed values of every figure, judged against its target."""
    ok = [r for r in runs if "figures" in r]
    backends = sorted({r["backend"] for r in ok})
    out = {}
    for key, what, direction, target in FIGURES:
        values = [r["figures"].get(key) for r in ok]
        values = [v for v in values if v is not None]
        if target == "backend":  # the slower target when the runs differ
            target = max(WALL_TARGET_MIN[b] for b in backends) if backends else None
        entry = {"what": what, "direction": direction, "target": target, "n": len(values),
                 "values": values}
        if values:
            entry["mean"], entry["sd"] = mean_sd(values)
            if target is not None:
                met = [v >= target if direction == ">=" else v <= target for v in values]
                mean_met = entry["mean"] >= target if direction == ">=" else \
                    entry["mean"] <= target
                entry.update(met=mean_met, seeds_met=sum(met))
        out[key] = entry
    return out


def table(result: dict) -> str:
    """demo_table.md: the figures with mean +- sd, per seed, and the targets."""
    lines = ["| figure | mean ± sd | per seed | target | |", "|---|---|---|---|---|"]
    for e in result["summary"].values():
        if not e["n"]:
            lines.append(f"| {e['what']} | n/a | | "
                         f"{'' if e['target'] is None else e['direction'] + ' ' + str(e['target'])}"
                         f" | {'not in summary.json' if e['target'] is not None else ''} |")
            continue
        sd = "" if e["sd"] is None else f" ± {e['sd']:.3f}"
        per_seed = ", ".join(f"{v:.3f}" for v in e["values"])
        target = "" if e["target"] is None else f"{e['direction']} {e['target']:g}"
        verdict = "" if e["target"] is None else (
            f"{'met' if e['met'] else 'missed'} ({e['seeds_met']}/{e['n']} seeds)")
        lines.append(f"| {e['what']} | {e['mean']:.3f}{sd} (n={e['n']}) | {per_seed} "
                     f"| {target} | {verdict} |")
    runs, m, v = result["runs"], result["machine"], result["versions"]
    loads = ", ".join(f"seed {r['seed']}: {r['load_before']:.2f}" for r in runs)
    failed = [r["seed"] for r in runs if "figures" not in r]
    extra = " ".join(result["settings"]["demo_args"]) or "(none)"
    lines += [
        "",
        f"`rlhfkit demo --seed S` in a fresh folder per seed, with the demo's defaults plus: "
        f"{extra}; generation backend used: {', '.join(sorted({r['backend'] for r in runs}))} "
        f"(wall target {WALL_TARGET_MIN['hf']:g} min, {WALL_TARGET_MIN['vllm']:g} with vLLM). "
        "Mean ± sample sd over seeds; a target is judged on the mean, and the seeds that meet "
        "it are counted. Wall clock: the demo process from no files to its report (the "
        "converted model folder kept)." + (f" Failed seeds: {failed}." if failed else ""),
        "",
        f"1-minute load average before each run: {loads} (benchmark alone: under "
        f"{result['settings']['max_load']}). Machine: {m['cpu']}, {m['nproc']} cores, "
        f"{m['memory_gib']} GiB. rlhfkit {v['rlhfkit_commit']}, torch {v['torch']}, "
        f"transformers {v['transformers']}, vllm {v.get('vllm')}. {result['date']}.",
    ]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path, name: str) -> None:
    result["summary"] = summarize(result["runs"])
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}_table.md").write_text(table(result))


def main(argv: list[str] | None = None) -> int:
    """Run the seeds, write demo.json and demo_table.md, print the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Options after -- go to rlhfkit demo.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs-dir", default=str(REPO / "runs" / "bench-demo"),
                   help="each invocation makes RUNS_DIR/<UTC time>/seed-S")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for the results")
    p.add_argument("--name", default="demo", help="results: NAME.json and NAME_table.md")
    add_load_options(p)
    a = p.parse_args(own)
    for flag in ("--seed", "--output-dir"):
        if flag in extra:
            p.error(f"{flag} is set by this script (use --seeds / --runs-dir)")
    root = Path(a.runs_dir) / dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine(), "versions": versions(),
              "settings": {"seeds": a.seeds, "demo_args": extra, "runs_dir": str(root),
                           "max_load": a.max_load, "force": a.force},
              "runs": []}
    status = 0
    for seed in a.seeds:
        try:
            record = run_seed(seed, root / f"seed-{seed}", extra, a)
        except LoadTooHigh as err:
            print(f"stopped before seed {seed}: {err}")
            status = 2
            break
        result["runs"].append(record)
        status = status or (1 if "figures" not in record else 0)
        write(result, out, a.name)  # after every seed: nothing is lost if a later one fails
    if not result["runs"]:
        return status
    write(result, out, a.name)
    print("\n" + table(result))
    print(f"results: {out / (a.name + '.json')}, {out / (a.name + '_table.md')}")
    return status


if __name__ == "__main__":
    sys.exit(main())
