"""Rollouts: layout and masks, log-probs that match the sampling distribution, the reference."""

import torch

from rlhfkit.models.loading import apply_lora, load_causal_lm
from rlhfkit.models.policy import SelectiveLM
from rlhfkit.rollout import (
    HFBackend,
    PolicyWithValue,
    ReferencePolicy,
    SamplingConfig,
    build_rollout,
    cache_kwarg,
    encode_prompts,
    eos_ids_of,
    forward_response,
    repeats,
    response_logprobs,
    sample,
)


def test_layout_masks_cover_response_up_to_eos(tokenizer):
    eos = tokenizer.eos_token_id
    a, b = tokenizer.encode("hi", add_special_tokens=False), tokenizer.encode(
        "hello there", add_special_tokens=False)
    raw = [[11, 12, eos, 13, 14], [21, 22, 23, 24, 25]]  # the first ended; tokens after EOS dropped
    r = build_rollout(tokenizer, ["p", "q"], [a, b], raw, [eos])
    P = max(len(a), len(b))
    assert r.prompt_width == P and r.response_mask.shape == (2, 5)
    assert r.response_mask.tolist() == [[True, True, True, False, False], [True] * 5]
    assert r.ended.tolist() == [True, False]
    assert r.response_ids[0] == [11, 12, eos]
    # left-padded prompt, positions count real tokens only
    assert r.attention_mask[0, : P - len(a)].sum() == 0
    assert r.position_ids[0, P - len(a)].item() == 0
    assert r.position_ids[0, P].item() == len(a)
    assert r.target_mask.sum().item() == 8
    sub = r.select([1])
    assert sub.texts == [r.texts[1]] and sub.input_ids.shape == (1, P + 5)


def test_stop_string_cuts_and_counts_as_ended(tokenizer):
    ids = tokenizer.encode("Great film. Then more words", add_special_tokens=False)
    r = build_rollout(tokenizer, ["p"], [[1, 2]], [ids], [tokenizer.eos_token_id], stop=(".",))
    assert r.ended.tolist() == [True]
    assert r.texts[0].endswith(".") and "Then" not in r.texts[0]


def test_recomputed_logprobs_match_generate_scores(tiny_lm, tokenizer):
    """Sampled with left padding at T = 0.7: our forward pass gives the log-softmax of
    generate's own raw logits / T at every sampled token (checks padding, positions, T)."""
    lm = load_causal_lm(str(tiny_lm)).eval()
    prompts = ["a", "a much longer prompt with many more tokens in it"]
    ids = encode_prompts(tokenizer, prompts)
    from rlhfkit.data.chat import pad

    x, m = pad(ids, tokenizer.pad_token_id, side="left")
    torch.manual_seed(0)
    out = lm.generate(input_ids=x, attention_mask=m, do_sample=True, temperature=0.7, top_k=0,
                      max_new_tokens=6, output_logits=True, return_dict_in_generate=True,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids_of(tokenizer))
    raw = out.sequences[:, x.shape[1]:].tolist()
    r = build_rollout(tokenizer, prompts, ids, raw, eos_ids_of(tokenizer))
    ours = response_logprobs(SelectiveLM(lm), r, temperature=0.7)
    theirs = torch.stack([torch.log_softmax(lg.float() / 0.7, -1) for lg in out.logits], 1)
    R = r.response_mask.shape[1]
    picked = theirs[:, :R].gather(-1, r.input_ids[:, r.prompt_width:].unsqueeze(-1)).squeeze(-1)
    mask = r.response_mask
    assert torch.allclose(ours[mask], picked[mask], atol=1e-4)


def test_sample_end_to_end_and_value_head(tiny_lm, tokenizer):
    lm = load_causal_lm(str(tiny_lm))
    model = PolicyWithValue(lm)
    torch.manual_seed(0)
    r = sample(lm, tokenizer, ["x", "y", "z"], SamplingConfig(max_new_tokens=5),
               system_prompt="sys", scorer=model)
    assert r.logprobs.shape == r.response_mask.shape
    assert (r.logprobs[~r.response_mask] == 0).all() and (r.logprobs[r.response_mask] < 0).all()
    assert (r.response_lengths <= 5).all() and len(r.texts) == 3
    out = forward_response(model, r)
    assert torch.allclose(out["logprobs"], r.logprobs, atol=1e-5)
    assert out["values"].shape == r.response_mask.shape  # zero-initialised head
    assert out["logits"].shape[0] == int(r.response_mask.sum())


