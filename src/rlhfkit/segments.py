"""Cutting responses into segments and finding the token that ends each one.

Fine-grained RLHF (Wu et al. 2023) gives a reward after every segment of a response: after
each sub-sentence for relevance, after each sentence for factuality, once at the end for
completeness. A segment is a character span of the response text; the reward goes on the last
token of that span (:func:`segment_end_tokens`), and the last segment's reward on the last
response token (the EOS when the response ended), so a one-segment response is rewarded
exactly where a holistic reward model's score would go.

Units:

* ``sentence``: ends after ``.``, ``!``, ``?`` or a newline (with closing quotes and brackets),
  followed by whitespace or the end of the text;
* ``subsentence``: a sentence, further cut after ``,``, ``;`` and ``:`` followed by whitespace;
* ``response``: the whole response as one segment.

The rules are deliberately simple and predictable (no abbreviation list): "Dr. Who" is two
sentences. Every character belongs to exactly one segment, so the spans tile the text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

UNITS = ("sentence", "subsentence", "response")

_SENTENCE_END = re.compile(r"(?:[.!?]+[\"')\]]*(?=\s|$)|\n)\s*")
_CLAUSE_END = re.compile(r"[,;:](?=\s)\s*")


def _cut(text: str, pattern: re.Pattern[str], start: int, end: int) -> list[tuple[int, int]]:
    spans, pos = [], start
    for m in pattern.finditer(text, start, end):
        if m.end() > pos and text[pos:m.start() + 1].strip():
            spans.append((pos, m.end()))
            pos = m.end()
    if pos < end:
        if spans and not text[pos:end].strip():  # trailing whitespace joins the last segment
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((pos, end))
    return spans


def split_segments(text: str, unit: str = "sentence") -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the segments of ``text``; they tile the text.

    Args:
        text: A response.
        unit: ``sentence``, ``subsentence`` or ``response``.

    Returns:
        At least one span (``[(0, 0)]`` for an empty text).

    Example:
        >>> split_segments("Great film. Loved it, truly!")
        [(0, 12), (12, 28)]
        >>> split_segments("Great film. Loved it, truly!", "subsentence")
        [(0, 12), (12, 22), (22, 28)]
    """
    if unit not in UNITS:
        raise ValueError(f"unknown segment unit {unit!r}; use one of {', '.join(UNITS)}")
    if unit == "response" or not text:
        return [(0, len(text))]
    sentences = _cut(text, _SENTENCE_END, 0, len(text))
    if unit == "sentence":
        return sentences
    return [span for s, e in sentences for span in _cut(text, _CLAUSE_END, s, e)]


def token_char_ends(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """For each token, the length of the decoded text up to and including it.

    Special tokens (EOS) add nothing. The lengths never decrease, even where a token holds
    only part of a multi-byte character.
    """
    ends, best = [], 0
    for i in range(len(ids)):
        best = max(best, len(tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=True)))
        ends.append(best)
    return ends


def segment_end_tokens(char_ends: Sequence[int], ends: Sequence[int]) -> list[int]:
    """Token index that ends each segment; the last segment ends at the last token.

    Args:
        char_ends: :func:`token_char_ends` of the response tokens (EOS included).
        ends: Character position where each segment's text ends, trailing whitespace
            excluded (BPE tokenizers glue a space to the next word, so the token that
            completes "great." is the one reaching the full stop, not the space after it).

    Returns:
        One non-decreasing token index per segment (0 for an empty response).
    """
    n = len(char_ends)
    if n == 0:
        return [0] * len(ends)
    out, t = [], 0
    for end in ends[:-1]:
        while t < n - 1 and char_ends[t] < end:
            t += 1
        out.append(t)
    out.append(n - 1)
    return out


def response_segments(tokenizer: Any, response_ids: Sequence[Sequence[int]],
                      texts: Sequence[str], unit: str = "sentence"
                      ) -> list[list[tuple[tuple[int, int], int]]]:
    """Segments of each response: ``((char start, char end), end token index)`` pairs.

    Args:
        tokenizer: The policy's tokenizer.
        response_ids: Each response's token ids (EOS included where it ended).
        texts: The decoded responses (without EOS), as in :class:`rlhfkit.rollout.Rollout`.
        unit: ``sentence``, ``subsentence`` or ``response``.
    """
    out = []
    for ids, text in zip(response_ids, texts):
        spans = split_segments(text, unit)
        if len(spans) > 1:
            text_ends = [a + len(text[a:b].rstrip()) for a, b in spans]
            ends = segment_end_tokens(token_char_ends(tokenizer, ids), text_ends)
        else:
            ends = [max(len(ids) - 1, 0)]
        out.append(list(zip(spans, ends)))
    return out
