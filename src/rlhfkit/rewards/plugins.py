r"""Reward sources from outside the package: a Python function, a remote scorer, an environment.

Three ``--reward-model`` specs, usable alone or in ``name=SPEC`` lists weighted by ``--rewards``
(so also in ``rlhfkit best-of-n`` and ``rlhfkit online-dpo --labeler reward:SPEC``)::

    --reward-model py:my_rewards.py:exact_match          # a function in a file
    --reward-model py:mypackage.rewards:judge            # ... or in an importable module
    --reward-model http://localhost:8000/score           # a remote scorer or judge
    --reward-model "http://judge:8000/score#timeout=60&retries=4"
    --reward-model acc=py:my_rewards.py:exact_match,fmt=py:my_rewards.py:has_format \
                   --rewards acc=1,fmt=0.2
    --reward-model env                                   # an environment's rewards

**py:PATH_OR_MODULE:FUNCTION** is called once per rollout batch, with keyword arguments it
names among ``prompts`` (the prompts, text or chat messages), ``completions`` (the response
texts) and ``references`` (the task's reference answer of each prompt, None where there is
none); a function with ``**kwargs`` gets all three, one with other parameter names gets them in
that order. It returns one number per completion; an ``async def`` function is awaited. An
error inside the function, or a bad return value, names the function and the sample (the batch
is re-run one sample at a time to find it).

**http:URL** (and https) posts ``{"prompts": [...], "completions": [...], "references":
[...]}`` as JSON and reads ``{"rewards": [...]}`` (or a bare list) back. Options after ``#``
(never sent): ``timeout`` in seconds (30), ``retries`` (2; connection errors, timeouts, 429
and 5xx are retried with a doubling wait from ``backoff`` seconds, 0.5), ``batch`` (0 = the
whole rollout in one request). Every failure names the URL and what came back.

**env** reads the per-turn rewards a multi-turn environment gave (``--environment``;
:mod:`rlhfkit.train.episodes`), each on the last token of its turn.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import math
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rlhfkit.rewards.shaping import DenseRewards, sequence_rewards
from rlhfkit.rewards.sources import RewardSource, SourceContext

__all__ = ["PluginError", "RewardFunctionError", "call_reward_function", "env_source",
           "http_source", "load_object", "python_source", "remote_rewards"]

ARGUMENTS = ("prompts", "completions", "references")
"""What a reward function may take, by name."""


class PluginError(ValueError):
    """A plug-in spec that cannot be loaded (no such file, module or attribute)."""

    user_facing = True


class RewardFunctionError(ValueError):
    """A reward function or remote scorer failed, or returned something that is not rewards."""

    user_facing = True


def load_object(spec: str, what: str = "reward function") -> Any:
    """The object named by ``FILE.py:NAME`` or ``package.module:NAME``.

    Raises:
        PluginError: a spec without ``:NAME``, a missing file, a module that fails to import,
            or no such attribute.
    """
    where, colon, name = spec.rpartition(":")
    if not colon or not where or not name:
        raise PluginError(f"{what} {spec!r}: expected FILE.py:NAME or package.module:NAME")
    path = Path(where).expanduser()
    if where.endswith(".py") or path.exists():
        if not path.is_file():
            raise PluginError(f"{what} {spec!r}: {path} is not a file")
        module_name = f"rlhfkit_plugin_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            try:
                loader_spec.loader.exec_module(module)
            except Exception as err:
                raise PluginError(f"{what} {spec!r}: importing {path} failed: "
                                  f"{type(err).__name__}: {err}") from err
            sys.modules[module_name] = module
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise PluginError(f"{what} {spec!r}: cannot import {where!r}: {err}") from err
    if not hasattr(module, name):
        public = sorted(n for n in vars(module) if not n.startswith("_"))[:20]
        raise PluginError(f"{what} {spec!r}: {where} has no {name!r} (it has: "
                          f"{', '.join(public) or 'nothing public'})")
    return getattr(module, name)


# ---------------------------------------------------------------------------------------
# Python functions
# ---------------------------------------------------------------------------------------


def _arguments(fn: Callable) -> Callable[[list, list, list], tuple[tuple, dict]]:
    """How to call ``fn``: by the names it takes, or positionally in the order of ARGUMENTS."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return lambda p, c, r: ((p, c), {})
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return lambda p, c, r: ((), {"prompts": p, "completions": c, "references": r})
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(n in ARGUMENTS for n in names):
        wanted = [n for n in ARGUMENTS if n in names]
        return lambda p, c, r: ((), {n: v for n, v in zip(ARGUMENTS, (p, c, r)) if n in wanted})
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        count = 3
    else:
        count = min(3, len(positional))
    return lambda p, c, r: ((p, c, r)[:count], {})


