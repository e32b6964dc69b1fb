"""HFBackend on CPU with bf16: a bf16 copy of the weights, refreshed from the live model."""

import torch
from transformers import AutoModelForCausalLM

from rlhfkit.rollout import HFBackend, SamplingConfig


def test_bf16_copy_is_refreshed_and_keeps_fp32_buffers(tiny_lm, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    backend = HFBackend(torch.bfloat16)
    greedy = SamplingConfig(max_new_tokens=6, temperature=0.0)
    prompt = [tokenizer("Hello there", add_special_tokens=False)["input_ids"]]
    eos = [tokenizer.eos_token_id]
    first = backend.generate(model, prompt, greedy, eos, tokenizer.pad_token_id)
    copy = backend._copy
    assert copy is not None and copy is not model
    assert all(p.dtype == torch.bfloat16 for p in copy.parameters())
    assert all(b.dtype != torch.bfloat16 for b in copy.buffers())  # rotary stays precise
    assert all(p.dtype == torch.float32 for p in model.parameters())  # training weights untouched
    # Change the live weights: the next call decodes with the new weights, in the same copy.
    with torch.no_grad():
        model.model.norm.weight.mul_(-1.0)  # negates every logit: the argmax becomes the argmin
    second = backend.generate(model, prompt, greedy, eos, tokenizer.pad_token_id)
    assert backend._copy is copy
    assert torch.equal(copy.model.norm.weight, model.model.norm.weight.to(torch.bfloat16))
    assert first != second
    # And it agrees with plain fp32 decoding wherever bf16 rounding does not flip an argmax.
    fp32 = HFBackend(None).generate(model, prompt, greedy, eos, tokenizer.pad_token_id)
    assert len(fp32[0]) == len(second[0])
