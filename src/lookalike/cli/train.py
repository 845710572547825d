"""`lookalike train METHOD FOLDER`: train an embedder on your own images and save it in the collection."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_collection_option, print_json, progress_bars

# Until the training methods register their own options: kept equal to training.loop.SCHEDULES and
# embedders.weights.EFFICIENTNET_LITE_SIZES (importing those here would import PyTorch for `--help`).
SCHEDULES = ("constant", "cosine")
EFFICIENTNET_LITES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train an embedder (autoencoder, siamese, triplet) on a folder (sub-folder = label)",
        description="Train an embedder on FOLDER and save it in the collection under NAME; then use it like "
        "a pretrained one (index/search/evaluate --embedder NAME). An interrupted run resumes when the same "
        "command is run again.",
    )
    parser.add_argument("method", choices=["autoencoder", "siamese", "triplet"])
    parser.add_argument("folder", type=Path)
    add_collection_option(parser)
    parser.add_argument(
        "--name", help="embedder name (default: the method; autoencoder-compact for --variant features)"
    )
    parser.add_argument("--epochs", type=int, help="maximum epochs (default depends on the method)")
    parser.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same model (default 0)")
    parser.add_argument("--lr", type=float, help="learning rate of the new layers (default 1e-3)")
    parser.add_argument("--patience", type=int, default=3, help="stop after N epochs without a better val MAP@R")
    parser.add_argument(
        "--schedule", choices=SCHEDULES, help="learning-rate schedule (default: cosine when fine-tuning, else constant)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dim", type=int, help="embedding size (default 128; pixel autoencoder 256)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of images for early stopping")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of images held out for evaluation")
    parser.add_argument("--restart", action="store_true", help="discard a checkpoint or a trained model of that name")
    parser.add_argument("--json", action="store_true", help="print the saved model description as JSON")

    metric = parser.add_argument_group("siamese and triplet")
    metric.add_argument(
        "--backbone",
        choices=["frozen", "finetune", "scratch"],
        default="finetune",
        help="pretrained EfficientNet-Lite (--backbone-model) frozen or fine-tuned, or a small CNN from scratch",
    )
    metric.add_argument(
        "--backbone-model",
        choices=EFFICIENTNET_LITES,
        default="efficientnet-lite2",
        help="pretrained network for frozen/finetune (default efficientnet-lite2; lite0: 2x faster, less accurate)",
    )
    metric.add_argument("--trainable-blocks", type=int, default=2, help="MBConv blocks fine-tuned (default 2)")
    metric.add_argument(
        "--mining",
        choices=["random", "hard"],
        default="hard",
        help="siamese pair selection: random pairs, or hard negatives (BatchHardMiner)",
    )
    metric.add_argument("--margin", type=float, default=0.2, help="triplet margin (default 0.2)")
    metric.add_argument("--views", type=int, default=3, help="cached views per image: clean + augmented (default 3)")
    metric.add_argument("--no-augment", action="store_true", help="train on the clean images only")
    metric.add_argument(
        "--no-flip-average",
        action="store_true",
        help="embed each image once; by default the image and its mirror image are embedded and averaged "
        "(slightly better neighbours, half the embedding throughput)",
    )
    metric.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=0.02,
        help="finetune: learning rate of the pretrained blocks relative to the head's (default 0.02)",
    )
    metric.add_argument(
        "--head-warmup-epochs",
        type=int,
        default=1,
        help="finetune: epochs that train only the new head before the backbone blocks move (default 1)",
    )

    ae = parser.add_argument_group("autoencoder")
    ae.add_argument(
        "--variant",
        choices=["pixels", "features"],
        default="pixels",
        help="pixels: convolutional autoencoder; features: compact code of pretrained features",
    )
    ae.add_argument("--noise", choices=["none", "mask", "gaussian"], default="none", help="denoising corruption")
    ae.add_argument("--noise-level", type=float, default=0.25, help="masked share, or Gaussian sigma")
    ae.add_argument("--augment", action="store_true", help="pixels: random crops and flips")
    parser.set_defaults(run=run)


def spec_options(args: argparse.Namespace) -> dict[str, object]:
    options: dict[str, object] = {"batch_size": args.batch_size}
    if args.dim is not None:
        options["dim"] = args.dim
    if args.method == "autoencoder":
        options.update(variant=args.variant, noise=args.noise, noise_level=args.noise_level, augment=args.augment)
    else:
        options.update(
            backbone=args.backbone,
            backbone_model=args.backbone_model,
            trainable_blocks=args.trainable_blocks,
            mining=args.mining,
            margin=args.margin,
            views=args.views,
            augment=not args.no_augment,
            flip_average=not args.no_flip_average,
            head_warmup_epochs=args.head_warmup_epochs,
            backbone_lr_scale=args.backbone_lr_scale,
        )
    return options


def run(args: argparse.Namespace) -> int:
    from ..collection import Collection
    from ..training import TrainingRun, train
    from ..training.split import SplitRule

    request = TrainingRun(
        method=args.method,
        folder=args.folder,
        name=args.name,
        epochs=args.epochs,
        lr=args.lr,
        patience=args.patience,
        schedule=args.schedule,
        seed=args.seed,
        split=SplitRule(test_fraction=args.test_fraction, val_fraction=args.val_fraction),
        spec=spec_options(args),
        restart=args.restart,
    )
    with Collection.open(args.collection) as collection, progress_bars(not args.json) as progress:
        info = train(collection, request, progress=progress, bars=not args.json).info
    if args.json:
        print_json(info)
        return 0
    counts = info["split"]["counts"]
    print(
        f"trained {info['name']} ({info['method']}, {info['dim']} dims): best epoch {info['best_epoch']} of "
        f"{info['epochs_run']}, validation {info['monitor']} {info['best_score']:.4f}; "
        f"{info['training_seconds']:.0f} s (feature cache {info['cache_seconds']:.0f} s)"
    )
    print(f"split: {counts['train']} train, {counts['val']} validation, {counts['test']} held out for evaluation")
    print(f"use it: lookalike evaluate {args.folder} --embedders efficientnet-lite0,{info['name']}")
    return 0