def _run(result: Any) -> Any:
    """The value of ``result``, awaited if it is awaitable (in a thread if a loop is running)."""
    if not inspect.isawaitable(result):
        return result
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(result))
    box: list[Any] = []

    def work() -> None:
        try:
            box.append(asyncio.run(_awaited(result)))
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= width else text[:width - 3] + "...")


def check_rewards(values: Any, n: int, who: str, prompts: Sequence[Any],
                  completions: Sequence[str]) -> list[float]:
    """``values`` as n finite floats, or an error naming ``who`` and the first bad sample."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().flatten().tolist()
    if isinstance(values, int | float) or not hasattr(values, "__len__"):
        raise RewardFunctionError(f"{who} returned {type(values).__name__}, expected a list of "
                                  f"{n} numbers (one per completion)")
    values = list(values)
    if len(values) != n:
        raise RewardFunctionError(f"{who} returned {len(values)} rewards for {n} completions")
    out = []
    for i, v in enumerate(values):
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if not math.isfinite(f):
            raise RewardFunctionError(
                f"{who} returned {v!r} for sample {i} (prompt {_short(prompts[i])}, completion "
                f"{_short(completions[i])}): expected a finite number")
        out.append(f)
    return out


def call_reward_function(fn: Callable, name: str, prompts: Sequence[Any],
                         completions: Sequence[str], references: Sequence[Any]) -> list[float]:
    """``fn`` on one batch, checked; an error names the function and the sample that failed."""
    prompts, completions, references = list(prompts), list(completions), list(references)
    call = _arguments(fn)
    try:
        args, kwargs = call(prompts, completions, references)
        values = _run(fn(*args, **kwargs))
    except Exception as err:  # noqa: BLE001 - re-raised below, naming the sample
        for i in range(len(prompts)):
            try:
                args, kwargs = call(prompts[i:i + 1], completions[i:i + 1], references[i:i + 1])
                _run(fn(*args, **kwargs))
            except Exception as one:  # noqa: BLE001 - the sample that fails on its own
                raise RewardFunctionError(
                    f"reward function {name} failed on sample {i} (prompt {_short(prompts[i])}, "
                    f"completion {_short(completions[i])}): {type(one).__name__}: {one}"
                ) from one
        raise RewardFunctionError(f"reward function {name} failed on a batch of "
                                  f"{len(prompts)} (each sample alone passes): "
                                  f"{type(err).__name__}: {err}") from err
    return check_rewards(values, len(prompts), f"reward function {name}", prompts, completions)


def _references(ctx: SourceContext, prompts: Sequence[Any]) -> list[Any]:
    if ctx.references is None:
        return [None] * len(prompts)
    return list(ctx.references(list(prompts)))


def python_source(name: str, spec: str, ctx: SourceContext) -> RewardSource:
    """``--reward-model py:PATH_OR_MODULE:FUNCTION`` (see the module docstring)."""
    fn = load_object(spec)
    if not callable(fn):
        raise PluginError(f"reward function {spec!r} is a {type(fn).__name__}, not a function")
    label = f"{spec} (source {name!r})"

    def score(rollout: Any) -> DenseRewards:
        values = call_reward_function(fn, label, rollout.prompts, rollout.texts,
                                      _references(ctx, rollout.prompts))
        return sequence_rewards(torch.tensor(values), rollout.response_mask.cpu())

    return RewardSource(name, score)


# ---------------------------------------------------------------------------------------
# Remote scorers
# ---------------------------------------------------------------------------------------

RETRIED = (408, 425, 429, 500, 502, 503, 504)
"""HTTP statuses worth another try."""


def _post(url: str, body: bytes, timeout: float) -> Any:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - user URL
        return json.loads(response.read().decode("utf-8"))


def remote_rewards(url: str, prompts: Sequence[Any], completions: Sequence[str],
                   references: Sequence[Any], timeout: float = 30.0, retries: int = 2,
                   backoff: float = 0.5) -> list[float]:
    """Rewards from a remote scorer (see the module docstring); errors name the URL."""
    body = json.dumps({"prompts": list(prompts), "completions": list(completions),
                       "references": list(references)}, default=str).encode("utf-8")
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            payload = _post(url, body, timeout)
            break
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace")[:200]
            last = f"HTTP {err.code}: {text}"
            if err.code not in RETRIED:
                raise RewardFunctionError(f"remote scorer {url} answered {last}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            last = f"{type(reason).__name__}: {reason}"
        except json.JSONDecodeError as err:
            raise RewardFunctionError(f"remote scorer {url} did not answer JSON: {err}") from None
    else:
        raise RewardFunctionError(f"remote scorer {url} failed {retries + 1} time(s) (timeout "
                                  f"{timeout:g} s); last: {last}")
    values = payload.get("rewards") if isinstance(payload, dict) else payload
    if values is None:
        raise RewardFunctionError(f"remote scorer {url} answered {_short(payload)}, expected "
                                  '{"rewards": [one number per completion]}')
    return check_rewards(values, len(completions), f"remote scorer {url}", prompts, completions)


def parse_http_spec(spec: str) -> tuple[str, dict[str, float]]:
    """``URL#timeout=10&retries=3`` -> (URL, options); unknown options are an error."""
    url, _, fragment = spec.partition("#")
    options = {"timeout": 30.0, "retries": 2.0, "backoff": 0.5, "batch": 0.0}
    for key, value in urllib.parse.parse_qsl(fragment, keep_blank_values=True):
        if key not in options:
            raise PluginError(f"remote scorer {spec!r}: unknown option {key!r} (known: "
                              f"{', '.join(options)})")
        try:
            options[key] = float(value)
        except ValueError:
            raise PluginError(f"remote scorer {spec!r}: {key} must be a number, got "
                              f"{value!r}") from None
    if not urllib.parse.urlparse(url).netloc:
        raise PluginError(f"remote scorer {spec!r}: not a URL (expected http://HOST:PORT/PATH)")
    return url, options


