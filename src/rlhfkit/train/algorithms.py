"""The RL algorithms as entries of one registry: an advantage estimator and a policy loss each.

Every on-policy algorithm rlhfkit trains (PPO, REINFORCE, RLOO, GRPO and its variants,
Nash-MD, online DPO/IPO) runs in the one loop of :mod:`rlhfkit.train.trainer`; what tells them
apart is an :class:`Algorithm` here:

- an **advantage estimator** ``fn(batch: AdvantageInputs) -> Advantages``: from the rollout's
  per-token rewards (or sequence scores), the response mask and, for PPO, the old values, the
  weight of every response token;
- a **policy loss** ``fn(update: Update) -> (loss, metrics)``: the scalar to minimise on one
  mini-batch (the maths itself lives in :mod:`rlhfkit.losses`);
- what the algorithm needs beyond that: a value function (a head on the policy or a critic
  from the reward model), the KL to the reference in the reward or in the loss, samples per
  prompt, a run class with its own scoring and evaluation (Nash-MD's opponent, online DPO's
  labeler), whether its loss couples the responses of a group (online DPO's pairs: the batch
  is then cut between groups only), and the defaults and options of its command.

A new estimator or loss is one decorated function (:func:`register_advantage`,
:func:`register_policy_loss`), an algorithm one :func:`register_algorithm` call. A user's own
algorithm needs no change to rlhfkit: ``--algo py:FILE.py:NAME`` imports FILE.py, whose
registrations then name NAME (:func:`get_algorithm`; ``examples/custom_algorithm.py``,
docs/custom-algorithm.md).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhfkit.config import ConfigError

if TYPE_CHECKING:  # annotations only: the registry loads without torch (rlhfkit --help)
    from torch import Tensor

    from rlhfkit.train.rl import RLRun


# ---------------------------------------------------------------------------------------------
# What an estimator and a loss receive
# ---------------------------------------------------------------------------------------------


@dataclass
class AdvantageInputs:
    """One rollout batch, as an advantage estimator sees it (B responses, R response tokens).

    Responses of one prompt are consecutive: ``scores.view(-1, group_size)`` is one row per
    prompt.
    """

    rewards: Tensor
    """(B, R) per-token rewards: every reward source at its token (a holistic score on the
    last token), minus ``kl_coef * (logprobs - ref_logprobs)`` on every token when the
    algorithm keeps the KL in the reward; 0 on padding."""
    scores: Tensor
    """(B,) one score per response (normalised, clipped, with the length corrections)."""
    response_mask: Tensor
    """(B, R) bool: the response tokens (EOS included)."""
    values: Tensor | None
    """(B, R) the value function's estimates at sampling time, or None (no value function)."""
    group_size: int
    """Responses per prompt (``--num-samples``)."""
    kl_coef: float
    """The current beta."""
    cfg: Any
    """The run's options (``gamma``, ``lam``, ``whiten_advantages``, ...)."""
    reduce: Callable[[Tensor], Tensor] | None = None
    """Sums a tensor over the processes (batch statistics of the global batch), or None."""


@dataclass
class Advantages:
    """What an advantage estimator returns."""

    advantages: Tensor
    """(B, R) the weight of each response token in the policy loss (0 on padding)."""
    returns: Tensor | None = None
    """(B, R) value targets, for an algorithm with a value function."""


@dataclass
class Update:
    """What a policy loss receives for one mini-batch (b responses, R response tokens)."""

    logprobs: Tensor
    """(b, R) the policy's log-probs of the sampled tokens now (with gradient)."""
    old_logprobs: Tensor
    """(b, R) the log-probs at sampling time (the ratio's denominator)."""
    ref_logprobs: Tensor
    """(b, R) the reference policy's log-probs."""
    advantages: Tensor
    """(b, R) from the estimator."""
    mask: Tensor
    """(b, R) the tokens that count in the loss (response tokens, less any filtered out)."""
    on_policy: bool
    """True when the samples come from the very weights being updated (one pass, one batch)."""
    kl_coef: float
    """The current beta."""
    normalizer: float
    """Loss tokens of the generation batch per mini-batch, over all processes (``dapo``)."""
    cfg: Any
    """The run's options."""
    returns: Tensor | None = None
    """(b, R) value targets, or None."""
    values: Tensor | None = None
    """(b, R) the value function's estimates now (with gradient), or None."""
    old_values: Tensor | None = None
    """(b, R) the value function's estimates at sampling time, or None."""
    token_weights: Tensor | None = None
    """(b, R) truncated importance weights to the sampling engine (``--tis-cap``), or None."""
    group_size: int = 1
    """Responses per group (``--num-samples``). For an algorithm with ``group_loss`` the rows
    come in whole groups, each group's rows consecutive and in order: ``view(-1, group_size)``
    is one row per prompt."""


