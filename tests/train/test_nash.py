"""Nash learning from human feedback: the maths on tiny tensors and the tabular solver.

Munos et al. (2023), "Nash Learning from Human Feedback": a pairwise preference model
(antisymmetrised, trained by BCE) and Nash-MD, whose step is worked out by hand below. The
tabular tests show the point of the method: on non-transitive preferences the Nash policy mixes,
while maximising a Bradley–Terry reward fitted to the same preferences collapses onto one response.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhfkit.evaluate.runs import read_metrics
from rlhfkit.losses import antisymmetric_logit, geometric_mixture, nash_md_step, preference_bce_loss
from rlhfkit.train.nash import (
    check_preference,
    exploitability,
    fit_bradley_terry,
    maximise_reward,
    nash_md,
)

# Rock, paper, scissors as responses 0, 1, 2: P[y, y'] = P(y > y').
# Paper beats rock, scissors beat paper, rock beats scissors, each surely.
RPS = torch.tensor([[0.5, 0.0, 1.0],
                    [1.0, 0.5, 0.0],
                    [0.0, 1.0, 0.5]])
# A lopsided cycle: 0 > 1 w.p. 0.9, 1 > 2 w.p. 0.8, 2 > 0 w.p. 0.8. Still non-transitive, but a
# Bradley–Terry fit now ranks response 0 first (it wins its duel most surely).
CYCLE = torch.tensor([[0.5, 0.9, 0.2],
                      [0.1, 0.5, 0.8],
                      [0.8, 0.2, 0.5]])


def test_antisymmetric_logit():
    """g(A, B) = (f(A, B) - f(B, A)) / 2: (3 - 1) / 2 = 1, and g(B, A) = -1."""
    assert antisymmetric_logit(torch.tensor([3.0]), torch.tensor([1.0])).item() == 1.0
    assert antisymmetric_logit(torch.tensor([1.0]), torch.tensor([3.0])).item() == -1.0


def test_preference_bce_loss_by_hand():
    """f(A, B) = 2, f(B, A) = -2, so g = 2 and P(A > B) = sigmoid(2) = 0.880797.

    - A preferred (label 1): -log sigmoid(2) = log(1 + e^-2) = 0.126928.
    - B preferred (label 0): -log sigmoid(-2) = log(1 + e^2) = 2.126928.
    - Tie (label 1/2): the mean of the two, 1.126928; it never counts as correct.
    - The same comparison with A and B swapped and the label flipped gives the same loss.
    """
    ab = torch.tensor([2.0, 2.0, 2.0, -2.0])
    ba = torch.tensor([-2.0, -2.0, -2.0, 2.0])
    labels = torch.tensor([1.0, 0.0, 0.5, 0.0])
    loss, diag = preference_bce_loss(ab, ba, labels)
    expected = [math.log1p(math.exp(-2)), math.log1p(math.exp(2)),
                0.5 * (math.log1p(math.exp(-2)) + math.log1p(math.exp(2))),
                math.log1p(math.exp(-2))]
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)
    assert diag["prob"].tolist() == pytest.approx([0.880797] * 3 + [1 - 0.880797], abs=1e-6)
    assert diag["accuracy"].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_preference_is_symmetrised():
    """P(A > B) + P(B > A) = 1 and P(A > A) = 1/2, for any raw logits."""
    f_ab, f_ba = torch.randn(5), torch.randn(5)
    _, d1 = preference_bce_loss(f_ab, f_ba, torch.ones(5))
    _, d2 = preference_bce_loss(f_ba, f_ab, torch.ones(5))
    assert (d1["prob"] + d2["prob"]).tolist() == pytest.approx([1.0] * 5, abs=1e-6)
    _, same = preference_bce_loss(f_ab, f_ab, torch.ones(5))
    assert same["prob"].tolist() == pytest.approx([0.5] * 5)


def test_geometric_mixture_by_hand():
    """pi = (1/2, 1/2), pi_ref = (0.8, 0.2), beta = 1/2.

    pi^(1/2) pi_ref^(1/2) = (sqrt(0.4), sqrt(0.1)) ∝ (2, 1), so pi_mix = (2/3, 1/3). beta = 0
    gives pi back and beta = 1 gives pi_ref.
    """
    pi, ref = torch.tensor([0.5, 0.5]).log(), torch.tensor([0.8, 0.2]).log()
    assert geometric_mixture(pi, ref, 0.5).exp().tolist() == pytest.approx([2 / 3, 1 / 3])
    assert geometric_mixture(pi, ref, 0.0).exp().tolist() == pytest.approx([0.5, 0.5])
    assert geometric_mixture(pi, ref, 1.0).exp().tolist() == pytest.approx([0.8, 0.2])
    with pytest.raises(ValueError):
        geometric_mixture(pi, ref, 1.5)


def test_nash_md_step_by_hand():
    """Munos et al. (2023), eq. 8, with eta = 1, tau = 1/2 (so eta*tau = 1/2).

    pi = (1/2, 1/2), pi_ref = (0.8, 0.2): pi_mix = (2/3, 1/3) as above. With P(0 > 1) = 1:
    P(0 > pi_mix) = 1/2 * 2/3 + 1 * 1/3 = 2/3 and P(1 > pi_mix) = 0 * 2/3 + 1/2 * 1/3 = 1/6.
    pi_next ∝ (2/3 e^(2/3), 1/3 e^(1/6)), a ratio of 2 e^(1/2) = 3.29744, so
    pi_next(0) = 3.29744 / 4.29744 = 0.767303.
    """
    pi, ref = torch.tensor([0.5, 0.5]).log(), torch.tensor([0.8, 0.2]).log()
    pref = torch.tensor([[0.5, 1.0], [0.0, 0.5]])
    out = nash_md_step(pi, ref, pref, eta=1.0, tau=0.5).exp()
    ratio = 2 * math.exp(0.5)
    assert out.tolist() == pytest.approx([ratio / (1 + ratio), 1 / (1 + ratio)], abs=1e-6)
    # Batched over prompts: the same update row by row.
    batched = nash_md_step(pi.expand(3, 2), ref.expand(3, 2), pref.expand(3, 2, 2), 1.0, 0.5)
    assert torch.allclose(batched.exp(), out.expand(3, 2))


def test_check_preference_rejects_bad_matrices():
    check_preference(RPS)
    with pytest.raises(ValueError):
        check_preference(torch.tensor([[0.5, 0.7], [0.7, 0.5]]))  # P + P^T != 1
    with pytest.raises(ValueError):
        check_preference(torch.ones(2, 3))


def test_exploitability():
    """Against pure rock, paper wins surely: max_y P(y > rock) - 1/2 = 1/2; uniform gives 0."""
    assert exploitability(RPS, torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(0.5)
    assert exploitability(RPS, torch.full((3,), 1 / 3)) == pytest.approx(0.0, abs=1e-7)


def test_nash_md_mixes_on_rock_paper_scissors():
    """From a lopsided start, Nash-MD's last iterate reaches uniform mixing (the Nash)."""
    result = nash_md(RPS, eta=0.5, tau=0.1, steps=300, init_probs=torch.tensor([0.7, 0.2, 0.1]))
    assert result.probs.tolist() == pytest.approx([1 / 3] * 3, abs=0.05)
    assert result.exploitability[-1] < 0.01 < result.exploitability[0]


