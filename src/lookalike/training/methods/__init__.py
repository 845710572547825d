"""The training method registry: one entry per method, with its spec, its task and its defaults.

A method is declared by a module in this package, which registers itself when imported:

    @dataclass(frozen=True)
    class SimCLRSpec(MethodSpec):              # the options of `lookalike train simclr`
        dim: int = option(128, "embedding size")
        temperature: float = option(0.1, "NT-Xent temperature")
        def architecture(self): ...            # the network, as embedders.networks.build_module reads it

    class SimCLRTask(Task):                    # training.task.Task: network, batches, loss, validation
        def __init__(self, spec, prepared):
            import torch                       # heavy imports inside the task, never at the top
            ...

    register(Method(
        "simclr", "self-supervised contrastive learning on augmented views", SimCLRSpec,
        task="lookalike.training.methods.simclr:SimCLRTask",    # (spec, prepared) -> Task, imported when training
        defaults={"": Defaults(epochs=20)},
    ))

Nothing else changes: `lookalike train simclr FOLDER` gets its options from the spec's fields,
`training.train` finds the entry by name. Every module here is imported to build
`lookalike --help`, so it must not import PyTorch (or numpy) at the top; `training.task.Task` and
`training.options` are free of both. The task is named by "module:attribute" and imported only
when training runs; it may live in the method's module, as above, or in a module of its own, as
the built-in methods' tasks do (`training/autoencoder.py`, `training/metric_learning.py`).
Modules whose name starts with "_" are not imported automatically.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..options import MethodSpec, Option, flag, option_of, options_of


@dataclass(frozen=True)
class Defaults:
    """A method's defaults for one value of its `defaults_by` spec field (for example one backbone)."""

    epochs: int
    lr: float = 1e-3
    schedule: str = "constant"
    name: str | None = None  # the embedder's default name; None: the method's name
    spec: Mapping[str, object] = field(default_factory=dict)  # spec fields whose default differs here


@dataclass(frozen=True)
class Method:
    """One training method: `lookalike train NAME` and `TrainingRun(method=NAME)`."""

    name: str
    help: str
    spec: type[MethodSpec]
    #: "module:attribute" of a callable (spec, prepared) -> Task (a Task class), imported when training runs;
    #: or the callable itself
    task: str | Callable[..., Any]
    #: loop defaults (and default name) by the value of spec field `defaults_by`; one entry "" if they never vary
    defaults: Mapping[str, Defaults]
    defaults_by: str | None = None
    #: spec fields the method fixes (two methods sharing one spec class); never options
    preset: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(self.spec)}
        if self.defaults_by is not None and self.defaults_by not in names:
            raise ValueError(f"{self.name}: defaults_by {self.defaults_by!r} is not a field of {self.spec.__name__}")
        if self.defaults_by is None and set(self.defaults) != {""}:
            raise ValueError(f"{self.name}: defaults without defaults_by need exactly one entry, keyed ''")
        for d in self.defaults.values():
            if unknown := set(d.spec) - names:
                raise ValueError(f"{self.name}: defaults for unknown spec fields {sorted(unknown)}")

    def options(self) -> list[tuple[dataclasses.Field, Option]]:
        """The spec fields that are options of this method."""
        return [(f, opt) for f, opt in options_of(self.spec) if opt.applies_to(self.name)]

    def variant(self, spec: MethodSpec) -> str:
        """The key of `defaults` this spec falls under."""
        return "" if self.defaults_by is None else str(getattr(spec, self.defaults_by))

    def make_spec(self, options: Mapping[str, object]) -> MethodSpec:
        """The spec of these options (field name -> value), with the method's preset and defaults."""
        allowed = {f.name for f, _ in self.options()}
        if unknown := [k for k in options if k not in allowed]:
            spelled = ", ".join(flag(k) for k in unknown)
            raise ValueError(f"{spelled}: not an option of {self.name} (its options: `lookalike train {self.name} -h`)")
        spec = self.spec(**self.preset, **options)  # validates the choices, the defaults_by field's included
        variant = self.variant(spec)
        if variant not in self.defaults:
            raise ValueError(f"{self.defaults_by} must be one of {', '.join(self.defaults)}")
        overrides = {k: v for k, v in self.defaults[variant].spec.items() if k not in options}
        return dataclasses.replace(spec, **overrides) if overrides else spec

    def defaults_for(self, spec: MethodSpec) -> Defaults:
        return self.defaults[self.variant(spec)]

    def default_name(self, spec: MethodSpec) -> str:
        return self.defaults_for(spec).name or self.name

    def defaults_of(self, key: str, fallback: object = None) -> dict[str, object]:
        """variant -> the default of `key` (a `Defaults` field, or a spec field with `fallback` as its default)."""
        values: dict[str, object] = {}
        for variant, d in self.defaults.items():
            if key == "name":
                values[variant] = d.name or self.name
            elif key in ("epochs", "lr", "schedule"):
                values[variant] = getattr(d, key)
            else:
                values[variant] = d.spec.get(key, fallback)
        return values

    def load_task(self) -> Callable[..., Any]:
        """The task factory (imports the method's training code, and so PyTorch)."""
        if not isinstance(self.task, str):
            return self.task
        module, _, attribute = self.task.partition(":")
        return getattr(importlib.import_module(module), attribute)


_REGISTRY: dict[str, Method] = {}
_discovered = False


def register(method: Method) -> Method:
    """Add a method (a method module calls this when imported); a name is registered once."""
    if method.name in _REGISTRY and _REGISTRY[method.name] != method:
        raise ValueError(f"a training method called {method.name!r} is already registered")
    for f in dataclasses.fields(method.spec):
        opt = option_of(f)
        if f.name in method.preset and opt is not None and opt.cli:
            raise ValueError(f"{method.name}: preset field {f.name!r} must not be an option (cli=False)")
    _REGISTRY[method.name] = method
    return method


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def all_methods() -> list[Method]:
    """Every registered method, the built-in ones first (in module order)."""
    _discover()
    return list(_REGISTRY.values())


def get(name: str) -> Method:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise ValueError(f"unknown training method {name!r}; choose one of {known}") from None


__all__ = ["Defaults", "Method", "MethodSpec", "all_methods", "get", "register"]