AdvantageFn = Callable[[AdvantageInputs], Advantages]
LossFn = Callable[[Update], tuple[Any, dict[str, Any]]]
"""``(update) -> (scalar loss tensor, {metric name: tensor or float})``."""
ValueFn = Callable[[Any], str | None]
"""``(options) -> None | "policy" | "critic"``: the value function an algorithm needs."""


def no_value(cfg: Any) -> str | None:
    """No value function."""
    return None


def token_average(cfg: Any) -> str:
    """A loss that is a mean over the tokens of its batch (a masked mean)."""
    return "token"


GRPO_AVERAGES = {"bnpo": "token", "grpo": "sequence", "dr_grpo": "sequence", "dapo": "sum"}
"""How each ``--loss-type`` of GRPO averages over the batch it is given."""


@dataclass(frozen=True)
class Algorithm:
    """One on-policy RL algorithm: an advantage estimator, a policy loss and what they need.

    The estimator, the loss and the run class may be given by name (a registered estimator or
    loss, ``module:Class`` for the run): the built-in table is then read without loading torch
    (``rlhfkit --help``), and each is looked up when a run starts.
    """

    name: str
    advantages: str | AdvantageFn
    """The advantage estimator, or the name it is registered under."""
    loss: str | LossFn
    """The policy loss, or the name it is registered under."""
    help: str
    """One line for ``rlhfkit --help``."""
    min_samples: int = 1
    """Responses per prompt the estimator needs."""
    kl_in_reward: bool = True
    """True: ``-beta * k1`` is part of every token's reward (PPO, REINFORCE, RLOO); False: the
    loss holds the KL term itself (GRPO)."""
    value: ValueFn = no_value
    loss_average: Callable[[Any], str] = token_average
    """``(options) -> "token" | "sequence" | "group" | "sum"``: how the policy loss averages
    over the batch it is given (a token mean, a mean of per-sequence values, a mean over the
    groups whose advantages are not all 0, or a sum over a fixed normaliser), so that
    micro-batches weigh into exactly the mini-batch's loss."""
    group_loss: bool = False
    """True when the loss couples the responses of a group (online DPO's chosen and rejected
    pair): mini-batches and micro-batches then hold whole groups, each group's rows in order,
    and ``--mini-batch-size`` must be a multiple of ``--num-samples``."""
    check: str | Callable[[Any], None] | None = None
    """Rules between this algorithm's options, run with the others before any model loads:
    ``fn(options)`` raising ConfigError, or ``module:function``."""
    payoff: str = "reward"
    """What it optimises: reward (the run's reward sources: a reward model, a scorer, a
    plug-in), preference (a pairwise preference model, Nash-MD) or labeler (the picks of a
    labeler, online DPO)."""
    run_class: str | type[RLRun] = "rlhfkit.train.rl:RLRun"
    """The run: how a batch is scored and evaluated (``rlhfkit.train.nash:NashRun`` plays an
    opponent)."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Option defaults of this algorithm where they differ from the options' own."""
    reads: tuple[str, ...] = ()
    """Algorithm-specific options it reads (the others are refused when set)."""
    source: str = "rlhfkit"
    """Where it was registered: rlhfkit, or the user's file."""

    def advantage_fn(self) -> AdvantageFn:
        """The estimator itself."""
        return _lookup(ADVANTAGES, self.advantages, "advantage estimator")

    def loss_fn(self) -> LossFn:
        """The policy loss itself."""
        return _lookup(POLICY_LOSSES, self.loss, "policy loss")

    def check_options(self, cfg: Any) -> None:
        """This algorithm's own rules between options (``check``), if it has any."""
        if self.check is None:
            return
        fn = self.check
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        fn(cfg)

    def run_type(self) -> type[RLRun]:
        """The run class."""
        if not isinstance(self.run_class, str):
            return self.run_class
        module, _, attr = self.run_class.partition(":")
        return getattr(importlib.import_module(module), attr)