def test_mirror_descent_without_the_mixture_keeps_cycling():
    """tau = 0 is plain multiplicative weights in self-play: its last iterate keeps cycling."""
    result = nash_md(RPS, eta=0.5, tau=0.0, steps=300, init_probs=torch.tensor([0.7, 0.2, 0.1]))
    assert min(result.exploitability[-50:]) > 0.1


def test_nash_mixes_where_reward_maximisation_collapses():
    """On the lopsided cycle a BT reward ranks response 0 first, and the KL-regularised
    maximiser of that reward puts almost all its mass there, which response 2 then beats
    (it wins against 0 w.p. 0.8): exploitability about 0.28. Nash-MD, with the same KL
    strength, keeps all three responses in play and is barely exploitable."""
    rewards = fit_bradley_terry(CYCLE)
    assert int(rewards.argmax()) == 0
    greedy = maximise_reward(rewards, tau=0.05)
    assert greedy.max() > 0.9
    assert exploitability(CYCLE, greedy) > 0.2
    nash = nash_md(CYCLE, eta=0.5, tau=0.05, steps=1000).probs
    assert nash.min() > 0.25
    assert exploitability(CYCLE, nash) < 0.02


# --------------------------------------------------------------------------------------------
# Nash-MD for a tiny LM
# --------------------------------------------------------------------------------------------


