"""`lookalike index FOLDER`: add new images, re-embed changed ones, drop deleted ones."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_collection_option, print_json, progress_bars


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("index", help="index a folder of images (incremental)")
    parser.add_argument("folder", type=Path)
    add_collection_option(parser)
    parser.add_argument(
        "--embedder", help="embedder name (default: the collection's; a new one's is efficientnet-lite0-gem-ms)"
    )
    parser.add_argument("--weights", type=Path, help="local weights file for a pretrained embedder")
    parser.add_argument(
        "--index",
        dest="index_kind",
        help="index type of a new collection: auto (default), flat, hnsw, hnsw-sq8, ivf, ivf-sq8, ivf-pq, ivf-pq-flat,"
        " milvus://HOST:PORT/NAME (a Milvus server) or milvus-lite:/abs/path.db",
    )
    parser.add_argument(
        "--expand",
        type=int,
        metavar="N",
        help="make the collection's searches expand queries over their top N by default (0: plain cosine ranking; "
        "a new collection: 5); a search's own --expand still decides for it",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="index files reached through symbolic links (not followed by default; links to folders never are)",
    )
    parser.add_argument("--max-file-mb", type=float, default=256.0, help="skip files larger than this (default 256 MB)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--log", type=Path, help="write the full summary (with skipped paths) as JSON here")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..collection import Collection

    if args.expand is not None and args.expand < 0:
        raise ValueError(f"--expand must be 0 or more, not {args.expand}")
    with Collection.open(args.collection, embedder=args.embedder, index=args.index_kind) as collection:
        if args.expand is not None:
            collection.set_default_expand(args.expand)
        if args.weights:
            collection.embedder(args.embedder, weights=args.weights)
        with progress_bars(not args.json) as progress:
            report = collection.sync(
                args.folder,
                embedder=args.embedder,
                batch_size=args.batch_size,
                progress=progress,
                follow_symlinks=args.follow_symlinks,
                max_file_bytes=int(args.max_file_mb * 2**20),
            )
    summary = report.to_dict()
    if args.log:
        args.log.write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print_json(summary)
        return 0
    print(
        f"{report.embedder}: {len(report.added)} added, {len(report.updated)} updated, "
        f"{len(report.removed)} removed, {report.unchanged} unchanged, {len(report.skipped)} skipped"
        + (f", {report.described} given their concepts (top classes)" if report.described else "")
        + f" ({report.seconds:.1f} s"
        + (f", {report.images_per_second:.1f} images/s embedded)" if report.embedded else ")")
    )
    for path, reason in report.skipped[:20]:
        print(f"  skipped {path}: {reason}")
    if len(report.skipped) > 20:
        print(
            f"  ... and {len(report.skipped) - 20} more"
            + (f" (all in {args.log})" if args.log else " (use --log FILE)")
        )
    return 0
