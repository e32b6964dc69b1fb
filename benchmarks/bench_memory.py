"""Training at size, measured: micro-batch memory, FSDP2 per-rank memory, weight-sync time.

Usage::

    python benchmarks/bench_memory.py                  # all four parts, the default model
    python benchmarks/bench_memory.py --parts micro    # one part
    python benchmarks/bench_memory.py --quick          # a dry run of every part (tiny sizes)

Parts, each a ratio within one run on one machine:

- ``micro``: GRPO on the default model (16 prompts x 4 samples = 64 responses per batch, 2
  batches, the hf backend): peak RSS of the trainer process with a mini-batch of 64 cut into
  micro-batches of 4 (``--mini-batch-size 64 --micro-batch-size 4``), against a mini-batch of
  4 (``--mini-batch-size 4``, what a user shrinks to today to fit), and the mini-batch of 64 in
  one forward. Target: the first within 1.25x of the second.
- ``fsdp``: two processes (torchrun, gloo) train the same SFT steps with DDP and with
  ``--fsdp``; each process reports the bytes of its own parameters and optimizer state (the
  local shards under FSDP2). Target: FSDP2's about half of DDP's.
- ``sync``: one engine process (vLLM, CPU) receives the default model's weights over gloo
  from this process, three versions per bucket size (``--sync-bucket-mb``); seconds per
  version by bucket size.

- ``packing``: GRPO on the default model (64 responses a batch, micro-batches of 8): seconds
  of the trainer's passes and update a step with ``--pack-micro-batches`` against padded
  micro-batches trimmed to their own width; the ratio packed / padded.

Each part runs in fresh processes, one after the other; the 1-minute load average must be
under ``--max-load`` before each (see ``run.py``), and is written next to every figure with
the CPU model. Results: ``benchmarks/results/memory.json`` and ``memory_table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402  (benchmarks/ is not a package)
    add_load_options,
    child_env,
    machine,
    quiet_load,
    versions,
)

MICRO_TARGET = 1.25
"""Peak RSS of mini-batch 64 in micro-batches of 4, at most this times that of mini-batch 4."""


def peak_rss_of(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in GiB, wall seconds) of a child process run to its end."""
    start = time.perf_counter()
    script = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", script, *cmd], env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    kib = int(out.stdout.strip().splitlines()[-1])
    return kib / 2**20, time.perf_counter() - start


def part_micro(args: argparse.Namespace, out: Path) -> dict:
    """Peak RSS of GRPO for three cuts of the same 64-response batch."""
    model = args.model or "smollm2-135m"
    prompts, k = (4, 4) if args.quick else (16, 4)
    common = [sys.executable, "-m", "rlhfkit.cli", "grpo", "--model", model, "--reward-model", "scorer:sentiment",
              "--batch-size", str(prompts), "--num-samples", str(k), "--max-steps",
              "1" if args.quick else "2", "--max-new-tokens", "8" if args.quick else "32",
              "--generation-backend", "hf", "--eval-prompts", "0", "--report-to", "none",
              "--no-progress", "--overwrite", "--no-gradient-checkpointing"]
    size = prompts * k
    cuts = {f"mini-batch {size}, micro-batches of 4": ["--mini-batch-size", str(size),
                                                       "--micro-batch-size", "4"],
            "mini-batch 4": ["--mini-batch-size", "4"],
            f"mini-batch {size} in one forward": ["--mini-batch-size", str(size)]}
    rows = {}
    for name, extra in cuts.items():
        load = quiet_load(args.max_load, args.wait, args.force)
        folder = out / name.replace(" ", "_").replace(",", "")
        gib, wall = peak_rss_of([*common, "--output-dir", str(folder), *extra], child_env())
        rows[name] = {"peak_rss_gib": gib, "wall_s": wall, "load_before": load}
        print(f"[micro] {name}: peak RSS {gib:.2f} GiB, {wall:.0f} s (load {load:.2f})")
    first, second = list(rows.values())[:2]
    ratio = first["peak_rss_gib"] / second["peak_rss_gib"]
    return {"runs": rows, "ratio": ratio, "target": MICRO_TARGET, "met": ratio <= MICRO_TARGET}