ADVANTAGES: dict[str, AdvantageFn] = {}
"""Advantage estimators by name."""
POLICY_LOSSES: dict[str, LossFn] = {}
"""Policy losses by name."""
ALGORITHMS: dict[str, Algorithm] = {}
"""Algorithms by name (``rlhfkit NAME``, ``--algo NAME``)."""
_REGISTERED_FROM: dict[str, str] = {}
"""Registry key -> the file that registered it (for user files)."""
BUILTINS = "rlhfkit.train.estimators"
"""The module whose decorators register the built-in estimators and losses."""


def _check_arity(fn: Callable, what: str, name: str, takes: str) -> None:
    """Refuse a function that cannot be called with one positional argument."""
    if not callable(fn):
        raise ConfigError(f"{what} {name!r} must be a function, got {type(fn).__name__}")
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        params = ", ".join(inspect.signature(fn).parameters)
        raise ConfigError(f"{what} {name!r} must take one argument ({takes}), but its "
                          f"signature is ({params})") from None


def _registrar(table: dict[str, Callable], key: str, what: str, takes: str,
               name: str) -> Callable[[Callable], Callable]:
    """A decorator that checks a function takes one argument and files it in ``table``."""
    def wrap(fn: Callable) -> Callable:
        _check_arity(fn, what, name, takes)
        table[name] = fn
        _REGISTERED_FROM[f"{key}:{name}"] = _caller_file()
        return fn
    return wrap


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register ``fn(batch: AdvantageInputs) -> Advantages`` as ``name``."""
    return _registrar(ADVANTAGES, "advantage", "advantage estimator", "an AdvantageInputs", name)


def register_policy_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Decorator: register ``fn(update: Update) -> (loss, metrics)`` as ``name``."""
    return _registrar(POLICY_LOSSES, "loss", "policy loss", "an Update", name)


def register_algorithm(name: str, *, advantages: str | AdvantageFn, loss: str | LossFn,
                       help: str = "", **options: Any) -> Algorithm:
    """Register an algorithm from an estimator and a loss (each a function or a registered name).

    ``options`` are the other fields of :class:`Algorithm` (``min_samples``, ``kl_in_reward``,
    ``value``, ``defaults``, ...). A function is checked here; a name when a run starts.
    """
    for fn, what, takes in ((advantages, "advantage estimator", "an AdvantageInputs"),
                            (loss, "policy loss", "an Update")):
        if not isinstance(fn, str):
            _check_arity(fn, what, name, takes)
    unknown = set(options) - set(Algorithm.__dataclass_fields__) - {"name"}
    if unknown:
        known = ", ".join(f for f in Algorithm.__dataclass_fields__ if f not in
                          ("name", "advantages", "loss", "help"))
        raise ConfigError(f"register_algorithm({name!r}): unknown option(s) "
                          f"{', '.join(sorted(unknown))}; known: {known}")
    source = _caller_file()
    if source != __file__:
        options.setdefault("source", source)
    algo = Algorithm(name, advantages, loss, help or f"RL with the {name!r} algorithm",
                     **options)
    ALGORITHMS[name] = algo
    _REGISTERED_FROM[f"algorithm:{name}"] = source
    return algo


def _lookup(table: Mapping[str, Callable], key: str | Callable, what: str) -> Callable:
    if not isinstance(key, str):
        return key
    if key not in table:
        importlib.import_module(BUILTINS)  # the built-ins register on import
    if key not in table:
        raise ConfigError(f"no {what} named {key!r}; registered: {', '.join(sorted(table))}")
    return table[key]


def _caller_file() -> str:
    """The file of the code that called the registering function (or applied its decorator)."""
    return sys._getframe(2).f_code.co_filename


def algorithm_specific_options() -> list[str]:
    """Options that only some built-in algorithms read (the union of their ``reads``)."""
    return sorted({n for a in ALGORITHMS.values() if a.source == "rlhfkit" for n in a.reads})


def reward_algorithms() -> list[str]:
    """The built-in algorithms that optimise the run's reward sources.

    They are the choices of the demo, of iterate and of the frontier (which take a user's
    algorithm as ``py:FILE.py:NAME`` too).
    """
    return [name for name, a in ALGORITHMS.items()
            if a.payoff == "reward" and a.source == "rlhfkit"]


