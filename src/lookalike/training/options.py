"""Options as data: a spec dataclass field carries its help text, its choices and the methods it applies to.

`lookalike train` builds its options from these fields (`cli/train.py`), and the spec validates
its choices itself, so an option's default, help and allowed values are written once, beside
the field. Standard library only: `lookalike --help` imports this module.

    @dataclass(frozen=True)
    class MySpec(MethodSpec):
        dim: int = option(128, "embedding size")
        loss: str = option("ntxent", "the loss", choices=("ntxent", "triplet"))
        margin: float = option(0.2, "triplet margin", methods=("my-triplet",))
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, Field, dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """What a field means to a user."""

    help: str
    choices: tuple[str, ...] | None = None
    #: the methods (registry names) whose `lookalike train METHOD` offers it; None: every method of the spec
    methods: tuple[str, ...] | None = None
    #: False: set by the program (a method's preset, or a positional argument), not a command-line option
    cli: bool = True

    def applies_to(self, method: str) -> bool:
        return self.cli and (self.methods is None or method in self.methods)


def option(
    default: Any = MISSING,
    help: str = "",  # noqa: A002 (argparse's word)
    *,
    choices: tuple[str, ...] | None = None,
    methods: tuple[str, ...] | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with its `Option` in the field metadata."""
    return dataclasses.field(
        default=default, metadata={"option": Option(help, tuple(choices) if choices else None, methods, cli)}
    )


def option_of(f: Field) -> Option | None:
    return f.metadata.get("option")


def options_of(cls: type) -> list[tuple[Field, Option]]:
    """The fields of dataclass `cls` that are options, in declaration order."""
    return [(f, opt) for f in dataclasses.fields(cls) if (opt := option_of(f)) is not None]


def flag(name: str) -> str:
    """The command-line spelling of a field: `backbone_lr_scale` -> `--backbone-lr-scale`."""
    return "--" + name.replace("_", "-")


def check_choices(instance: object) -> None:
    """ValueError for a field whose value is not one of its choices."""
    for f, opt in options_of(type(instance)):
        value = getattr(instance, f.name)
        if opt.choices is not None and value not in opt.choices:
            raise ValueError(f"{f.name.replace('_', ' ')} must be one of {', '.join(opt.choices)} (not {value!r})")


class MethodSpec:
    """Base of every method's spec dataclass: everything that defines the trained network and how it trains.

    A spec is frozen and JSON-able (`dataclasses.asdict` goes into model.json and the checkpoint's
    fingerprint), validates its choices on construction, and says which network it trains.
    """

    dim: int  # the embedding size

    def __post_init__(self) -> None:
        check_choices(self)

    def architecture(self) -> dict[str, object]:
        """What `lookalike.embedders.networks.build_module` needs to rebuild the inference network."""
        raise NotImplementedError
