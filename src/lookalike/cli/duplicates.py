"""`lookalike duplicates`: groups of duplicate images, each with the one to keep; move the others, or undo a move."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import TYPE_CHECKING

from .common import add_collection_option, print_json, progress_bars

if TYPE_CHECKING:
    from ..duplicates import DuplicateGroup, DuplicateReport, MoveReport

CSV_COLUMNS = ["group", "tier", "keeper", "reason", "score", "id", "path", "width", "height", "size"]


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "duplicates",
        help="find duplicate images (exact, near: edited copies, similar: other shots); move the extra copies",
        description="Groups of duplicates in the collection, each with a suggested keeper (most pixels, then "
        "largest file, then oldest) and every member's similarity to it. Nothing is ever deleted: --move-to "
        "moves the non-keepers and writes a manifest that --undo restores from.",
    )
    add_collection_option(parser)
    parser.add_argument(
        "--tier",
        choices=["exact", "near", "similar"],
        default="near",
        help="exact: same bytes or pixels; near (default): the same photo after edits; similar: another shot",
    )
    parser.add_argument(
        "--threshold", type=float, help="cosine similarity a pair needs (default: the tier's calibrated one)"
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="near tier: skip the geometric check of pairs scoring a little below the threshold (faster; finds "
        "fewer cropped, rotated or screenshot copies)",
    )
    parser.add_argument("--under", type=Path, help="only images under this folder")
    parser.add_argument("--all", action="store_true", help="also show groups resolved by an earlier decision")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the groups as JSON")
    output.add_argument("--csv", type=Path, metavar="FILE", help="write one row per image of every group to FILE")
    parser.add_argument("--move-to", type=Path, metavar="DIR", help="move every non-keeper into DIR (with a manifest)")
    parser.add_argument("--dry-run", action="store_true", help="with --move-to: show what would move, move nothing")
    parser.add_argument("--undo", type=Path, metavar="MANIFEST", help="put the files of an earlier move back")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..collection import Collection

    if args.dry_run and args.move_to is None:
        raise ValueError("--dry-run goes with --move-to DIR")
    with Collection.open(args.collection, create=False) as collection:
        if args.undo is not None:
            undone = collection.undo_move(args.undo)
            if args.json:
                print_json({"manifest": str(undone.manifest), "restored": undone.restored})
            else:
                print(f"restored {len(undone.restored)} file(s); run `lookalike index` to index them again")
            return 0
        with progress_bars(not args.json, units={"comparing pixels": "pair", "verifying pairs": "pair"}) as progress:
            report = collection.duplicates(
                args.tier,
                threshold=args.threshold,
                under=args.under,
                include_resolved=args.all,
                verify=args.verify,
                progress=progress,
            )
        moved = None
        if args.move_to is not None:
            moved = collection.move_duplicates(report.groups, args.move_to, dry_run=args.dry_run)
    if args.csv is not None:
        write_csv(args.csv, report.groups)
    if args.json:
        print_json({**report.to_dict(), **({"move": moved.to_dict()} if moved is not None else {})})
        return 0
    if args.csv is None:
        print_groups(report)
    print_summary(report)
    if moved is not None:
        print_moves(moved)
    return 0


def write_csv(path: Path, groups: list[DuplicateGroup]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for group in groups:
            for member in group.members:
                keeper = member.id == group.keeper.id
                writer.writerow(
                    [
                        group.key, group.tier, "yes" if keeper else "no", group.reason if keeper else "",
                        f"{member.score:.4f}", member.id, member.path, member.width, member.height, member.size,
                    ]
                )  # fmt: skip


def print_groups(report: DuplicateReport) -> None:
    for group in report.groups:
        print(f"{group.key}: {len(group.members)} images, keep {group.keeper.path} ({group.reason})")
        for member in group.others:
            print(f"  {member.score:.3f}  {member.path}")


def print_summary(r: DuplicateReport) -> None:
    images = sum(len(g.members) for g in r.groups)
    print(
        f"{len(r.groups)} group(s) of {r.tier} duplicates, {images} images "
        f"(threshold {r.threshold:g}, {r.compared} image(s) compared in this run, "
        f"{r.resolved} resolved group(s) hidden, {r.seconds:.1f} s)"
    )
    for path, reason in r.unreadable[:20]:
        print(f"  unreadable, not grouped: {path}: {reason}")
    for path in r.vanished[:20]:
        print(f"  no longer on disk, left out: {path}")


def print_moves(m: MoveReport) -> None:
    verb = "would move" if m.dry_run else "moved"
    for move in m.moves:
        print(f"  {verb} {move.source} -> {move.target}")
    for path, reason in m.failed:
        print(f"  not moved: {path}: {reason}")
    print(f"{verb} {len(m.moves)} file(s)" + (f"; undo with --undo {m.manifest}" if m.manifest else ""))