FSDP_WORKER = '''
import json, os, sys
import torch
from rlhfkit.train import loop
from rlhfkit.train.sft import SFTConfig, train_sft

out, model, data, fsdp = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
seen = {}
step = loop.Run.optimizer_step

def counted(self):
    norm = step(self)
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t
    params = [p for g in self.optimizer.param_groups for p in g["params"]]
    seen["param_bytes"] = sum(local(p).numel() * local(p).element_size() for p in params)
    seen["optimizer_bytes"] = sum(local(v).numel() * local(v).element_size()
                                  for s in self.optimizer.state.values() for v in s.values()
                                  if torch.is_tensor(v) and v.dim() > 0)
    return norm

loop.Run.optimizer_step = counted
train_sft(SFTConfig(model=model, data=data, output_dir=out, max_steps=2, batch_size=4,
                    precision="fp32", progress=False, report_to="none", eval_fraction=0.0,
                    gradient_checkpointing=False, overwrite=True,
                    **({"fsdp": True} if fsdp else {})))
rank = int(os.environ.get("RANK", "0"))
with open(os.path.join(out, f"memory-rank{rank}.json"), "w") as f:
    json.dump(seen, f)
'''


def part_fsdp(args: argparse.Namespace, out: Path) -> dict:
    """Per-process parameter and optimizer-state bytes, two processes, DDP against FSDP2."""
    model = args.model or "smollm2-135m"
    worker = out / "fsdp_worker.py"
    out.mkdir(parents=True, exist_ok=True)
    worker.write_text(FSDP_WORKER)
    rows = {}
    for name, flag in (("ddp", "0"), ("fsdp2", "1")):
        load = quiet_load(args.max_load, args.wait, args.force)
        folder = out / name
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(29600 + int(flag)), str(worker), str(folder), model,
               "task:reviews", flag]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=child_env(1), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
        ranks = [json.loads((folder / f"memory-rank{r}.json").read_text()) for r in (0, 1)]
        per_rank = max(r["param_bytes"] + r["optimizer_bytes"] for r in ranks) / 2**30
        rows[name] = {"ranks": ranks, "per_rank_gib": per_rank,
                      "wall_s": time.perf_counter() - start, "load_before": load}
        print(f"[fsdp] {name}: parameters + optimizer state {per_rank:.3f} GiB per process "
              f"(load {load:.2f})")
    ratio = rows["fsdp2"]["per_rank_gib"] / rows["ddp"]["per_rank_gib"]
    return {"runs": rows, "ratio": ratio, "target": "about 0.5"}


SYNC_WORKER = '''
import json, sys
from rlhfkit.engines.remote import RemoteBackend, start_local_engines
from rlhfkit.models.loading import checkpoint_weights, load_causal_lm, resolve

model = resolve(sys.argv[1])
sizes, versions = [float(s) for s in sys.argv[2].split(",")], int(sys.argv[3])
clients, procs = start_local_engines(1, model, "bfloat16", 512, 0.25)
lm = load_causal_lm(model)
backend = RemoteBackend(clients, checkpoint_weights, sync="gloo")
rows, version = {}, 0
try:
    for mb in sizes:
        backend.bucket_bytes = int(mb * 2**20)
        times = []
        for _ in range(versions):
            version += 1
            backend.sync(lm, version)
            times.append(backend.last_sync["seconds"])
        rows[str(mb)] = {"seconds": times, "megabytes": backend.last_sync["megabytes"],
                         "buckets": backend.last_sync["buckets"]}
finally:
    backend.close()
print(json.dumps(rows))
'''


