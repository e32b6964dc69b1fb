"""Every option a command shows in ``--help`` is read by that command's code.

A field that its stage ignores is a flag that does nothing (the RL stages used to show
``--grad-accum`` and ``--log-every``). The check follows each command's config object through
the code, as a reader would: from the command's run function, through every call it is passed
to (by position or keyword, into functions, methods and constructors, across modules), and
through the attributes it is stored in (``self.cfg = cfg``), collecting the fields read off it
(``cfg.name``, ``getattr(cfg, "name")``). Reads by the generic option machinery
(``rlhfkit.config``: parsing, YAML, printing) do not count: they touch every field.

It also checks that config inheritance is at most three classes deep.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from functools import cache

import pytest

from rlhfkit.cli.main import COMMANDS, hidden_options
from rlhfkit.train.algorithms import ALGORITHMS


@cache
def module_ast(name: str) -> tuple[ast.Module, dict[str, tuple[str, str]], dict[str, str]]:
    """(tree, imported names -> (module, name), module aliases -> module) of an rlhfkit module."""
    module = importlib.import_module(name)
    tree = ast.parse(inspect.getsource(module))
    names: dict[str, tuple[str, str]] = {}
    aliases: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhfkit"):
            for a in node.names:
                target = f"{node.module}.{a.name}"
                if _is_module(target):
                    aliases[a.asname or a.name] = target
                else:
                    names[a.asname or a.name] = (node.module, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("rlhfkit"):
                    aliases[a.asname or a.name] = a.name
    return tree, names, aliases


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


def _top(module: str, name: str) -> ast.AST | None:
    tree, names, _ = module_ast(module)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            return node
    if name in names:  # re-exported
        return _top(*names[name])
    return None


def _class_chain(module: str, cls: ast.ClassDef) -> list[tuple[str, ast.ClassDef]]:
    """The class and its rlhfkit base classes, nearest first."""
    out = [(module, cls)]
    _, names, _ = module_ast(module)
    for base in cls.bases:
        if isinstance(base, ast.Name):
            where = names.get(base.id, (module, base.id))
            node = _top(*where)
            if isinstance(node, ast.ClassDef):
                out += _class_chain(where[0], node)
    return out


def _method(module: str, cls: ast.ClassDef, name: str) -> tuple[str, ast.FunctionDef] | None:
    for mod, klass in _class_chain(module, cls):
        for node in klass.body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                return mod, node
    return None


Path = tuple[str, ...]
"""Where the config sits from a name: ``()`` the name is the config, ``("cfg",)`` it holds the
config in its ``cfg`` attribute (a ``Run``), ``("run", "cfg")`` in ``.run.cfg``, ..."""


def _chain(node: ast.AST) -> tuple[str, tuple[str, ...]] | None:
    """``a.b.c`` -> ``("a", ("b", "c"))``; None for anything else."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, tuple(reversed(attrs))
    return None