def test_sample_mixture_beta_one_is_the_reference(tiny_lm, tokenizer):
    """beta = 1 samples from the reference alone: with a fixed seed, the same text as the
    reference sampling with beta = 1 while the "policy" is a different random model."""
    import contextlib
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from rlhfkit.rollout import SamplingConfig
    from rlhfkit.train.nash import sample_mixture

    ref = AutoModelForCausalLM.from_pretrained(str(tiny_lm)).eval()
    other = AutoModelForCausalLM.from_pretrained(str(tiny_lm)).eval()
    torch.nn.init.normal_(other.lm_head.weight)  # tied: changes every logit of "other"

    @contextlib.contextmanager
    def reference():
        yield SimpleNamespace(lm=ref)

    prompts = [tokenizer.encode("Hello"), tokenizer.encode("Hi there, friend")]
    torch.manual_seed(0)
    a = sample_mixture(other, reference, tokenizer, prompts, 1.0, SamplingConfig(3))
    torch.manual_seed(0)
    b = sample_mixture(ref, reference, tokenizer, prompts, 1.0, SamplingConfig(3))
    assert a == b and len(a) == 2


def test_sample_mixture_kv_cache_matches_the_plain_version(tiny_lm, tokenizer):
    """The cached sampler (one new token per step) draws exactly the tokens of the plain one
    (whole sequence every step), also after some rows have ended: the EOS logit is raised so
    that rows stop at different steps and keep running as padding."""
    import contextlib
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from rlhfkit.rollout import SamplingConfig, eos_ids_of
    from rlhfkit.train.nash import sample_mixture

    ref = AutoModelForCausalLM.from_pretrained(str(tiny_lm)).eval()
    other = AutoModelForCausalLM.from_pretrained(str(tiny_lm)).eval()
    torch.manual_seed(1)
    torch.nn.init.normal_(other.lm_head.weight, std=0.05)
    eos = eos_ids_of(tokenizer)[0]

    class EosBoost(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, **kw):
            out = self.lm(**kw)
            logits = out.logits.clone()
            logits[..., eos] += 14.0
            return SimpleNamespace(logits=logits, past_key_values=out.past_key_values)

    policy = EosBoost(other)

    @contextlib.contextmanager
    def reference():
        yield SimpleNamespace(lm=ref)

    prompts = [tokenizer.encode("Hello"), tokenizer.encode("Hi there, my good friend"),
               tokenizer.encode("A"), tokenizer.encode("The film was")]
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        outs.append(sample_mixture(policy, reference, tokenizer, prompts, 0.3,
                                   SamplingConfig(12), use_cache=use_cache))
    assert outs[0] == outs[1]
    lengths = {len(tokenizer.encode(t)) for t in outs[0]}
    assert len(lengths) > 1, outs[0]  # rows did end at different steps


