"""The one place where a stage's specs become its inputs.

Every stage names its inputs with short specs, and they are all resolved here:

| spec | what it gives |
|---|---|
| ``--data task:NAME`` | a built-in task's demonstrations, rankings or prompts (:mod:`rlhfkit.tasks`) |
| ``--data db:URL?project=P`` | the labels of a feedback store (:mod:`rlhfkit.feedback.transfer`) |
| ``--data FILE`` | a JSONL/JSON/CSV/TSV/Parquet file (text ones may be gzipped), a HF datasets folder, or a dataset id / folder for ``datasets.load_dataset``; ``--split``/``--eval-split`` pick splits (:mod:`rlhfkit.data.io`) |
| ``--model``, ``--reference`` | a HF id or folder, a .gguf file, an alias (:mod:`rlhfkit.models.loading`) |
| ``--reward-model`` | reward sources (:mod:`rlhfkit.rewards.registry`), reward-model folders (:mod:`rlhfkit.models.reward`), plus the tasks' own and ``task:NAME`` (a task's verifier or gold scorer) |
| ``--gold`` | the scorer used for evaluation only (``task``, a scorer spec, ``none``) |

so the layers below never need to know about each other: the data readers know nothing of the
feedback store, the reward sources nothing of the tasks or of the trained reward models.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.exc import SQLAlchemyError

from rlhfkit.config import ConfigError
from rlhfkit.data import io as data_io
from rlhfkit.data.records import Record, RecordError, SpanFeedback, from_dict
from rlhfkit.data.splits import prompt_key, split_records
from rlhfkit.feedback.reliability import estimate_reliability, reliability_table, weight_records
from rlhfkit.feedback.store import StoreError
from rlhfkit.feedback.transfer import read_project_records
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.reward import reward_model_source
from rlhfkit.rewards.gold import get_scorer
from rlhfkit.rewards.registry import build_sources
from rlhfkit.rewards.sources import RewardSource, SourceContext, scorer_source
from rlhfkit.tasks import Task, get_task, task_reward_sources
from rlhfkit.tasks.verifiable import VerifiableTask

PROMPT_KINDS = ("prompt", "demonstration", "comparison", "ranking", "binary", "score")
"""Record kinds whose prompts an RL stage can sample from."""


def task_of(spec: str | None) -> Task | None:
    """The built-in task a ``task:NAME`` spec names (None for any other spec)."""
    if spec and spec.startswith("task:"):
        return get_task(spec[len("task:"):])
    return None


def read_source(spec: str, kind: str | None = None, *, split: str | None = None,
                kinds: Sequence[str] | None = None) -> list[Record]:
    """Every record of a file, a datasets folder or id, or a feedback store (``db:URL``).

    Args:
        spec: A path, a dataset id, or ``db:<database url>?project=NAME`` for the labels of a
            project.
        kind: Keep only the records of this kind (None: all of them).
        split: The split of data that has several (see :func:`rlhfkit.data.io.read_records`).
        kinds: The kinds the caller takes; another kind is an error at its line/row.
    """
    if not spec.startswith("db:"):
        return data_io.read_records(spec, kind, split=split, kinds=kinds)
    shown = data_io.hide_password(spec)
    try:
        items = read_project_records(spec[len("db:"):])
    except StoreError as err:  # no such project, a malformed URL
        raise RecordError(str(err), file=shown) from err
    except SQLAlchemyError as err:  # an unreachable server, a file that is no database
        cause = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise RecordError(f"cannot read the feedback store: {cause}", file=shown) from err
    records = []
    for index, item in enumerate(items):
        if isinstance(item, Record):
            record = item
        else:
            try:
                record = from_dict(item)
            except RecordError as err:
                raise err.at(file=shown, row=index, row_hint="0-based record from the store") \
                    from None
        if kind is None or record.KIND == kind:
            records.append(record)
    return records


def load_records(spec: str, want: str, kinds: Sequence[str],
                 split: str | None = None) -> list[Record]:
    """Load the records of a stage.

    Args:
        spec: ``task:NAME`` for a built-in task, ``db:URL`` for a feedback store, a path, or
            a dataset id.
        want: What the stage needs from a task: ``demonstrations``, ``preferences`` (rankings
            and comparisons) or ``prompts``.
        kinds: Record kinds the stage accepts; anything else is an error naming the record
            (and, for files, its line or row).
        split: The split of ``spec`` to read, for data with splits.
    """
    task = task_of(spec)
    if task is not None:
        if want == "demonstrations":
            records: list[Record] = list(task.demonstrations())
        elif want == "preferences":
            records = list(task.rankings())
        elif want == "prompts":
            records = list(task.prompt_records("train"))
        else:
            raise ValueError(f"unknown request {want!r}")
    else:
        records = read_source(spec, split=split, kinds=kinds)
    for i, record in enumerate(records):
        if record.KIND not in kinds:
            raise RecordError(
                f"record {i} is a '{record.KIND}' record",
                field="kind",
                expected=f"one of {', '.join(kinds)} for this stage",
                file=spec,
            )
    if not records:
        raise RecordError("no records", field="(file)", expected="at least one record", file=spec)
    return records


def system_prompt_for(system_prompt: str | None, data: str) -> str | None:
    """The stage's system prompt: the one given, else the task's (``task:NAME``), else none."""
    if system_prompt is not None:
        return system_prompt
    task = task_of(data)
    return task.system_prompt if task is not None else None


@dataclass
class StageInputs:
    """What a supervised stage reads before it trains (see :func:`stage_inputs`)."""

    tokenizer: Any
    system_prompt: str | None
    train_records: list
    eval_records: list


def split_or_load(records: list, eval_spec: str | None, fraction: float, seed: int,
                  load: Any, *, data: str | None = None,
                  eval_split: str | None = None) -> tuple[list, list]:
    """(train, held-out records) of a stage.

    Held out: ``load(eval_spec, eval_split)`` when an eval spec is given; else the
    ``eval_split`` of ``data``; else a prompt-level split of ``records`` by ``fraction``.
    """
    if eval_spec:
        return records, load(eval_spec, eval_split)
    if eval_split:
        if data is None or data.startswith(("task:", "db:")):
            raise RecordError("--eval-split needs data with splits", field="eval_split",
                              expected="a dataset id or a folder with splits (or "
                                       "--eval-fraction)", file=data)
        return records, load(data, eval_split)
    return split_records(records, fraction, seed)


def stage_inputs(cfg: Any, want: str, kinds: Sequence[str]) -> StageInputs:
    """Tokenizer, system prompt and train / held-out records of a supervised stage.

    Args:
        cfg: The stage config (``model``, ``data``, ``eval_data``, ``eval_fraction``, ``seed``,
            ``system_prompt``).
        want: What a built-in task should supply (``demonstrations`` or ``preferences``).
        kinds: Record kinds the stage accepts.
    """
    records = load_records(cfg.data, want, kinds, split=cfg.split)
    train, held = split_or_load(records, cfg.eval_data, cfg.eval_fraction, cfg.seed,
                                lambda s, split: load_records(s, want, kinds, split=split),
                                data=cfg.data, eval_split=cfg.eval_split)
    if not held and os.environ.get("RANK", "0") == "0":  # said once, before training
        print(f"[warning] no records held out of {cfg.data} (--eval-fraction "
              f"{cfg.eval_fraction} left none out, and no --eval-data): this run will have no "
              "held-out evaluation")
    return StageInputs(load_tokenizer(cfg.model), system_prompt_for(cfg.system_prompt, cfg.data),
                       train, held)


@dataclass
class LabelWeightOptions:
    """Which labels train and how much each weighs (``rlhfkit rm``, ``dpo``, ``preference``).

    By the annotator's reliability (rm, dpo); ties kept or skipped (rm, preference).
    """

    weight_by: Literal["none", "reliability"] = "none"
    """none, or reliability: weight each comparison (and ranking pair) by 1 - 2e, e = its annotator's estimated error rate from honeypots and agreement (docs/feedback.md)."""
    min_reliability: float = 0.0
    """With --weight-by reliability: also leave out the labels of annotators estimated to be right less often than this (0..1)."""
    train_on_ties: bool = True
    """Train on tied pairs (target probability 1/2); otherwise skip them."""