class Reads:
    """Follows one config object; ``fields`` collects what is read off it."""

    def __init__(self) -> None:
        self.fields: set[str] = set()
        self.seen: set[tuple] = set()
        self.holds: dict[tuple[str, str], set[Path]] = {}
        """(module, class) -> the paths from ``self`` to the config, once seen."""

    # ------------------------------------------------------------------ values
    @staticmethod
    def rest(node: ast.AST, names: dict[str, set[Path]]) -> set[Path]:
        """The paths to the config from the value of ``node`` (empty: not a tracked value)."""
        chain = _chain(node)
        if chain is None or chain[0] not in names:
            return set()
        root, attrs = chain
        return {path[len(attrs):] for path in names[root] if path[:len(attrs)] == attrs}

    # ------------------------------------------------------------------ walking
    def function(self, module: str, fn: ast.FunctionDef, names: dict[str, set[Path]],
                 cls: tuple[str, ast.ClassDef] | None = None) -> None:
        key = (module, cls[1].name if cls else "", getattr(fn, "name", f"lambda@{fn.lineno}"),
               tuple(sorted((k, tuple(sorted(v))) for k, v in names.items())))
        if key in self.seen or module.startswith("rlhfkit.config"):
            return
        self.seen.add(key)
        names = {k: set(v) for k, v in names.items()}
        outer_calls = getattr(self, "local_calls", {})
        self.local_calls = {}  # name -> the callables it may be bound to (f = a if c else b)
        for sub in ast.walk(fn):
            if isinstance(sub, ast.Assign) and len(sub.targets) == 1 \
                    and isinstance(sub.targets[0], ast.Name):
                value = sub.value
                options = [value.body, value.orelse] if isinstance(value, ast.IfExp) else [value]
                if all(isinstance(o, ast.Name) for o in options):
                    self.local_calls[sub.targets[0].id] = options
        for _ in range(2):  # aliases may be made from aliases made further down
            for sub in ast.walk(fn):
                if isinstance(sub, ast.Assign):
                    self.assign(module, sub, names, cls)
        for sub in ast.walk(fn):
            if isinstance(sub, ast.Attribute):
                chain = _chain(sub)
                if chain and chain[0] in names:
                    for path in names[chain[0]]:
                        attrs = chain[1]
                        if len(attrs) > len(path) and attrs[:len(path)] == path:
                            self.fields.add(attrs[len(path)])
            if isinstance(sub, ast.Call):
                self.call(module, sub, names, cls)
        self.local_calls = outer_calls

    def assign(self, module: str, node: ast.Assign, names: dict[str, set[Path]],
               cls: tuple[str, ast.ClassDef] | None) -> None:
        if isinstance(node.value, ast.Tuple):  # a, b = x, y: element by element
            for t in node.targets:
                if isinstance(t, ast.Tuple) and len(t.elts) == len(node.value.elts):
                    for el, value in zip(t.elts, node.value.elts):
                        self.assign(module, ast.Assign(targets=[el], value=value), names, cls)
            return
        paths = self.rest(node.value, names)
        if not paths and isinstance(node.value, ast.Call):  # x = Holder(cfg, ...)
            target = self.resolve(module, node.value.func, cls)
            if target is not None and target[2] is not None and target[2] is not cls:
                self.call(module, node.value, names, cls)
                paths = self.holds.get((target[2][0], target[2][1].name), set())
        if not paths:
            return
        for t in node.targets:
            for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if isinstance(el, ast.Name):
                    names.setdefault(el.id, set()).update(paths)
                elif (isinstance(el, ast.Attribute) and isinstance(el.value, ast.Name)
                      and el.value.id == "self" and cls is not None):
                    self.hold(cls, {(el.attr, *p) for p in paths})
                    names.setdefault("self", set()).update((el.attr, *p) for p in paths)

    def hold(self, cls: tuple[str, ast.ClassDef], paths: set[Path]) -> None:
        """Instances of ``cls`` hold the config at ``paths``: follow every method."""
        key = (cls[0], cls[1].name)
        known = self.holds.setdefault(key, set())
        if paths <= known:
            return
        known.update(paths)
        for mod, klass in _class_chain(*cls):
            for node in klass.body:
                if isinstance(node, ast.FunctionDef) and node.name != "__init__":
                    self.function(mod, node, {"self": set(known)}, cls)

    def call(self, module: str, call: ast.Call, names: dict[str, set[Path]],
             cls: tuple[str, ast.ClassDef] | None) -> None:
        func = call.func
        if isinstance(func, ast.Name) and func.id == "getattr" and len(call.args) > 1 \
                and isinstance(call.args[1], ast.Constant) and () in self.rest(call.args[0], names):
            self.fields.add(call.args[1].value)
            return
        passed = [(i, None, self.rest(a, names)) for i, a in enumerate(call.args)]
        passed += [(None, k.arg, self.rest(k.value, names)) for k in call.keywords if k.arg]
        passed = [p for p in passed if p[2]]
        if not passed:
            return
        for i, arg in enumerate(call.args):  # run(fn, *args): a runner calls fn with what follows
            if isinstance(arg, ast.Name) and not self.rest(arg, names):
                target = self.resolve(module, arg, cls)
                if target is not None and target[2] is None:
                    self.call(module, ast.Call(func=arg, args=call.args[i + 1:],
                                               keywords=call.keywords), names, cls)
        if isinstance(func, ast.Name) and func.id in self.local_calls:
            for option in self.local_calls[func.id]:
                self.call(module, ast.Call(func=option, args=call.args, keywords=call.keywords),
                          names, cls)
            return
        if isinstance(func, ast.Subscript) and isinstance(func.value, ast.Name):
            for value in _table(module, func.value.id):  # TABLE[key](cfg, ...): every entry
                if isinstance(value, ast.Lambda):
                    self.enter(module, value, 0, None, passed)
                else:
                    self.call(module, ast.Call(func=value, args=call.args,
                                               keywords=call.keywords), names, cls)
            return
        target = self.resolve(module, func, cls)
        if target is None:
            return
        mod, node, owner, offset = target
        if owner is not None and offset == 1 and "self" in names and owner is cls:
            passed = passed + [(None, "self", names["self"])]
        self.enter(mod, node, offset, owner, passed)

    def enter(self, mod: str, node: ast.AST, offset: int, owner, passed) -> None:
        """Follow the tracked arguments ``passed`` into the callee ``node``."""
        params = [a.arg for a in node.args.posonlyargs + node.args.args][offset:]
        given: dict[str, set[Path]] = {}
        for index, keyword, paths in passed:
            name = keyword if keyword is not None else (
                params[index] if index < len(params) else None)
            if name is not None:
                given.setdefault(name, set()).update(paths)
        self.function(mod, node, given, owner)

    def resolve(self, module: str, func: ast.AST, cls: tuple[str, ast.ClassDef] | None):
        """(module, function node, owning class or None, bound-argument offset) of a callee."""
        _, names, aliases = module_ast(module)
        if isinstance(func, ast.Name):
            where = names.get(func.id, (module, func.id))
            node = _top(*where)
        elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
              and func.value.id == "self" and cls is not None):
            found = _method(cls[0], cls[1], func.attr)
            return (found[0], found[1], cls, 1) if found else None
        elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
              and func.value.id in aliases):
            where = (aliases[func.value.id], func.attr)
            node = _top(*where)
        else:
            return None
        if isinstance(node, ast.FunctionDef):
            return where[0], node, None, 0
        if isinstance(node, ast.ClassDef):
            init = _method(where[0], node, "__init__")
            return (init[0], init[1], (where[0], node), 1) if init else None
        return None