def test_nash_section_from_a_metrics_file(tmp_path):
    """The report section reads a run's metrics.jsonl: its text quotes the first and last
    held-out win rates, it has the run's figure and the tabular one, and a row per evaluation."""
    from rlhfkit.evaluate.report import write_sections
    from rlhfkit.train.nash import nash_section

    rows = [{"step": 0, "eval/win_rate": 0.5, "eval/gold_win_rate": 0.5, "eval/gold": 0.1,
             "eval/gold_ref": 0.1, "eval/kl": 0.0, "eval/length": 9.0}]
    rows += [{"step": s, "reward/preference": 0.5, "kl/seq": 0.1 * s, "gold/mean": 0.1}
             for s in (1, 2, 3)]
    rows += [{"step": 3, "eval/win_rate": 0.625, "eval/gold_win_rate": 0.75, "eval/gold": 0.3,
              "eval/gold_ref": 0.1, "eval/kl": 0.4, "eval/length": 8.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    section = nash_section(tmp_path)
    page = write_sections(tmp_path / "report.html", "run", [section]).read_text()
    assert "0.500 at step 0 and 0.625 at step 3" in section.text
    assert "Gold win rate 0.750" in section.text
    assert page.count("data:image/png;base64,") == 2
    assert page.count("<tr>") == 3  # header + two evaluations
    # A run that logged nothing still gets the tabular picture.
    (tmp_path / "empty").mkdir()
    assert nash_section(tmp_path / "empty").html().count("data:image/png;base64,") == 1


# The SFT "good"/"bad" policy of the RL tests (a session fixture, trained once).
from good_bad import SYSTEM, good_share  # noqa: E402


def test_nash_md_lm_learns_from_a_preference(tmp_path, good_bad_policy):  # noqa: F811
    """Payoff P(y > y') = 1/2 + (share of "good" in y - share in y') / 2: Nash-MD raises the
    share of "good" words in the policy's samples (the SFT policy sits near 1/2)."""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.rollout import SamplingConfig, sample
    from rlhfkit.tasks import get_task
    from rlhfkit.train.trainer import rl_config, train_rl
    def prefer(prompts, ys, ys_opp):
        return [0.5 + (a - b) / 2 for a, b in zip(good_share(prompts, ys), good_share(prompts, ys_opp))]

    out = train_rl(rl_config("nash",
        model=str(good_bad_policy), output_dir=str(tmp_path / "nash"), max_steps=5, batch_size=8,
        max_new_tokens=5, learning_rate=4e-3, precision="fp32", progress=False, eval_prompts=16,
        eval_every=5, kl_coef=0.01, system_prompt=SYSTEM, report_to="none",
        mixture_beta=0.125), preference_fn=prefer)
    tok = load_tokenizer(str(good_bad_policy))
    prompts = get_task("reviews").prompts("train")[:32]

    def share(path):
        torch.manual_seed(0)
        r = sample(load_causal_lm(str(path)), tok, prompts, SamplingConfig(max_new_tokens=6),
                   SYSTEM)
        return sum(good_share(prompts, r.texts)) / len(prompts)

    before, after = share(good_bad_policy), share(out)
    assert after > before + 0.1, (before, after)
    metrics = read_metrics(tmp_path / "nash")
    assert any("reward/preference" in m for m in metrics)
    # Held out, against one fixed reference sample per prompt (drawn once: the same gold).
    evals = [m for m in metrics if "eval/win_rate" in m]
    assert [m["step"] for m in evals] == [0, 5]
    assert evals[0]["eval/gold_ref"] == evals[1]["eval/gold_ref"]
    assert evals[1]["eval/win_rate"] > evals[0]["eval/win_rate"] + 0.02, evals
    report = (tmp_path / "nash" / "report.html").read_text()
    # The Nash-MD section (its run and the tabular picture: two figures) comes first, then the
    # sections every RL run has (over-optimisation: two more).
    assert report.index("<h2>Nash learning from human feedback</h2>") < \
        report.index("<h2>Over-optimisation</h2>")
    assert report.count("data:image/png;base64,") == 4
