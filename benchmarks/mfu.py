"""Model FLOP utilisation (MFU): the useful model FLOPs a run did per second, over the peak.

Usage::

    python benchmarks/mfu.py params --model DIR          # parameter counts of a model folder
    python benchmarks/mfu.py peak --threads 1 2          # measure the bf16 matmul peak here

What is counted (Kaplan et al. 2020, sec. 2.1; Chowdhery et al. 2022, app. B, "model FLOPs"):

- **N** is the number of parameters that take part in a matrix product for every token: all
  parameters, a tied embedding counted once, less the input embedding table, whose use is a
  lookup, not a product. For a causal LM with tied embeddings the tied matrix still counts
  once, as the LM head; for a reward model (no LM head) it does not count, and the scalar head
  (hidden size x 1) does. SmolLM2-135M: 134.5M as a causal LM, 106.2M as a reward model.
- **Forward: 2N FLOPs per token; forward + backward: 6N per token.** Attention's own products
  (``2 * layers * context * hidden`` per token forward, ~5% at 256 tokens for SmolLM2-135M) are
  not counted, and the LM head is counted at every token although both frameworks compute
  logits only where there is a target: the two roughly cancel, and neither depends on the
  implementation.
- **Recomputation is not counted.** Gradient checkpointing runs the forward pass twice; only
  one counts, so MFU is of the useful work and two runs that differ only in checkpointing
  differ in MFU exactly as in throughput. The same holds for any other work an implementation
  chooses to do or skip: MFU is computed from the tokens the algorithm needs (the same count for
  rlhfkit and TRL), so the MFU ratio of two runs is their throughput ratio.
- **Tokens** are real (non-padding) tokens, prompt included.

Per stage (``train_flops_per_token`` and ``rl_flops_per_token``):

- SFT: 6N per token of every demonstration (prompt + response).
- RM: 6N per token of each *distinct* sequence of a ranking (K sequences for its C(K,2) pairs,
  which is all a pairwise loss needs).
- DPO: 6N per token of the chosen and of the rejected sequence. The reference log-probs are not
  counted: rlhfkit computes them once before training (TRL by default in every step).
- RL (GRPO, RLOO, REINFORCE), per token of every sample's prompt + response: generation 2N
  (prefill and decoding with a KV cache), the reference pass 2N, the update 6N per epoch;
  the old-policy pass is not needed with one on-policy epoch and is not counted. PPO adds the
  reward model's forward (2N of the RM) and the critic's forward and update (2N + 6N per epoch
  of the critic).

The peak is the measured bf16 matrix-product rate of the CPU for the run's torch thread count
(``peak`` measures it: large square bf16 products, the best of several). The figures for this
project's benchmark machines are in :data:`MEASURED_PEAKS`; elsewhere pass
``--peak-tflops`` to the benchmark scripts.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import time
from pathlib import Path
from typing import Any

MEASURED_PEAKS = {"AMD EPYC": {1: 0.39, 2: 0.71}, "Intel(R) Xeon(R)": {1: 0.814, 2: 1.399}}
"""bf16 matmul peak (TFLOP/s) by CPU (a prefix of /proc/cpuinfo's model name) and torch thread
count, as measured on the project's 2-core benchmark machines: the AMD EPYC without AMX of the
MFU issue, and the Intel Xeon with AMX of the later ones. On another CPU measure it (``peak``) and
pass ``--peak-tflops``."""


def cpu_model() -> str:
    """This machine's CPU model name ('' where /proc/cpuinfo does not say)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def measured_peaks(model: str | None = None) -> dict[int, float]:
    """The measured peaks of this CPU (or of ``model``), by threads; empty if never measured."""
    model = cpu_model() if model is None else model
    return next((v for k, v in MEASURED_PEAKS.items() if model.startswith(k)), {})

FORWARD = 2
"""Model FLOPs per parameter and token of a forward pass (a multiply and an add)."""
TRAIN = 6
"""Per parameter and token of forward + backward (the backward costs twice the forward)."""


# ------------------------------------------------------------------------------ parameters

def _safetensors_shapes(model_dir: Path) -> dict[str, list[int]] | None:
    """Tensor name -> shape from the safetensors headers of a folder (no tensor is read)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    shapes: dict[str, list[int]] = {}
    for f in files:
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


def _config_shapes(config: dict[str, Any]) -> dict[str, list[int]]:
    """The tensors of a Llama-style decoder from its config (when a folder has no weights)."""
    d, f = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    shapes = {"model.embed_tokens.weight": [config["vocab_size"], d], "model.norm.weight": [d]}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": [heads * head_dim, d],
            p + "self_attn.k_proj.weight": [kv * head_dim, d],
            p + "self_attn.v_proj.weight": [kv * head_dim, d],
            p + "self_attn.o_proj.weight": [d, heads * head_dim],
            p + "mlp.gate_proj.weight": [f, d], p + "mlp.up_proj.weight": [f, d],
            p + "mlp.down_proj.weight": [d, f],
            p + "input_layernorm.weight": [d], p + "post_attention_layernorm.weight": [d],
        })
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = [config["vocab_size"], d]
    return shapes


def parameter_counts(model_dir: str | Path) -> dict[str, int]:
    """Parameter counts of a causal-LM folder, from its weights' headers (else its config).

    Returns:
        ``total`` (every parameter, a tied embedding once), ``embedding`` (the input table),
        ``lm_head`` (the output matrix: the tied table itself when tied), ``hidden_size``, and
        the FLOP-counted parameters ``flop_lm`` (causal LM) and ``flop_rm`` (the same body with
        a scalar head instead of the LM head).
    """
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    return parameter_counts_of_config(config, _safetensors_shapes(model_dir))


def parameter_counts_of_config(config: dict[str, Any],
                               shapes: dict[str, list[int]] | None = None) -> dict[str, int]:
    """:func:`parameter_counts` from a config (and the tensors' shapes, if known)."""
    numel = {k: math.prod(v) for k, v in (shapes or _config_shapes(config)).items()}
    embed = next((k for k in numel if k.endswith(("embed_tokens.weight", "wte.weight"))), None)
    head = next((k for k in numel if k.endswith("lm_head.weight")), None)
    tied = bool(config.get("tie_word_embeddings", False))
    if tied and embed and head:  # both stored: one matrix
        numel.pop(head)
        head = None
    score = next((k for k in numel if k.endswith("score.weight")), None)  # a reward model's
    total = sum(numel.values())
    table = numel[embed] if embed else 0
    head_size = numel[head] if head else (table if tied and not score else 0)
    score_size = numel[score] if score else config["hidden_size"]
    body = total - table - (numel[head] if head else 0) - (numel[score] if score else 0)
    return {"total": total, "embedding": table, "lm_head": head_size,
            "hidden_size": config["hidden_size"], "flop_lm": body + head_size,
            "flop_rm": body + score_size}


def flop_parameters(model_dir: str | Path, head: str = "lm") -> int:
    """N for FLOP counting: ``head="lm"`` (a causal LM) or ``"score"`` (a scalar reward head)."""
    counts = parameter_counts(model_dir)
    return counts["flop_lm"] if head == "lm" else counts["flop_rm"]


def train_flops_per_token(n: int) -> float:
    """Forward + backward, 6N (SFT, RM, DPO policy)."""
    return TRAIN * n


def rl_flops_per_token(n: int, epochs: int = 1, reward_model_n: int = 0,
                       critic_n: int = 0) -> float:
    """Model FLOPs an RL step needs per token of a sample's prompt + response.

    Generation (2N), the reference pass (2N) and ``epochs`` updates (6N each); with a reward
    model its forward (2 N_rm); with a separate critic its values (2 N_c) and updates (6 N_c
    per epoch).
    """
    flops = FORWARD * n + FORWARD * n + epochs * TRAIN * n
    flops += FORWARD * reward_model_n
    if critic_n:
        flops += FORWARD * critic_n + epochs * TRAIN * critic_n
    return flops


# ------------------------------------------------------------------------------ peak and MFU

def peak_tflops(threads: int, override: float = 0.0,
                model: str | None = None) -> tuple[float | None, str]:
    """The peak to divide by, and where it comes from (said next to every MFU figure).

    Args:
        threads: The run's torch threads.
        override: ``--peak-tflops`` (0 = this CPU's entry in :data:`MEASURED_PEAKS`).
        model: The CPU model name (default: this machine's).
    """
    if override:
        return override, f"{override:g} TFLOP/s (--peak-tflops)"
    model = cpu_model() if model is None else model
    peak = measured_peaks(model).get(threads)
    if peak is None:
        return None, (f"no measured peak for {threads} thread(s) of {model or 'this CPU'}: pass "
                      "--peak-tflops (python benchmarks/mfu.py peak measures it)")
    return peak, (f"{peak:g} TFLOP/s on {threads} thread(s), the bf16 matmul peak measured on "
                  f"this CPU ({model}; another CPU: --peak-tflops)")


def mfu(tokens: float | None, flops_per_token: float, seconds: float,
        peak: float | None) -> float | None:
    """Achieved model FLOP/s over the peak (a fraction), or None without tokens or a peak."""
    if not tokens or not peak or seconds <= 0:
        return None
    return tokens * flops_per_token / seconds / (peak * 1e12)


def measure_peak(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Best bf16 TFLOP/s of ``size`` x ``size`` matrix products on ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    a @ b  # the first call sets up the kernel
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e12


# ------------------------------------------------------------------------------ tokens

def reviews_tokens_per_sample(model_dir: str, max_length: int = 256) -> dict[str, float]:
    """Tokens one sample costs, from the reviews task's data, for the side that counts none.

    ``sft``: mean tokens of a demonstration; ``rm``: mean over rankings of the tokens of its
    distinct sequences per pair (a ranking of K costs its K sequences for C(K,2) pairs);
    ``rl_prompt``: mean tokens of a training prompt with the system message through the chat
    template (``rlhfkit.rollout.encode_prompts``, 128 at most, as RL truncates).
    """
    from rlhfkit.data.chat import encode_pair
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.rollout import encode_prompts
    from rlhfkit.tasks import get_task

    task = get_task("reviews")
    tok = load_tokenizer(model_dir)
    system, cache = task.system_prompt, {}
    demos = [len(encode_pair(tok, d.prompt, d.response, max_length, system, cache).input_ids)
             for d in task.demonstrations()]
    per_pair = []
    for r in task.rankings():
        seqs = [len(encode_pair(tok, r.prompt, resp, max_length, system, cache).input_ids)
                for resp in r.responses]
        per_pair.append(sum(seqs) / math.comb(len(seqs), 2))
    prompts = encode_prompts(tok, task.prompts("train"), system, 128)
    return {"sft": sum(demos) / len(demos), "rm": sum(per_pair) / len(per_pair),
            "rl_prompt": sum(map(len, prompts)) / len(prompts)}


def pair_tokens(model_dir: str, pairs: list[Any], system: str | None,
                max_length: int) -> float:
    """DPO: mean tokens of chosen + rejected (each with its prompt) over ``pairs``."""
    from rlhfkit.data.chat import encode_pair
    from rlhfkit.models.loading import load_tokenizer

    tok, cache = load_tokenizer(model_dir), {}
    sizes = [len(encode_pair(tok, c.prompt, c.chosen, max_length, system, cache).input_ids)
             + len(encode_pair(tok, c.prompt, c.rejected, max_length, system, cache).input_ids)
             for c in pairs]
    return sum(sizes) / len(sizes)


def fmt_mfu(value: float | None) -> str:
    """MFU as a percentage for the tables."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def main(argv: list[str] | None = None) -> int:
    """``params`` or ``peak``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("params", help="parameter counts of a model folder")
    c.add_argument("--model", required=True, help="local HF folder")
    c = sub.add_parser("peak", help="measure the bf16 matmul peak (nothing else may run)")
    c.add_argument("--threads", type=int, nargs="+", default=[1])
    c.add_argument("--size", type=int, default=2048, help="side of the square matrices")
    c.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.cmd == "params":
        print(json.dumps(parameter_counts(a.model), indent=2))
    else:
        for t in a.threads:
            print(f"{t} thread(s): {measure_peak(t, a.size, a.repeats):.3f} TFLOP/s bf16 "
                  f"({a.size}x{a.size}, best of {a.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