def _table(module: str, name: str) -> list[ast.AST]:
    """The values of a module-level dict literal ``NAME = {...}`` (empty for anything else)."""
    tree, _, _ = module_ast(module)
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) \
                and isinstance(node.value, ast.Dict):
            return list(node.value.values)
    return []


def algorithms_of(command) -> list:
    """The registry entries an RL command can run: its own, or all of them for ``rl``."""
    if "algo" in command.fixed:
        return [ALGORITHMS[command.fixed["algo"]]]
    return list(ALGORITHMS.values()) if command.run.endswith(":train_rl") else []


class Recorder:
    """Stands in for a config and records the options read off it (an entry's ``value``)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getattr__(self, name: str):
        self.names.add(name)
        return None


def fields_read(command) -> set[str]:
    """What the run function reads, and for an RL command what its algorithms read.

    ``train_rl`` runs an algorithm through its registry entry: its estimator and policy loss
    get the config as ``batch.cfg`` / ``update.cfg``, its run class (``algo.run_type()``) and
    its ``value`` function get it directly. Those are followed as given.
    """
    reads = Reads()
    module, _, fn_name = command.run.partition(":")
    fn = _top(module, fn_name)
    names = {fn.args.args[0].arg: {()}}
    algorithms = algorithms_of(command)
    if algorithms:  # train_rl's ``run`` is made by the entry's run class: it holds run.cfg
        names["run"] = {("cfg",)}
    reads.function(module, fn, names)
    for algo in algorithms:
        for f in (algo.advantage_fn(), algo.loss_fn()):
            node = _top(f.__module__, f.__name__)
            reads.function(f.__module__, node, {node.args.args[0].arg: {("cfg",)}})
        run_cls = algo.run_type()
        cls_node = _top(run_cls.__module__, run_cls.__name__)
        for mod, klass in _class_chain(run_cls.__module__, cls_node):  # super().__init__ too
            init = next((n for n in klass.body if isinstance(n, ast.FunctionDef)
                         and n.name == "__init__"), None)
            if init is not None:
                reads.function(mod, init, {"cfg": {()}}, (run_cls.__module__, cls_node))
        reads.hold((run_cls.__module__, cls_node), {("cfg",)})  # its methods read self.cfg
        recorder = Recorder()
        algo.value(recorder)
        reads.fields |= recorder.names
    return reads.fields


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_option_of_a_command_is_read_by_it(command):
    cls = command.load("config")
    shown = {f.name for f in dataclasses.fields(cls)} - set(hidden_options(command))
    unread = sorted(shown - fields_read(command))
    assert not unread, (f"rlhfkit {command.name} shows options its code never reads: "
                        f"{', '.join(unread)}")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_config_inheritance_is_at_most_three_deep(command):
    def depth(cls: type) -> int:
        bases = [b for b in cls.__bases__ if b is not object]
        return 1 + max((depth(b) for b in bases), default=0)

    assert depth(command.load("config")) <= 3
