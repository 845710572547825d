"""Generate src/lookalike/data/imagenet_concepts.json.gz: the words lookalike's concept search understands.

Run once by a developer (never at run time); the generated file ships with the package:

    apt-get install wordnet-base        # WordNet 3.0's database files in /usr/share/wordnet
    pip install timm                    # its package data lists the 1,000 ImageNet-1k synset ids in class order
    python tools/make_imagenet_concepts.py [--wordnet /usr/share/wordnet]

ImageNet-1k's classes are WordNet 3.0 noun synsets ("n02084071" = offset 02084071 of data.noun). For
each class the file keeps its synonyms (the synset's lemmas) and, through WordNet's hypernym links,
every more general synset above it with its own lemmas, so that "dog" reaches all dog breeds and
"vehicle" cars, buses and bikes. Plural forms WordNet lists as exceptions (noun.exc: "geese goose")
are kept for the words in the file. Two is-a links WordNet 3.0 lacks are added (`EXTRA_HYPERNYMS`):
there, buses and trains are "public transport" but not vehicles. WordNet's licence (below, in the
file's "licence" field) allows copying and redistribution with its notice.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "data" / "imagenet_concepts.json.gz"

LICENCE = (
    "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Permission to use, copy, modify and "
    "distribute this software and database and its documentation for any purpose and without fee or royalty is "
    "hereby granted, provided that you agree to comply with the following copyright notice and statements, including "
    "the disclaimer, and that the same appear on ALL copies of the software, database and documentation, including "
    "modifications that you make for internal use or for distribution. THIS SOFTWARE AND DATABASE IS PROVIDED "
    '"AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, '
    "BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANTABILITY OR FITNESS "
    "FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT "
    "INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS. The name of Princeton University or "
    "Princeton may not be used in advertising or publicity pertaining to distribution of the software and/or "
    "database. Title to copyright in this software, database and any associated documentation shall at all times "
    "remain with Princeton University and LICENSEE agrees to preserve same."
)


#: (synset, hypernym) links added to WordNet 3.0's: bus -> motor vehicle, train -> wheeled vehicle
EXTRA_HYPERNYMS = [(2924116, 3791235), (4468005, 4576211)]


def read_nouns(wordnet: Path) -> dict[int, tuple[list[str], list[int]]]:
    """offset -> (lemmas, hypernym offsets) of every noun synset in data.noun (WordNet's documented format)."""
    synsets: dict[int, tuple[list[str], list[int]]] = {}
    for line in (wordnet / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):  # the licence header
            continue
        fields = line.split(" | ")[0].split()
        offset, count = int(fields[0]), int(fields[3], 16)
        lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
        at = 4 + 2 * count
        pointers = int(fields[at])
        hypernyms = []
        for p in range(pointers):
            symbol, target, pos = fields[at + 1 + 4 * p : at + 4 + 4 * p]
            if symbol in ("@", "@i") and pos == "n":
                hypernyms.append(int(target))
        # lemma markers such as "(p)" are adjective-only; nouns have none, but strip defensively
        synsets[offset] = ([lemma.split("(")[0] for lemma in lemmas], hypernyms)
    return synsets


def imagenet_wnids() -> list[str]:
    from importlib.resources import files

    text = (files("timm.data") / "_info" / "imagenet_synsets.txt").read_text()
    wnids = [w.strip() for w in text.splitlines() if w.strip()]
    assert len(wnids) == 1000 and wnids == sorted(wnids), "expected ImageNet-1k's 1,000 synsets in class order"
    return wnids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"), help="WordNet 3.0 dict folder")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    nouns = read_nouns(args.wordnet)
    for synset, hypernym in EXTRA_HYPERNYMS:
        nouns[synset][1].append(hypernym)
    wnids = imagenet_wnids()
    order: list[int] = [int(w[1:]) for w in wnids]  # the classes first, in class order
    index = {offset: i for i, offset in enumerate(order)}
    queue = list(order)
    while queue:  # every hypernym above a class, breadth first
        for parent in nouns[queue.pop(0)][1]:
            if parent not in index:
                index[parent] = len(order)
                order.append(parent)
                queue.append(parent)
    synsets = [[nouns[o][0], [index[p] for p in nouns[o][1]]] for o in order]

    words = {lemma.lower() for lemmas, _ in synsets for lemma in lemmas}
    plurals = {}
    for line in (args.wordnet / "noun.exc").read_text(encoding="latin-1").splitlines():
        inflected, *bases = line.split()
        base = bases[0].replace("_", " ") if bases else ""
        if base.lower() in words:
            plurals[inflected.replace("_", " ")] = base

    data = {
        "about": "ImageNet-1k classes as WordNet 3.0 noun synsets, with their synonyms and hypernyms; "
        "generated by tools/make_imagenet_concepts.py",
        "licence": LICENCE,
        "wnids": [f"n{o:08d}" for o in order],
        # synset i: [lemmas, direct hypernyms (indices)]; synsets 0..999 are the classes in class order
        "synsets": synsets,
        "plurals": plurals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    with gzip.GzipFile(args.out, "wb", mtime=0) as f:  # mtime 0: the same input makes the same bytes
        f.write(raw)
    print(
        f"{len(order)} synsets ({len(wnids)} classes), {len(plurals)} plurals -> {args.out} "
        f"({args.out.stat().st_size} bytes, {len(raw)} uncompressed)"
    )


if __name__ == "__main__":
    main()