def reward_algorithm(spec: str, option: str = "--algo") -> Algorithm:
    """The algorithm of ``spec`` (a name or ``py:FILE.py:NAME``), which must optimise a reward.

    Raises:
        ConfigError: For an unknown name, or an algorithm with another payoff (Nash-MD).
    """
    algo = get_algorithm(spec, option)
    if algo.payoff != "reward":
        raise ConfigError(f"{option} {spec}: {algo.name} learns from a {algo.payoff} "
                          f"model, not from the reward model this command trains; choose one of "
                          f"{', '.join(reward_algorithms())} (or py:FILE.py:NAME)")
    return algo


# ---------------------------------------------------------------------------------------------
# Finding an algorithm: a registered name, or py:FILE.py:NAME
# ---------------------------------------------------------------------------------------------


def get_algorithm(spec: str, option: str = "--algo") -> Algorithm:
    """The algorithm of ``--algo``: a registered name or ``py:FILE.py:NAME``.

    ``py:FILE.py:NAME`` imports FILE.py (once), then takes, in this order, the algorithm it
    registered as NAME; or its advantage estimator NAME with the ``reinforce`` policy loss
    (``-A log pi``, the clipped ratio on reused samples); or its policy loss NAME with the
    ``grpo`` estimator (group-normalised scores).

    Raises:
        ConfigError: One sentence: an unknown name, a missing file, a file that fails to
            import, or a file that registers nothing called NAME.
    """
    spec = spec.strip()
    if not spec.startswith("py:"):
        if spec not in ALGORITHMS:
            raise ConfigError(f"{option}: no algorithm named {spec!r}; the algorithms are "
                              f"{', '.join(ALGORITHMS)}, or py:FILE.py:NAME for your own")
        return ALGORITHMS[spec]
    path_text, sep, name = spec[3:].rpartition(":")
    if not sep or not path_text or not name:
        raise ConfigError(f"{option} {spec!r}: expected py:FILE.py:NAME")
    path = Path(path_text).expanduser().resolve()
    _import_file(path, spec, option)
    key = str(path)
    registered_here = {k for k, v in _REGISTERED_FROM.items() if Path(v).resolve() == path}
    if f"algorithm:{name}" in registered_here:
        return ALGORITHMS[name]
    if f"advantage:{name}" in registered_here:
        return Algorithm(name, ADVANTAGES[name], "reinforce", f"{name} from {key}", source=key)
    if f"loss:{name}" in registered_here:
        return Algorithm(name, "grpo", POLICY_LOSSES[name], f"{name} from {key}",
                         min_samples=2, kl_in_reward=False, defaults=ALGORITHMS["grpo"].defaults,
                         source=key)
    names = sorted(k.partition(":")[2] for k in registered_here)
    raise ConfigError(f"{option} {spec!r}: {path_text} registers no algorithm, advantage "
                      f"estimator or policy loss named {name!r}"
                      + (f" (it registers {', '.join(names)})" if names else
                         " (it registers nothing: use register_algorithm, register_advantage "
                         "or register_policy_loss from rlhfkit.train.algorithms)"))