def part_sync(args: argparse.Namespace, out: Path) -> dict:
    """Seconds per weight sync into one engine process, by bucket size."""
    model = args.model or "smollm2-135m"
    sizes = "16,64" if args.quick else "16,64,256,1024"
    load = quiet_load(args.max_load, args.wait, args.force)
    proc = subprocess.run([sys.executable, "-c", SYNC_WORKER, model, sizes,
                           "1" if args.quick else "3"], env=child_env(), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sync failed:\n{proc.stderr[-3000:]}")
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    for mb, r in rows.items():
        r["median_s"] = sorted(r["seconds"])[len(r["seconds"]) // 2]
        print(f"[sync] bucket {mb} MiB: {r['buckets']} bucket(s), {r['megabytes']:.0f} MiB, "
              f"median {r['median_s']:.2f} s per version (load {load:.2f})")
    return {"by_bucket_mb": rows, "load_before": load}


def part_packing(args: argparse.Namespace, out: Path) -> dict:
    """Seconds of GRPO's trainer passes with micro-batches padded (trimmed) and packed."""
    from rlhfkit.evaluate.runs import read_metrics

    model = args.model or "smollm2-135m"
    prompts, k, steps = (4, 4, 2) if args.quick else (16, 4, 3)
    common = [sys.executable, "-m", "rlhfkit.cli", "grpo", "--model", model,
              "--reward-model", "scorer:sentiment", "--batch-size", str(prompts),
              "--num-samples", str(k), "--max-steps", str(steps), "--max-new-tokens",
              "8" if args.quick else "48", "--generation-backend", "hf", "--eval-prompts", "0",
              "--report-to", "none", "--no-progress", "--overwrite",
              "--no-gradient-checkpointing", "--micro-batch-size", "8"]
    rows = {}
    for name, extra in (("padded", []), ("packed", ["--pack-micro-batches"])):
        load = quiet_load(args.max_load, args.wait, args.force)
        folder = out / name
        gib, wall = peak_rss_of([*common, "--output-dir", str(folder), *extra], child_env())
        train = [r for r in read_metrics(folder) if "time/update_s" in r][1:]  # 1st warms up
        per = {key: sum(r[key] for r in train) / len(train)
               for key in ("time/update_s", "time/passes_s")}
        rows[name] = {"update_s": per["time/update_s"], "passes_s": per["time/passes_s"],
                      "peak_rss_gib": gib, "wall_s": wall, "load_before": load,
                      "steps_timed": len(train)}
        print(f"[packing] {name}: update {per['time/update_s']:.2f} s, passes "
              f"{per['time/passes_s']:.2f} s a step, peak RSS {gib:.2f} GiB (load {load:.2f})")
    ratio = ((rows["packed"]["update_s"] + rows["packed"]["passes_s"])
             / (rows["padded"]["update_s"] + rows["padded"]["passes_s"]))
    return {"runs": rows, "ratio": ratio}


PARTS = {"micro": part_micro, "fsdp": part_fsdp, "sync": part_sync, "packing": part_packing}


def table(result: dict) -> str:
    """The results as a markdown table."""
    m = result["machine"]
    lines = [f"Machine: {m.get('cpu', '?')}, {m.get('nproc', '?')} cores; measured "
             f"{result['date']}.", "", "| part | setting | figure | load before |", "|---|---|---|---|"]
    micro = result["parts"].get("micro")
    if micro:
        for name, r in micro["runs"].items():
            lines.append(f"| micro | {name} | peak RSS {r['peak_rss_gib']:.2f} GiB | "
                         f"{r['load_before']:.2f} |")
        lines.append(f"| micro | ratio (micro 4 / mini-batch 4) | {micro['ratio']:.2f}x "
                     f"(target <= {micro['target']}: {'met' if micro['met'] else 'missed'}) | |")
    fsdp = result["parts"].get("fsdp")
    if fsdp:
        for name, r in fsdp["runs"].items():
            lines.append(f"| fsdp | {name}, 2 processes | params + optimizer "
                         f"{r['per_rank_gib']:.3f} GiB per process | {r['load_before']:.2f} |")
        lines.append(f"| fsdp | ratio FSDP2 / DDP | {fsdp['ratio']:.2f} | |")
    sync = result["parts"].get("sync")
    if sync:
        for mb, r in sync["by_bucket_mb"].items():
            lines.append(f"| sync | bucket {mb} MiB ({r['buckets']} buckets, "
                         f"{r['megabytes']:.0f} MiB) | {r['median_s']:.2f} s per version | "
                         f"{sync['load_before']:.2f} |")
    packing = result["parts"].get("packing")
    if packing:
        for name, r in packing["runs"].items():
            lines.append(f"| packing | GRPO, micro-batches of 8, {name} | update "
                         f"{r['update_s']:.2f} s + passes {r['passes_s']:.2f} s a step | "
                         f"{r['load_before']:.2f} |")
        lines.append(f"| packing | ratio packed / padded | {packing['ratio']:.2f}x | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="micro,fsdp,sync,packing",
                   help="comma-separated: micro,fsdp,sync,packing")
    p.add_argument("--model", default="", help="model id or folder (default: smollm2-135m)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a dry run")
    p.add_argument("--out", default=str(HERE / "results"))
    add_load_options(p)
    args = p.parse_args()
    out = Path(args.out)
    stem = "memory_quick" if args.quick else "memory"
    results = {"machine": machine(), "versions": versions(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "parts": {}}
    earlier = out / f"{stem}.json"
    if earlier.exists():  # a run of some parts keeps the others' figures (each dated)
        kept = json.loads(earlier.read_text())
        results["parts"] = {name: {"date": kept.get("date"), **part}
                            for name, part in kept.get("parts", {}).items()}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for name in args.parts.split(","):
            results["parts"][name] = {"date": results["date"],
                                      **PARTS[name](args, Path(tmp) / name)}
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str))
    (out / f"{stem}_table.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
