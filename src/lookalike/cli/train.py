"""`lookalike train METHOD FOLDER [options]`: train an embedder on your own images and save it in the collection.

The command is generated from the training method registry (`lookalike.training.methods`): one
sub-command per method, whose options are that method's spec fields, after the options every
method shares (the fields of `TrainingRun` and `SplitRule`). Defaults, help texts and choices are
read from the fields' metadata, so they are written once, in the library. An option that is not
given is not passed on, and the method's own default applies. Building this parser imports no
PyTorch: the method modules are torch-free, the training code loads only in `run`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import add_collection_option, print_json, progress_bars

if TYPE_CHECKING:
    from ..training.methods import Method
    from ..training.options import Option
    from ..training.run import TrainingRun

_TYPES = {"int": int, "float": float, "str": str}
#: TrainingRun fields whose default is the method's (`training.methods.Defaults`)
_PER_METHOD = ("name", "epochs", "lr", "schedule")


def register(commands: argparse._SubParsersAction) -> None:
    from ..training.methods import all_methods
    from ..training.options import options_of
    from ..training.run import TrainingRun
    from ..training.split import SplitRule

    methods = all_methods()
    parser = commands.add_parser(
        "train",
        help=f"train an embedder ({', '.join(m.name for m in methods)}) on a folder (sub-folder = label)",
        description="Train an embedder on FOLDER and save it in the collection under NAME; then use it like "
        "a pretrained one (index/search/evaluate --embedder NAME). An interrupted run resumes when the same "
        "command is run again. `lookalike train METHOD -h` lists a method's options.",
    )
    subs = parser.add_subparsers(dest="method", required=True, metavar="METHOD", title="methods")
    for method in methods:
        sub = subs.add_parser(
            method.name,
            help=method.help,
            description=f"{method.name}: {method.help}. Saves the embedder in the collection under --name.",
        )
        sub.add_argument("folder", type=Path, help="the images (sub-folder = label)")
        add_collection_option(sub)
        shared = sub.add_argument_group("every method")
        for f, opt in options_of(TrainingRun):
            if opt.cli:
                shown = _per_variant(method, f.name, f.default) if f.name in _PER_METHOD else None
                _add(shared, f, opt, f"run:{f.name}", shown)
        for f, opt in options_of(SplitRule):
            if opt.cli:
                _add(shared, f, opt, f"split:{f.name}")
        shared.add_argument("--json", action="store_true", help="print the saved model description as JSON")
        own = sub.add_argument_group(f"{method.name}")
        for f, opt in method.options():
            _add(own, f, opt, f"spec:{f.name}", _per_variant(method, f.name, f.default))
        sub.set_defaults(run=run)


def _add(group: Any, f: dataclasses.Field, opt: Option, dest: str, shown: str | None = None) -> None:
    """One option from one field: given or absent (argparse.SUPPRESS), never a copied default."""
    default = f.default
    if shown is None:
        shown = _show(default)
    help_text = f"{opt.help} (default: {shown})" if shown is not None else opt.help
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
    if isinstance(default, bool):
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = _TYPES[str(f.type).split("|")[0].strip()] if default is None else type(default)
        if opt.choices:
            kwargs["choices"] = opt.choices
        else:
            kwargs["metavar"] = f.name.upper()
    group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def _per_variant(method: Method, key: str, fallback: object) -> str | None:
    """A default as `--help` states it: "4", or "4 with --backbone finetune, 20 with frozen, ..."."""
    values = method.defaults_of(key, fallback)
    shown = {variant: _show(value) for variant, value in values.items()}
    distinct = list(dict.fromkeys(shown.values()))
    if len(distinct) <= 1:
        return distinct[0] if distinct else None
    flag = "--" + str(method.defaults_by).replace("_", "-")
    return ", ".join(f"{v} with {flag} {variant}" for variant, v in shown.items())


def _show(value: object) -> str | None:
    if isinstance(value, bool):
        return "on" if value else "off"
    return None if value is None or value is dataclasses.MISSING else str(value)


def _given(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    return {k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith(prefix + ":")}


def request_of(args: argparse.Namespace) -> TrainingRun:
    """The `TrainingRun` these arguments ask for (only the options that were given; the rest default)."""
    from ..training.run import TrainingRun
    from ..training.split import SplitRule

    return TrainingRun(
        method=args.method,
        folder=args.folder,
        split=SplitRule(**_given(args, "split")),
        spec=_given(args, "spec"),
        **_given(args, "run"),
    )


def run(args: argparse.Namespace) -> int:
    from ..collection import Collection
    from ..training import train

    request = request_of(args)
    with (
        Collection.open(args.collection) as collection,
        progress_bars(not args.json, units={"epoch ": "batch"}) as bars,
    ):
        on_epoch = lambda record: bars.close_finished()  # noqa: E731 (the epoch's bar ends with its validation)
        info = train(collection, request, progress=bars, figures=bars.figures, on_epoch=on_epoch).info
    if args.json:
        print_json(info)
        return 0
    counts = info["split"]["counts"]
    print(
        f"trained {info['name']} ({info['method']}, {info['dim']} dims): best epoch {info['best_epoch']} of "
        f"{info['epochs_run']}, validation {info['monitor']} {info['best_score']:.4f}; "
        f"{info['training_seconds']:.0f} s (feature cache {info['cache_seconds']:.0f} s)"
    )
    whitening = info.get("whitening")
    if whitening:
        before, after = whitening["validation_before"][info["monitor"]], whitening["validation_after"][info["monitor"]]
        verdict = "kept" if whitening["kept"] else "dropped: it lowered validation"
        print(
            f"learned whitening: validation {info['monitor']} {before:.4f} -> {after:.4f}, {verdict}"
            f" ({whitening['seconds']:.0f} s)"
        )
    print(f"split: {counts['train']} train, {counts['val']} validation, {counts['test']} held out for evaluation")
    print(f"use it: lookalike evaluate {args.folder} --embedders efficientnet-lite0,{info['name']}")
    return 0


__all__ = ["register", "request_of", "run"]
