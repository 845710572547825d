"""Words -> ImageNet classes: what concept search understands (no network, no PyTorch).

The default embedders are ImageNet-1k classifiers: besides its vector, each image gets its top
class probabilities when it is indexed (`Collection` stores them). A text query is read here as one
or more *terms*, each a set of classes:

- a class's own names (WordNet synonyms: "golden retriever", "tabby", "tabby cat"),
- or a more general WordNet noun above classes ("dog" -> every dog breed, "vehicle" -> cars,
  buses, bikes, ...), found through the hypernym links of WordNet 3.0.

The words, synonyms and links come from `data/imagenet_concepts.json.gz`, generated once by
`tools/make_imagenet_concepts.py` from WordNet 3.0 (its licence travels in the file). An image's
score for a term is the summed probability of the term's classes among its stored top classes; a
query of several terms ("dog beach", "cat on a sofa") needs every term, scored by their product.
"""

from __future__ import annotations

import difflib
import gzip
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from importlib.resources import files

import numpy as np

#: the class vocabulary of ImageNet-1k classifiers (the key stored with each embedder's concepts)
IMAGENET = "imagenet-1k"
#: classes kept per image and embedder when indexing (their probabilities, best first)
TOP_CLASSES = 10
#: a class with at least this probability is one of the image's tags (so an image has at most 10)
TAG_MIN_SCORE = 0.1
#: longest phrase tried, in words
_MAX_PHRASE = 6
#: words that carry no concept; skipped unless part of a known phrase
_FILLER = frozenset(
    """a an the of on in at by with and or to from for near under over into onto some my our your this that these
    those photo photos picture pictures image images pic pics shot showing""".split()  # noqa: SIM905
)


class ConceptError(ValueError):
    """Words that match no concept (the message names them and the closest known words)."""


@dataclass(frozen=True)
class Term:
    """Words of a query read as one concept: the classes they cover."""

    words: str  # as matched, normalised ("golden retriever")
    concepts: tuple[str, ...]  # the WordNet senses matched, by their first name ("dog", "frank")
    classes: tuple[int, ...]  # ImageNet class ids covered


@dataclass(frozen=True)
class Tag:
    """One of an image's top concepts."""

    name: str
    score: float  # the class probability the network gave


