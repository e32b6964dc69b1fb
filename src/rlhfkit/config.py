"""Stage configurations: one dataclass per stage, YAML files, and ``--key value`` overrides.

A field's docstring (the string literal written under it, as in cleanrl) becomes its ``--help``
text. The resolved configuration is printed at start and saved as ``config.yaml`` in the run folder.

Every option is declared once, in an option group (:mod:`rlhfkit.options` holds those several
stages share): its type, default, range (:func:`bounds`) and help sit together. A stage config
composes the groups it uses side by side, takes part of a group with :func:`only`, gives an
inherited option another default with :func:`stage_defaults`, and declares only its own options.
"""

from __future__ import annotations

import argparse
import ast
import copy
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
    """Return ``{field: docstring}`` for a dataclass, from the string under each field.

    The classes of the MRO are read base first, so a field's text is that of the class that
    declares it (an option group); :func:`stage_defaults` keeps it.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        if "__field_docs__" in klass.__dict__:  # a part of a group (:func:`only`): no source
            docs.update(klass.__dict__["__field_docs__"])
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
    """Build a config of type ``cls`` from a mapping, with a clear error for unknown keys.

    The result is checked by :func:`validate` (choices and ranges), so a bad value stops
    here, before any model loads. A key that ``cls.retired`` (a class attribute, ``{key: what
    to use instead}``) names is refused with that sentence.
    """
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, instead in getattr(cls, "retired", {}).items():  # gone: say what replaces it
        if key in values and key not in names:
            where = f"--{key.replace('_', '-')}" if source == "config" else f"{source}: {key}"
            raise ConfigError(f"{where} is no longer an option: {instead}")
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"known keys: {', '.join(sorted(names))}"
        )
    defaults_for = getattr(cls, "defaults_for", None)
    if defaults_for is not None:  # defaults that depend on another option (an RL algorithm's)
        values = {**defaults_for(values), **values}
    kwargs = {k: _coerce(k, hints[k], v) for k, v in values.items()}
    return validate(cls(**kwargs))


def bounds(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> dict[str, Any]:
    """Field metadata giving an option's range, checked by :func:`validate`.

    ``x: float = field(default=0.1, metadata=bounds(ge=0, lt=1))`` declares ``0 <= x < 1``
    next to the option itself.
    """
    if ge is not None and gt is not None or le is not None and lt is not None:
        raise ValueError("give at most one lower (ge/gt) and one upper (le/lt) bound")
    return {"bounds": (ge if gt is None else gt, le if lt is None else lt, gt is None,
                       lt is None)}


def stage_defaults(**defaults: Any) -> Any:
    """Class decorator: other defaults for options a stage config inherits from its groups.

    ``@stage_defaults(output_dir="runs/sft", learning_rate=5e-5)`` above ``@dataclass``
    changes the defaults of those inherited fields for this class (and its subclasses) only;
    their type, range (metadata) and help (found by :func:`field_docs` in the group that
    declares them) stay the group's. An option the class does not have, or declares itself
    (give its default there), is refused with :class:`TypeError` when the class is defined.
    """
    def apply(cls: type) -> type:
        fields = cls.__dict__.get("__dataclass_fields__")
        if fields is None:
            raise TypeError(f"{cls.__name__}: put @stage_defaults above @dataclass")
        unknown = sorted(set(defaults) - set(fields))
        if unknown:
            raise TypeError(f"{cls.__name__}: @stage_defaults for option(s) it does not have: "
                            f"{', '.join(unknown)}")
        own = sorted(set(defaults) & set(cls.__dict__.get("__annotations__", {})))
        if own:
            raise TypeError(f"{cls.__name__} declares {', '.join(own)} itself: give the "
                            f"default there, not in @stage_defaults")
        for name, value in defaults.items():
            if fields[name].default_factory is not dataclasses.MISSING:
                raise TypeError(f"{cls.__name__}: {name} has a default factory; "
                                f"@stage_defaults sets plain defaults only")
            changed = copy.copy(fields[name])  # the group's Field is shared: copy, then change
            changed.default = value
            fields[name] = changed
            setattr(cls, name, value)
        # ``__init__`` was written by @dataclass with the old defaults: give it the new ones.
        init = cls.__dict__["__init__"]
        code = init.__code__
        names = code.co_varnames[1:code.co_argcount]  # after self
        if init.__defaults__:
            named = names[len(names) - len(init.__defaults__):]
            init.__defaults__ = tuple(defaults.get(n, d) for n, d in
                                      zip(named, init.__defaults__))
        if init.__kwdefaults__:
            init.__kwdefaults__ = {n: defaults.get(n, d) for n, d in init.__kwdefaults__.items()}
        return cls

    return apply


@functools.cache
def only(group: type, *names: str) -> type:
    """The options ``names`` of the option group ``group``, as a group of their own.

    A stage that uses some options of a group composes ``only(Group, "a", "b")`` in place of
    ``Group``, so it shows no option it never reads while every option stays declared once:
    the fields (type, default, range) and their help are the group's. The result is a plain
    dataclass, one class deep, with the fields in the order given.
    """
    if not dataclasses.is_dataclass(group):
        raise TypeError(f"only(): {group!r} is not an option group (a dataclass)")
    fields = {f.name: f for f in dataclasses.fields(group)}
    unknown = [n for n in names if n not in fields]
    if unknown or not names or len(set(names)) != len(names):
        raise TypeError(f"only({group.__name__}, ...): give distinct options of the group; "
                        f"unknown: {', '.join(unknown) or '-'}; it has {', '.join(fields)}")
    hints = typing.get_type_hints(group)
    docs = field_docs(group)
    namespace: dict[str, Any] = {
        "__module__": group.__module__,
        "__qualname__": f"{group.__qualname__}[{','.join(names)}]",
        "__doc__": f"{group.__name__}: {', '.join(names)}.",
        "__annotations__": {n: hints[n] for n in names},
        "__field_docs__": {n: docs[n] for n in names if n in docs},
    }
    for n in names:
        f = fields[n]
        namespace[n] = dataclasses.field(default=f.default, default_factory=f.default_factory,
                                         init=f.init, repr=f.repr, hash=f.hash,
                                         compare=f.compare, metadata=f.metadata,
                                         kw_only=f.kw_only)
    part = type(f"{group.__name__}[{','.join(names)}]", (), namespace)
    return dataclasses.dataclass(part)


def validate(config: Any) -> Any:
    """Check every field against its choices (``Literal`` types) and bounds, then ``check()``.

    A field's bounds are those of its metadata (:func:`bounds`). A config class may define
    ``check(self)`` for rules that tie options together; it raises :class:`ConfigError` too.

    Returns:
        ``config``, unchanged.

    Raises:
        ConfigError: naming the option, the value and what it may be.
    """
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        base, optional = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        if value is None and optional:
            continue
        if typing.get_origin(base) is typing.Literal and value not in typing.get_args(base):
            choices = ", ".join(repr(a) for a in typing.get_args(base))
            raise ConfigError(f"{flag} must be one of {choices}, got {value!r}")
        rng = f.metadata.get("bounds")
        if rng is not None and isinstance(value, int | float) and not isinstance(value, bool):
            low, high, low_in, high_in = rng
            too_low = low is not None and (value < low or (value == low and not low_in))
            too_high = high is not None and (value > high or (value == high and not high_in))
            if too_low or too_high or value != value:  # NaN is never in range
                raise ConfigError(f"{flag} must be {_range_text(rng)}, got {value!r}")
    check = getattr(config, "check", None)
    if callable(check):
        check()
    return config


def _range_text(bounds: tuple[float | None, float | None, bool, bool]) -> str:
    low, high, low_in, high_in = bounds
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_in else '>'} {low:g}")
    if high is not None:
        parts.append(f"{'<=' if high_in else '<'} {high:g}")
    return " and ".join(parts)


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


def add_arguments(parser: argparse.ArgumentParser, cls: type,
                  defaults: dict[str, Any] | None = None,
                  hide: Sequence[str] = ()) -> None:
    """Add ``--config`` and one ``--flag`` per field of ``cls`` to ``parser``.

    Args:
        parser: The command's parser.
        cls: Its config class.
        defaults: Defaults to show instead of the fields' own (a command's, e.g. one RL
            algorithm's).
        hide: Fields the command fixes or does not read: no flag.
    """
    parser.add_argument("--config", metavar="FILE", help="YAML file with any of the keys below")
    for name in getattr(cls, "retired", {}):  # a flag that is gone: refused by from_dict
        parser.add_argument("--" + name.replace("_", "-"), dest=f"_retired_{name}",
                            default=None, help=argparse.SUPPRESS)
    docs = field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in hide:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        default = (defaults or {}).get(f.name, default)
        rng = f.metadata.get("bounds")
        limits = f"; {_range_text(rng)}" if rng else ""
        help_text = f"{docs.get(f.name, '')} [default: {default!r}{limits}]"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings
        base, _ = _base_type(hints[f.name])
        if base is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                help=help_text,
            )
        elif typing.get_origin(base) is typing.Literal:
            parser.add_argument(flag, dest=f.name, default=None,
                                choices=[str(a) for a in typing.get_args(base)], help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=_metavar(f.name, base),
                                help=help_text)


def _metavar(name: str, base: Any) -> str:
    """What a flag takes, for --help: INT, FLOAT, N,N,..., a path or spec, or TEXT."""
    if base is int:
        return "INT"
    if base is float:
        return "FLOAT"
    if typing.get_origin(base) in (list, dict):
        return "A,B,..."
    if name in ("model", "reference", "sft_model") or name.endswith(("_model", "_dir")):
        return "PATH"
    if name in ("data", "eval_data", "ptx_data", "preferences", "rankings"):
        return "SPEC"
    return "TEXT"


def from_args(cls: type, args: argparse.Namespace, fixed: dict[str, Any] | None = None) -> Any:
    """Resolve a config: dataclass defaults, then the ``--config`` file, then flags.

    ``fixed`` are values the command itself sets (``rlhfkit grpo`` sets ``algo``); a file that
    sets one of them to something else is refused.
    """
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
        source = args.config
    else:
        source = "config"
    for key, value in (fixed or {}).items():
        if key in values and values[key] != value:
            raise ConfigError(f"{source}: {key}: {values[key]!r} does not go with this "
                              f"command, which is {key} {value!r} (use rlhfkit rl --{key} "
                              f"{values[key]} instead)")
        values[key] = value
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    for name in getattr(cls, "retired", {}):
        if getattr(args, f"_retired_{name}", None) is not None:
            values[name] = getattr(args, f"_retired_{name}")
            source = "config"  # named by its flag
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
