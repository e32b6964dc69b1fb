"""An AI judge (RLAIF): a causal LM asked which of two responses is better.

The judge never generates text. It renders a question through its chat template::

    Which response is better? <criteria>
    Prompt: ...
    Response 1: ...
    Response 2: ...
    Answer with 1 or 2 only.

and reads the probabilities of the two answer tokens at the position where its answer would
start, renormalised over the two: ``p = P("1") / (P("1") + P("2"))`` (scoring from answer-token
probabilities, as RLAIF does with its "1"/"2" log-probabilities; Lee et al. 2023, sec. 2.1).
Small judges strongly prefer whichever response comes first (or second), so every pair is asked
in both orders and the two answers are averaged (position-bias mitigation, Lee et al. 2023,
sec. 2.1.2; Zheng et al. 2023, sec. 3.4)::

    P(a > b) = ( p(a first) + 1 - p(b first) ) / 2

A pure position bias (``p = 0.8`` in both orders) then gives exactly 1/2. The result is written as
the same record types the web app and the simulated labelers produce, with ``source="ai"``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import torch
from torch import nn

from rlhfkit.data.chat import encode, pad, prompt_text
from rlhfkit.data.records import Comparison, Ranking
from rlhfkit.models.loading import decoder_and_head, load_causal_lm, load_tokenizer
from rlhfkit.models.reward import last_token_index

__all__ = ["DEFAULT_QUESTION", "AIJudge", "both_orders"]

Prompt = str | list[dict[str, str]]

DEFAULT_QUESTION = (
    "Which response is better? {criteria}\n\n"
    "Prompt:\n{prompt}\n\n"
    "Response {first}:\n{a}\n\n"
    "Response {second}:\n{b}\n\n"
    "Answer with {first} or {second} only."
)
"""The question the judge is asked; fields: criteria, prompt, a, b, first, second."""


def both_orders(p_first_order: torch.Tensor, p_second_order: torch.Tensor) -> torch.Tensor:
    """Combine the two orders of one question into ``P(a > b)``.

    Args:
        p_first_order: (n,) probability that the first-shown response wins when ``a`` is first.
        p_second_order: (n,) the same when ``b`` is shown first.

    Returns:
        (n,) ``(p_first_order + 1 - p_second_order) / 2``; a judge that always picks the first
        position (any p, same in both orders) gets exactly 0.5.
    """
    return (p_first_order + 1.0 - p_second_order) / 2.0


def _text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


class AIJudge:
    """Pick the better of two responses with a causal LM, from its answer-token probabilities.

    Args:
        model: A causal LM (HF ``*ForCausalLM``), or a model name / folder / .gguf to load.
        tokenizer: Its tokenizer (loaded with the model when ``model`` is a name).
        criteria: What "better" means, e.g. "The better continuation is more positive."
        answers: The two answer strings, each a single token (``("1", "2")`` or ``("A", "B")``).
        question: Template of the question (see :data:`DEFAULT_QUESTION`).
        tie_margin: ``|P(a > b) - 1/2| <= tie_margin`` is reported as a tie.
        batch_size: Questions per forward pass.
        max_length: Longest question in tokens (the oldest tokens are cut first).
        name: Annotator name written into records (default ``"judge:<model name>"``).
    """

    def __init__(
        self,
        model: nn.Module | str,
        tokenizer: Any = None,
        criteria: str = "",
        answers: tuple[str, str] = ("1", "2"),
        question: str = DEFAULT_QUESTION,
        tie_margin: float = 0.0,
        batch_size: int = 8,
        max_length: int = 1024,
        name: str | None = None,
    ) -> None:

        label = model if isinstance(model, str) else getattr(
            getattr(model, "config", None), "_name_or_path", type(model).__name__)
        if isinstance(model, str):
            tokenizer = tokenizer or load_tokenizer(model)
            model = load_causal_lm(model)
        if tokenizer is None:
            raise ValueError("AIJudge: pass the tokenizer along with a model object")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.criteria, self.answers, self.question = criteria, answers, question
        self.tie_margin, self.batch_size, self.max_length = tie_margin, batch_size, max_length
        self.name = name or f"judge:{label}"
        self.answer_ids = []
        for answer in answers:
            ids = encode(tokenizer, answer)
            if len(ids) != 1:
                raise ValueError(f"AIJudge: answer {answer!r} is {len(ids)} tokens; use answers "
                                 "that are one token each, such as ('1', '2') or ('A', 'B')")
            self.answer_ids.append(ids[0])
        self._count = 0

    # -- the question ----------------------------------------------------------------------

    def question_ids(self, prompt: Prompt, first: str, second: str) -> list[int]:
        """Token ids of the question with ``first`` shown as answer 1, up to the answer."""
        text = self.question.format(criteria=self.criteria, prompt=_text(prompt), a=first,
                                    b=second, first=self.answers[0], second=self.answers[1])
        ids = encode(self.tokenizer, prompt_text(self.tokenizer, text))
        return ids[-self.max_length:]

    @torch.no_grad()
    def first_wins(self, questions: Sequence[Sequence[int]]) -> torch.Tensor:
        """(n,) ``P(answer 1) / (P(answer 1) + P(answer 2))`` at the end of each question."""
        body, head = decoder_and_head(self.model)
        device = next(self.model.parameters()).device
        out = []
        for k in range(0, len(questions), self.batch_size):
            ids, mask = pad(questions[k:k + self.batch_size], self.tokenizer.pad_token_id)
            ids, mask = ids.to(device), mask.to(device)
            hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            last = hidden[torch.arange(len(ids), device=device), last_token_index(mask)]  # (b, H)
            logits = head(last).float()[:, self.answer_ids]  # (b, 2): only the answer tokens
            out.append(torch.softmax(logits, dim=-1)[:, 0].cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def prefer(
        self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``P(a > b)`` for each pair, asked in both orders.

        Returns:
            ``p`` (n,) the combined probability, and the two single-order answers (n,) each:
            ``p_ab`` (a shown first: P(first wins)) and ``p_ba`` (b shown first).
        """
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"AIJudge: lengths differ ({len(prompts)}, {len(a)}, {len(b)})")
        questions = [self.question_ids(p, x, y) for p, x, y in zip(prompts, a, b)]
        questions += [self.question_ids(p, y, x) for p, x, y in zip(prompts, a, b)]
        wins = self.first_wins(questions)
        p_ab, p_ba = wins[: len(prompts)], wins[len(prompts):]
        return both_orders(p_ab, p_ba), p_ab, p_ba

    # -- records, like a SimulatedLabeler --------------------------------------------------

    def _common(self, kind: str, prompt: Prompt, *texts: str) -> dict[str, Any]:
        payload = json.dumps([self.name, self._count, kind, prompt, texts])
        self._count += 1
        return {"id": f"{kind}-{hashlib.sha1(payload.encode()).hexdigest()[:16]}",
                "annotator": self.name, "source": "ai",
                "created_at": datetime.now(UTC).isoformat(timespec="seconds")}

    def compare_batch(
        self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]
    ) -> list[Comparison]:
        """One :class:`Comparison` per pair (``source="ai"``); ``meta`` keeps the probabilities."""
        p, p_ab, p_ba = self.prefer(prompts, a, b)
        records = []
        for i, (prompt, x, y) in enumerate(zip(prompts, a, b)):
            pa = float(p[i])
            tie = abs(pa - 0.5) <= self.tie_margin
            chosen, rejected = (x, y) if pa >= 0.5 else (y, x)
            records.append(Comparison(
                prompt=prompt, chosen=chosen, rejected=rejected, tie=tie,
                meta={"p_chosen": max(pa, 1 - pa), "p_a_first": float(p_ab[i]),
                      "p_b_first": float(p_ba[i])},
                **self._common("comparison", prompt, x, y)))
        return records

    def compare(self, prompt: Prompt, a: str, b: str) -> Comparison:
        """The better of two responses to one prompt; see :meth:`compare_batch`."""
        return self.compare_batch([prompt], [a], [b])[0]

    def rank_batch(
        self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]]
    ) -> list[Ranking]:
        """Rank each prompt's K responses by their mean win probability over all C(K, 2) pairs.

        Each response's score is the average of ``P(it beats j)`` over the others (a Borda-style
        count of soft wins), so the ranking costs ``2 * C(K, 2)`` questions per prompt.
        """
        pair_prompts, a, b, where = [], [], [], []
        for n, (prompt, rs) in enumerate(zip(prompts, responses)):
            for i, j in itertools.combinations(range(len(rs)), 2):
                pair_prompts.append(prompt)
                a.append(rs[i])
                b.append(rs[j])
                where.append((n, i, j))
        p, _, _ = self.prefer(pair_prompts, a, b) if where else (torch.zeros(0), None, None)
        wins = [[0.0] * len(rs) for rs in responses]
        for (n, i, j), pij in zip(where, p.tolist()):
            wins[n][i] += pij
            wins[n][j] += 1.0 - pij
        records = []
        for prompt, rs, w in zip(prompts, responses, wins):
            scores = [x / max(len(rs) - 1, 1) for x in w]
            records.append(Ranking(prompt=prompt, responses=list(rs), scores=scores,
                                   meta={"judge": self.name},
                                   **self._common("ranking", prompt, *rs)))
        return records