def _import_file(path: Path, spec: str, option: str) -> None:
    """Run a user's algorithm file once (its decorators fill the registry)."""
    if not path.is_file():
        raise ConfigError(f"{option} {spec!r}: no file {path}")
    module_name = "rlhfkit_user_algo_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"{option} {spec!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except ConfigError as err:
        del sys.modules[module_name]
        raise ConfigError(f"{option} {spec!r}: {err}") from None
    except Exception as err:  # noqa: BLE001 - the user's code: one line naming the file
        del sys.modules[module_name]
        raise ConfigError(f"{option} {spec!r}: importing {path} failed: "
                          f"{type(err).__name__}: {err}") from err


def checked_advantages(algo: Algorithm, batch: AdvantageInputs) -> Advantages:
    """Run ``algo``'s estimator; a result of the wrong kind or shape is one clear error."""
    out = algo.advantage_fn()(batch)
    if hasattr(out, "shape"):  # a bare (B, R) tensor is the advantages alone
        out = Advantages(out)
    shape = tuple(batch.response_mask.shape)
    if not isinstance(out, Advantages) or tuple(getattr(out.advantages, "shape", ())) != shape:
        got = (f"advantages of shape {tuple(getattr(out.advantages, 'shape', ()))}"
               if isinstance(out, Advantages) else type(out).__name__)
        raise ConfigError(f"the advantage estimator of {algo.name!r} ({algo.source}) returned "
                          f"{got}; expected Advantages (or a tensor) of shape {shape}")
    return out


def checked_loss(algo: Algorithm, update: Update) -> tuple[Tensor, dict[str, Tensor]]:
    """Run ``algo``'s policy loss; anything but ``(scalar tensor, dict)`` is one clear error."""
    out = algo.loss_fn()(update)
    ok = (isinstance(out, tuple) and len(out) == 2 and hasattr(out[0], "numel")
          and out[0].numel() == 1 and isinstance(out[1], dict))
    if not ok:
        raise ConfigError(f"the policy loss of {algo.name!r} ({algo.source}) must return "
                          f"(a scalar tensor, a dict of metrics), got {type(out).__name__}")
    return out


# ---------------------------------------------------------------------------------------------
# The built-in algorithms
# ---------------------------------------------------------------------------------------------

GROUPS = {"num_samples": 4, "batch_size": 4}
"""Defaults of the algorithms that sample a group per prompt: 4 prompts x 4 responses."""
RETURNS = ("gamma", "reward_to_go", "baseline", "whiten_advantages")
"""Options of the REINFORCE estimator."""
DAPO = ("dynamic_sampling", "max_refill_rounds", "overlong_buffer", "overlong_penalty",
        "overlong_filter")
"""DAPO's options (rlhfkit.train.rlvr), for the group algorithms."""

register_algorithm(
    "ppo", advantages="gae", loss="ppo",
    help="Step 3: PPO against a reward model with a KL penalty (InstructGPT)",
    value=lambda cfg: "policy" if cfg.critic == "policy" else "critic",
    defaults={"batch_size": 16, "mini_batch_size": 8, "update_epochs": 2,
              "whiten_advantages": True},
    reads=("gamma", "lam", "whiten_advantages", "vf_coef", "clip_range_value", "critic",
           "clip_range"))
register_algorithm(
    "reinforce", advantages="reinforce", loss="reinforce",
    help="Step 3: REINFORCE with reward-to-go and a baseline",
    value=lambda cfg: "policy" if cfg.baseline == "value" else None,
    reads=(*RETURNS, "vf_coef", "clip_range"))
register_algorithm(
    "rloo", advantages="leave_one_out", loss="reinforce", min_samples=2,
    help="Step 3: REINFORCE leave-one-out over k samples per prompt",
    defaults=GROUPS, reads=("whiten_advantages", "clip_range", *DAPO))
register_algorithm(
    "grpo", advantages="grpo", loss="grpo", min_samples=2, kl_in_reward=False,
    help="Step 3: GRPO (group-normalised advantages, clipped ratio, KL loss)",
    defaults={**GROUPS, "kl_coef": 0.04}, loss_average=lambda cfg: GRPO_AVERAGES[cfg.loss_type],
    reads=("clip_range", "clip_range_high", "scale_advantages", "loss_type",
           "importance_level", *DAPO))
register_algorithm(
    "nash", advantages="reinforce", loss="reinforce", run_class="rlhfkit.train.nash:NashRun",
    payoff="preference",
    help="Nash-MD: play against a mixture of the policy and the reference, payoff from a "
         "pairwise preference model (Munos et al. 2023)",
    reads=(*RETURNS, "clip_range", "preference_model", "mixture_beta"))
register_algorithm(
    "online-dpo", advantages="best_worst", loss="pairwise", min_samples=2, kl_in_reward=False,
    group_loss=True, loss_average=lambda cfg: "group", payoff="labeler",
    run_class="rlhfkit.train.online_dpo:OnlineDPORun",
    check="rlhfkit.train.online_dpo:check_online_dpo",
    help="Online DPO/IPO: K samples per prompt, a labeler (gold, reward model, AI judge) picks "
         "the best and worst, the pairwise --loss on them against the reference",
    defaults={**GROUPS, "batch_size": 8, "learning_rate": 5e-6, "normalize_reward": False,
              "reward_clip": 0.0},
    reads=("loss", "beta", "label_smoothing", "unlikelihood_alpha", "labeler",
           "labeler_temperature", "judge_criteria", "ref_policy"))
