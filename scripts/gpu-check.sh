#!/usr/bin/env bash
# The GPU check: the smallest case of the GPU recipe in docs/training.md, on this machine's
# GPUs, with a local model folder (nothing is downloaded). Prints samples/s, peak GPU memory
# and weight-sync time of each case, and writes them to OUT/summary.json.
#
#   scripts/gpu-check.sh MODEL_DIR [OUT_DIR]
#
# MODEL_DIR: a Hugging Face causal LM folder (the recipe's model is a 1.5B instruct model; any
# size that fits works). Cases (each a few minutes on one H100; the whole check is meant to
# stay under 10 minutes):
#   1. GRPO, one GPU, the vLLM engine in the trainer's process (colocated), bf16, dynamic
#      micro-batches by tokens.
#   2. GRPO, one GPU, the same with the reference pass and the update micro-batched by size
#      (a second cut of the same work, to compare).
#   3. With two or more GPUs: GRPO on two processes (torchrun) sharded with FSDP2, sampling
#      with transformers on the sharded weights.
# Needs: rlhfkit installed with its CUDA extra (pip install -e ".[vllm-cuda]"; see
# docs/training.md). Everything it runs is an ordinary rlhfkit command: read them below.
set -euo pipefail

model=${1:?usage: scripts/gpu-check.sh MODEL_DIR [OUT_DIR]  (a local Hugging Face model folder)}
out=${2:-runs/gpu-check}
[ -f "$model/config.json" ] || { echo "gpu-check: $model has no config.json" >&2; exit 2; }
py=${PYTHON:-python}
gpus=$($py -c "import torch; print(torch.cuda.device_count())")
[ "$gpus" -ge 1 ] || { echo "gpu-check: no CUDA device visible to torch" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p "$out"

common=(--model "$model" --data task:arithmetic --reward-model task:arithmetic
        --precision bf16 --max-steps 6 --batch-size 8 --num-samples 8 --max-new-tokens 256
        --learning-rate 1e-6 --eval-prompts 0 --report-to none --no-progress --overwrite)

echo "== 1. GRPO, 1 GPU, colocated vLLM, --micro-batch-tokens 16384"
rlhfkit grpo "${common[@]}" --generation-backend vllm --micro-batch-tokens 16384 \
    --output-dir "$out/grpo-vllm-1gpu"

echo "== 2. GRPO, 1 GPU, colocated vLLM, --micro-batch-size 8"
rlhfkit grpo "${common[@]}" --generation-backend vllm --micro-batch-size 8 \
    --output-dir "$out/grpo-vllm-1gpu-mbs8"

if [ "$gpus" -ge 2 ]; then
    echo "== 3. GRPO, 2 processes, FSDP2, transformers sampling"
    $py -m torch.distributed.run --nproc_per_node 2 -m rlhfkit.cli grpo "${common[@]}" \
        --generation-backend hf --fsdp --micro-batch-tokens 16384 \
        --output-dir "$out/grpo-fsdp-2gpu"
    echo "== 4. GRPO, 2 processes, FSDP2, a vLLM engine in each synced from the shards"
    $py -m torch.distributed.run --nproc_per_node 2 -m rlhfkit.cli grpo "${common[@]}" \
        --generation-backend vllm --fsdp --micro-batch-tokens 16384 \
        --output-dir "$out/grpo-fsdp-vllm-2gpu"
else
    echo "== 3, 4. skipped: one GPU (FSDP2 needs two)"
fi

$py - "$out" <<'EOF'
import json, statistics, sys
from pathlib import Path
from rlhfkit.evaluate.runs import read_metrics

out = Path(sys.argv[1])
summary = {}
for run in sorted(p for p in out.iterdir() if (p / "metrics.jsonl").exists()):
    rows = [r for r in read_metrics(run) if "perf/samples_per_s" in r][1:]  # the first warms up
    if not rows:
        continue
    pick = lambda key: [r[key] for r in rows if key in r]
    summary[run.name] = {
        "samples_per_s": statistics.median(pick("perf/samples_per_s")),
        "step_s": statistics.median(pick("perf/step_s")),
        "gpu_peak_gb": max(pick("perf/gpu_peak_gb") or [float("nan")]),
        "sync_s": statistics.median(pick("sync/seconds") or [float("nan")]),
        "reward": pick("reward/score")[-1],
    }
    s = summary[run.name]
    print(f"{run.name}: {s['samples_per_s']:.1f} samples/s, step {s['step_s']:.1f} s, "
          f"peak GPU {s['gpu_peak_gb']:.1f} GB, sync {s['sync_s']:.2f} s")
(out / "summary.json").write_text(json.dumps(summary, indent=2))
EOF
