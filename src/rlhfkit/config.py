"""Stage configurations: one dataclass per stage, YAML files, and ``--key value`` overrides.

A field's docstring (the string literal written under it, as in cleanrl) becomes its ``--help``
text. The resolved configuration is printed at start and saved as ``config.yaml`` in the run folder.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value or file is invalid."""

    user_facing = True
    """The command line prints the message of such an error as one line, no traceback."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Return ``{field: docstring}`` for a dataclass, from the string under each field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Unwrap ``X | None`` into ``(X, optional)``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert ``value`` (from YAML or the command line) to the field type ``tp``."""
    base, optional = _base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or value is None:
            return None
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base in (int, float, str):
            if base is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return base(value)
        if origin is list:
            (item,) = typing.get_args(base) or (str,)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return [_coerce(name, item, v) for v in value]
        if origin is dict:
            if isinstance(value, str):  # "a=1,b=2"
                pairs = [kv.split("=", 1) for kv in value.split(",") if kv.strip()]
                value = {k.strip(): float(v) for k, v in pairs}
            return dict(value)
        if origin is typing.Literal:
            if value not in typing.get_args(base):
                raise ValueError
            return value
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config field '{name}': expected {_type_name(tp)}, got {value!r}") from err
    return value


def _type_name(tp: Any) -> str:
    base, optional = _base_type(tp)
    if typing.get_origin(base) is typing.Literal:
        name = " | ".join(repr(a) for a in typing.get_args(base))
    else:
        name = getattr(base, "__name__", str(base))
    return f"{name} or None" if optional else name


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Build a config of type ``cls`` from a mapping, with a clear error for unknown keys."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"known keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(k, hints[k], v) for k, v in values.items()}
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, naming the file in any error."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data, ready for YAML."""
    return dataclasses.asdict(config)


def save_yaml(config: Any, path: str | Path) -> None:
    """Write the resolved config to ``path``."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config`` and one ``--flag`` per field of ``cls`` to ``parser``."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with any of the keys below")
    docs = field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        help_text = f"{docs.get(f.name, '')} [{_type_name(hints[f.name])}, default: {default!r}]"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings
        base, _ = _base_type(hints[f.name])
        if base is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                help=help_text,
            )
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar="VALUE", help=help_text)


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """Resolve a config: dataclass defaults, then the ``--config`` file, then flags."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
        source = args.config
    else:
        source = "config"
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return from_dict(cls, values, source=source)


def replace(config: Any, **changes: Any) -> Any:
    """Copy of ``config`` with ``changes`` coerced to the field types."""
    hints = _hints(type(config))
    return dataclasses.replace(config, **{k: _coerce(k, hints[k], v) for k, v in changes.items()})


# Named lists in options: ``--reward-model rel=SPEC,fact=SPEC --rewards rel=0.3,fact=0.5``


def split_named(spec: str) -> list[tuple[str | None, str]]:
    """``"a=X,b=Y"`` -> ``[("a", "X"), ("b", "Y")]``; a spec without names -> ``[(None, spec)]``.

    Commas inside a source spec (``scorer:sentiment:1,toxicity:-1``) stay with it: only a
    comma followed by ``name=`` starts a new source.
    """
    spec = spec.strip()
    if not re.match(r"^[A-Za-z_][\w-]*=", spec):
        return [(None, spec)]
    out = []
    for part in re.split(r",(?=\s*[A-Za-z_][\w-]*=)", spec):
        name, _, value = part.partition("=")
        if not value.strip():
            raise ValueError(f"reward source {name.strip()!r} in {spec!r} has no spec after '='")
        out.append((name.strip(), value.strip()))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"a reward source name is used twice in {spec!r}")
    return out


def parse_weights(spec: str, names: Sequence[str]) -> dict[str, float]:
    """``"rel=0.3,fact=0.5"`` -> weights for ``names`` (1.0 for a name not given).

    Raises:
        ValueError: A malformed term, a weight that is not a number, or an unknown name.
    """
    weights = dict.fromkeys(names, 1.0)
    if not spec.strip():
        return weights
    for term in spec.split(","):
        name, eq, value = term.partition("=")
        name = name.strip()
        if not eq:
            raise ValueError(f"--rewards: expected name=weight, got {term.strip()!r}")
        if name not in weights:
            raise ValueError(f"--rewards: no reward source named {name!r}; the sources are "
                             f"{', '.join(names)} (name them in --reward-model name=SPEC,...)")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--rewards: the weight of {name!r} must be a number, "
                             f"got {value.strip()!r}") from None
    return weights


def parse_floats(spec: str, option: str) -> list[float]:
    """``"0.1,0.5"`` -> ``[0.1, 0.5]``, with an error naming the option for a bad number."""
    try:
        values = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated numbers, got {spec!r}") from None
    if not values:
        raise ConfigError(f"{option}: give at least one number")
    return values