def http_source(name: str, spec: str, ctx: SourceContext, scheme: str = "http") -> RewardSource:
    """``--reward-model http://HOST:PORT/PATH[#options]`` (see the module docstring)."""
    url, opt = parse_http_spec(f"{scheme}:{spec}")
    batch = int(opt["batch"])

    def score(rollout: Any) -> DenseRewards:
        prompts, texts = list(rollout.prompts), list(rollout.texts)
        refs = _references(ctx, prompts)
        step = batch or max(len(texts), 1)
        values: list[float] = []
        for i in range(0, len(texts), step):
            values += remote_rewards(url, prompts[i:i + step], texts[i:i + step],
                                     refs[i:i + step], opt["timeout"], int(opt["retries"]),
                                     opt["backoff"])
        return sequence_rewards(torch.tensor(values), rollout.response_mask.cpu())

    return RewardSource(name, score)


def https_source(name: str, spec: str, ctx: SourceContext) -> RewardSource:
    """``--reward-model https://HOST:PORT/PATH[#options]``: :func:`http_source` over TLS."""
    return http_source(name, spec, ctx, scheme="https")


# ---------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------


def env_source(name: str, spec: str, ctx: SourceContext) -> RewardSource:
    """``--reward-model env``: the rewards a multi-turn environment gave, turn by turn."""

    def score(rollout: Any) -> DenseRewards:
        rewards = rollout.extras.get("env_rewards")
        if rewards is None:
            raise RewardFunctionError("--reward-model env reads an environment's rewards: give "
                                      "--environment (docs/verifiable.md)")
        return [list(row) for row in rewards]

    return RewardSource(name, score)