def weigh_labels(cfg: Any, train: list[Record], held: list[Record]) -> tuple[list[Record], list[dict]]:
    """``--weight-by reliability``: the training records weighted by their annotators' reliability.

    The estimate (:func:`rlhfkit.feedback.reliability.estimate_reliability`) reads every label
    of ``--data``, the honeypots' too for a feedback store (``db:``); held-out records stay as
    they are. Returns the training records and the estimates, one row per annotator and kind.
    """
    if cfg.weight_by == "none":
        return train, []
    if cfg.weight_by != "reliability":
        raise ConfigError(f"--weight-by must be none or reliability, not {cfg.weight_by!r}")
    if not 0.0 <= cfg.min_reliability <= 1.0:
        raise ConfigError(f"--min-reliability must be in 0..1, got {cfg.min_reliability}")
    evidence = train + held
    if cfg.data.startswith("db:"):
        evidence = read_project_records(cfg.data[len("db:"):], include_gold=True)
    estimates = estimate_reliability(evidence)
    weighted = weight_records(train, estimates, min_reliability=cfg.min_reliability or None)
    return weighted, reliability_table(estimates)


def unique_prompts(records: Sequence[Record]) -> list[Any]:
    """The distinct prompts of some records, in first-seen order."""
    seen: dict[str, Any] = {}
    for r in records:
        seen.setdefault(prompt_key(r.prompt), r.prompt)
    return list(seen.values())