def test_reference_is_adapter_off_with_lora_and_a_frozen_copy_without(tiny_lm, tokenizer):
    torch.manual_seed(0)
    r = sample(load_causal_lm(str(tiny_lm)), tokenizer, ["x", "y"],
               SamplingConfig(max_new_tokens=4))
    base_lp = response_logprobs(SelectiveLM(load_causal_lm(str(tiny_lm))), r)

    lora = apply_lora(load_causal_lm(str(tiny_lm)), r=4, alpha=8)
    ref = ReferencePolicy(lora)
    assert ref.shared
    with torch.no_grad():  # move the adapter so that the policy differs from the base
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    policy_lp = response_logprobs(SelectiveLM(lora), r)
    assert not torch.allclose(policy_lp, base_lp, atol=1e-3)
    assert torch.allclose(ref.logprobs(r), base_lp, atol=1e-5)
    assert torch.allclose(response_logprobs(SelectiveLM(lora), r), policy_lp)  # adapter back on

    full = load_causal_lm(str(tiny_lm))
    ref2 = ReferencePolicy(full)
    assert not ref2.shared
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.01)
    assert torch.allclose(ref2.logprobs(r), base_lp, atol=1e-5)


def test_repeats_finds_consecutive_runs_of_equal_prompts():
    assert repeats([[1, 2], [1, 2], [3], [3]]) == 2
    assert repeats([[1], [1], [1]]) == 3
    assert repeats([[1], [2], [1], [2]]) == 1  # not consecutive
    assert repeats([[1], [1], [2]]) == 1  # uneven groups
    assert repeats([[1], [1], [2], [3]]) == 1
    assert repeats([[5]]) == 1


def test_shared_prompt_prefill_samples_the_same_tokens(tiny_lm, tokenizer):
    """Prefilling each distinct prompt once and repeating its cache changes nothing: sampling
    left-padded prompts of different lengths from the same seed gives the same tokens."""
    lm = load_causal_lm(str(tiny_lm))
    prompts = ["A short prompt.", "A somewhat longer prompt with more words in it."]
    ids = encode_prompts(tokenizer, [p for p in prompts for _ in range(3)])
    assert repeats(ids) == 3 and len(ids[0]) != len(ids[3])
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0)
    eos = eos_ids_of(tokenizer)
    out = {}
    for share in (False, True):
        torch.manual_seed(0)
        out[share] = HFBackend(share_prompts=share).generate(lm, ids, cfg, eos,
                                                             tokenizer.pad_token_id)
    assert out[True] == out[False]
    assert len({tuple(r) for r in out[False]}) > 1  # a real sample, not one repeated answer


def test_shared_prefill_cache_gives_the_logits_of_a_full_forward(tiny_lm, tokenizer):
    """The repeated cache continues each left-padded prompt exactly as a plain forward pass
    over the whole prompt does (same positions, same attention)."""
    from rlhfkit.data.chat import pad

    lm = load_causal_lm(str(tiny_lm)).eval()
    ids, mask = pad(encode_prompts(tokenizer, ["Hi.", "A much longer prompt than the first."]),
                    tokenizer.pad_token_id, side="left")
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = lm(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        cache = HFBackend._prefill(lm, ids, mask, k=2)
        step = lm(input_ids=ids[:, -1:].repeat_interleave(2, 0),
                  attention_mask=mask.repeat_interleave(2, 0),
                  position_ids=pos[:, -1:].repeat_interleave(2, 0),
                  **{cache_kwarg(lm): cache}).logits[:, -1]
    assert torch.allclose(step, full.repeat_interleave(2, 0), atol=1e-4)