def normalise(text: str) -> str:
    """Lower case, apostrophes dropped, other punctuation and underscores as spaces."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return " ".join(re.sub(r"[^0-9a-z\u00c0-\u024f]+", " ", text).split())


def _singulars(phrase: str, plurals: dict[str, str]) -> list[str]:
    """The phrase, and what it may be the plural (or, for plural-only names, the singular) of."""
    head, _, last = phrase.rpartition(" ")
    forms = [phrase]
    candidates = [plurals.get(phrase, ""), plurals.get(last, "")]
    if last.endswith("ies") and len(last) > 4:
        candidates.append(last[:-3] + "y")
    if last.endswith("ves"):
        candidates += [last[:-3] + "f", last[:-3] + "fe"]
    if last.endswith("es"):
        candidates.append(last[:-2])
    if last.endswith("s") and not last.endswith("ss"):
        candidates.append(last[:-1])
    else:
        candidates.append(last + "s")  # names that are plural only: "binocular" -> "binoculars"
    for c in candidates:
        if c and c not in forms:
            forms.append(c if " " in c or not head else f"{head} {c}")
    return forms


class Vocabulary:
    """ImageNet-1k's classes and the WordNet nouns above them, searchable by words."""

    name = IMAGENET

    def __init__(self, data: dict):
        synsets = data["synsets"]
        self.wnids: list[str] = data["wnids"][:1000]
        self._lemmas: list[list[str]] = [lemmas for lemmas, _ in synsets]
        self._parents: list[list[int]] = [parents for _, parents in synsets]
        self._plurals = {normalise(k): normalise(v) for k, v in data["plurals"].items()}

    @cached_property
    def _below(self) -> list[tuple[int, ...]]:
        """The classes below each synset (a class is below itself); built when words are first read."""
        below: list[set[int]] = [set() for _ in self._lemmas]
        for c in range(len(self.wnids)):
            stack, seen = [c], {c}
            while stack:
                s = stack.pop()
                below[s].add(c)
                for p in self._parents[s]:
                    if p not in seen:
                        seen.add(p)
                        stack.append(p)
        return [tuple(sorted(b)) for b in below]

    @cached_property
    def _by_words(self) -> dict[str, list[int]]:
        """Normalised name -> the synsets it names."""
        by_words: dict[str, list[int]] = {}
        for s, lemmas in enumerate(self._lemmas):
            for lemma in lemmas:
                key = normalise(lemma)
                if key and s not in by_words.setdefault(key, []):
                    by_words[key].append(s)
        return by_words

    @cached_property
    def _known(self) -> list[str]:
        return sorted(self._by_words)

    @property
    def size(self) -> int:
        return len(self.wnids)

    def class_name(self, class_id: int) -> str:
        return self._lemmas[class_id][0]

    def class_names(self, class_id: int) -> list[str]:
        return list(self._lemmas[class_id])

    def words(self) -> list[str]:
        """Every word or phrase understood (normalised)."""
        return list(self._known)

    def _term(self, phrase: str) -> Term | None:
        for form in _singulars(phrase, self._plurals):
            senses = self._by_words.get(form)
            if senses:
                classes = sorted({c for s in senses for c in self._below[s]})
                return Term(form, tuple(self._lemmas[s][0] for s in senses), tuple(classes))
        return None

    def parse(self, text: str) -> tuple[list[Term], list[str]]:
        """The terms of a query, longest known phrases first, and the words matching no concept."""
        words = normalise(text).split()
        terms: list[Term] = []
        unknown: list[str] = []
        i = 0
        while i < len(words):
            for j in range(min(len(words), i + _MAX_PHRASE), i, -1):
                term = self._term(" ".join(words[i:j]))
                if term is not None:
                    terms.append(term)
                    i = j
                    break
            else:
                if words[i] not in _FILLER and words[i] not in unknown:
                    unknown.append(words[i])
                i += 1
        return terms, unknown

    def read(self, text: str, *, strict: bool = True) -> list[Term]:
        """The terms of a query. ConceptError when nothing matches, or (`strict`) when any word does not."""
        terms, unknown = self.parse(text)
        if unknown and (strict or not terms):
            raise ConceptError("; ".join(self.explain(word) for word in unknown))
        if not terms:
            if not normalise(text):
                raise ConceptError("the text query is empty")
            raise ConceptError(f"no concept in {text.strip()!r}: name a thing, such as dog, car or pizza")
        return terms

    def explain(self, word: str) -> str:
        """Why `word` finds nothing, and the known words spelt most like it."""
        close = self.closest(word)
        if close:
            return f"no concept matches {word!r}; closest: {', '.join(close)}"
        return (
            f"no concept matches {word!r} (concepts are the 1,000 ImageNet classes and the WordNet words above them,"
            " such as dog, bird, vehicle, fruit, instrument)"
        )

    def closest(self, word: str, n: int = 5) -> list[str]:
        """Known words spelt most like `word`."""
        return difflib.get_close_matches(normalise(word), self._known, n=n, cutoff=0.75)

    def classes_for(self, text: str) -> list[np.ndarray]:
        """The class ids of each term of `text`."""
        return [np.asarray(t.classes, dtype=np.int64) for t in self.read(text)]

    def tags(self, classes: Sequence[int], scores: Sequence[float]) -> list[Tag]:
        """An image's tags from its stored top classes (best first)."""
        return [
            Tag(self.class_name(int(c)), round(float(s), 4))
            for c, s in zip(classes, scores, strict=True)
            if s >= TAG_MIN_SCORE
        ]


def top_classes(probabilities: np.ndarray, k: int = TOP_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores), each (n, k), of the k most probable classes of each row, best first."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    k = min(k, probabilities.shape[1])
    part = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    scores = np.take_along_axis(probabilities, part, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(scores, order, axis=1)


@cache
def vocabulary(name: str = IMAGENET) -> Vocabulary:
    """The vocabulary called `name` (loaded once per process)."""
    if name != IMAGENET:
        raise ConceptError(f"unknown concept vocabulary {name!r}")
    raw = (files("lookalike") / "data" / "imagenet_concepts.json.gz").read_bytes()
    return Vocabulary(json.loads(gzip.decompress(raw)))