def load_prompts(cfg: Any) -> tuple[list[Any], list[Any], str | None, Task | None]:
    """(train prompts, held-out prompts, system prompt, task or None) of an RL stage."""
    task = task_of(cfg.data)
    system_prompt = system_prompt_for(cfg.system_prompt, cfg.data)
    if task is not None:
        return task.prompts("train"), task.prompts("eval"), system_prompt, task
    data_split, eval_split = getattr(cfg, "split", None), getattr(cfg, "eval_split", None)
    records = load_records(cfg.data, "prompts", PROMPT_KINDS, split=data_split)
    train, held = split_or_load(records, cfg.eval_data, cfg.eval_fraction, cfg.seed,
                                lambda s, split: load_records(s, "prompts", PROMPT_KINDS,
                                                              split=split),
                                data=cfg.data, eval_split=eval_split)
    return unique_prompts(train), unique_prompts(held), system_prompt, task


def build_gold(spec: str, task: Task | None) -> Any:
    """The gold scorer named by ``spec`` (``task``, a scorer spec, or ``none``)."""
    if spec == "none":
        return None
    if spec == "task":
        return task.gold_scorer() if task is not None else None
    return get_scorer(spec)


def reward_sources(spec: str, weights: str, ctx: SourceContext,
                   task: Task | None = None) -> list[RewardSource]:
    """The sources of ``--reward-model`` (with the tasks' own prefixes) weighted by ``--rewards``.

    ``task:NAME`` is a built-in task's verifier or gold scorer as a reward (one score per
    response); a folder is a reward model (:func:`rlhfkit.models.reward.reward_model_source`).
    With ``task`` (the task of ``--data``), sources that check answers (``py:``, ``http:``) get
    its reference answers unless ``ctx`` has references already.
    """
    extra = {prefix: _task_factory(factory) for prefix, factory in task_reward_sources().items()}
    extra["task"] = _task_gold_source
    if ctx.references is None and isinstance(task, VerifiableTask):
        ctx = dataclasses.replace(ctx, references=task.references)
    return build_sources(spec, weights, ctx, extra, folder=reward_model_source)


def _task_gold_source(name: str, spec: str, ctx: SourceContext) -> RewardSource:
    try:
        task = get_task(spec.strip())
    except KeyError as err:
        raise ConfigError(f"reward source {name!r}: {err.args[0]}") from None
    return scorer_source(name, task.gold_scorer())


def _task_factory(factory: Any) -> Any:
    def build(name: str, spec: str, ctx: SourceContext) -> RewardSource:
        fn, stats = factory(name, spec, ctx)
        return RewardSource(name, fn, stats=stats)

    return build


def load_span_records(spec: str, split: str | None = None) -> list[SpanFeedback]:
    """Span-feedback records from a file, a store, or a task's simulated span feedback.

    A feedback-app export may hold other kinds too (a project that asks 👍/👎, a score and
    spans of each response); those are skipped, with a count. A source with no span record at
    all is an error.
    """
    task = task_of(spec)
    if task is not None:
        if not hasattr(task, "span_feedback"):
            raise RecordError(f"task {task.name!r} has no span feedback", field="data",
                              expected="a file of span records or a task that makes them "
                                       "(task:factqa)", file=spec)
        return list(task.span_feedback())
    records = read_source(spec, split=split)
    spans = [r for r in records if isinstance(r, SpanFeedback)]
    if not spans:
        kinds = Counter(r.KIND for r in records)
        raise RecordError(
            "no span records" + (f" (found {', '.join(f'{n} {k}' for k, n in kinds.items())})"
                                 if kinds else ""),
            field="kind", expected="span records (prompt, response, spans, missing)", file=spec)
    if len(spans) < len(records):
        print(f"[segment-rm] {spec}: using the {len(spans)} span records, skipping "
              f"{len(records) - len(spans)} of other kinds")
    return spans
