"""Query expansion through the collection, the REST API and the command line, on an index built by hand.

The embedder here (`mean-colour`, conftest.py) maps a picture to its mean colour minus mid-grey, so one-colour
PNGs give exactly chosen vectors (x 100, plus 128 per channel):

    q  = (1, 0, 0)           the query, not in the collection
    a1 = (1, 0.5, 0)         cos(q, .) = 1 / sqrt(1.25)            = 0.8944
    b1 = (1, 0.55, 0.05)     cos(q, .) = 1 / sqrt(1.305)           = 0.8754
    d  = (0.8, -0.55, 0.3)   cos(q, .) = 0.8 / sqrt(1.0325)        = 0.7873
    a2 = (0.6, 1, 0)         cos(q, .) = 0.6 / sqrt(1.36)          = 0.5145

Plain search ranks a1, b1, d, a2. alpha-QE over the top 2 (alpha 3, each weight relative to the nearest
neighbour's cosine) searches with q' = q + a1/|a1| + (0.8754 / 0.8944)^3 b1/|b1| = (2.7151, 0.8986, 0.0410),
|q'| = 2.8602, whose cosines are a1 0.9895, b1 0.9828, a2 0.7578, d 0.5815: the expansion pulls a2 (a
neighbour of the neighbours) above
the distractor d. The answer keeps q's own nearest (a1) first, and each result's score is its cosine to q
itself, not to q'.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lookalike import Collection
from lookalike.cli.main import main
from lookalike.server import create_app

VECTORS = {
    "q": (100, 0, 0),
    "a1": (100, 50, 0),
    "b1": (100, 55, 5),
    "d": (80, -55, 30),
    "a2": (60, 100, 0),
}
PLAIN = ["a1", "b1", "d", "a2"]
EXPANDED = ["a1", "b1", "a2", "d"]
EXPANDED_SCORES = [0.8944, 0.8754, 0.5145, 0.7873]  # cosines to q (above), in the expanded order


@pytest.fixture()
def colours(tmp_path: Path, mean_colour: str) -> Iterator[tuple[Collection, Path, dict[str, int]]]:
    """A collection of the four one-colour pictures (mean-colour embedder) and the query picture outside it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, vector in VECTORS.items():
        colour = tuple(128 + v for v in vector)
        Image.new("RGB", (32, 32), colour).save((tmp_path if name == "q" else folder) / f"{name}.png")
    collection = Collection.open(tmp_path / "collection", embedder=mean_colour)
    collection.sync(folder)
    ids = {Path(r.path).stem: r.id for r in collection.records()}
    np.testing.assert_allclose(collection.embed(tmp_path / "q.png"), [1, 0, 0], atol=1e-6)
    yield collection, tmp_path / "q.png", ids
    collection.close()


def names(ids: dict[str, int], found: list[int]) -> list[str]:
    by_id = {i: name for name, i in ids.items()}
    return [by_id[i] for i in found]


def test_query_expansion_pulls_in_the_neighbours_neighbour(colours) -> None:
    collection, query, ids = colours
    plain = collection.search(query, k=4, expand=0)
    assert names(ids, [r.id for r in plain]) == PLAIN
    assert [r.score for r in plain] == pytest.approx([0.8944, 0.8754, 0.7873, 0.5145], abs=1e-4)
    expanded = collection.search(query, k=4, expand=2)
    assert names(ids, [r.id for r in expanded]) == EXPANDED
    assert [r.score for r in expanded] == pytest.approx(EXPANDED_SCORES, abs=1e-4)


def test_query_expansion_leaves_an_indexed_query_out(colours) -> None:
    collection, _, ids = colours
    # From a1 (itself left out): b1 0.9983, a2 0.8437, d 0.4621. Expanded with b1 and a2 (not with a1 itself,
    # whose weight 1 would leave the query where it is): q' = a1 + b1 + (0.8437 / 0.9983)^3 a2, whose cosines are
    # b1 0.9942, a2 0.9118, d 0.3425: the order is that of the plain search, and the scores stay cosines to a1.
    plain = collection.search_id(ids["a1"], k=3, expand=0)
    assert [r.score for r in plain] == pytest.approx([0.9983, 0.8437, 0.4621], abs=1e-4)
    found = collection.search_id(ids["a1"], k=3, expand=2)
    assert names(ids, [r.id for r in found]) == ["b1", "a2", "d"]
    assert [r.score for r in found] == pytest.approx([0.9983, 0.8437, 0.4621], abs=1e-4)


def test_query_expansion_over_rest(colours) -> None:
    collection, query, ids = colours
    client = TestClient(create_app(collection))
    upload = {"file": ("q.png", query.read_bytes(), "image/png")}
    for expand, expected in ((0, PLAIN), (2, EXPANDED)):
        body = client.post("/api/search", params={"k": 4, "expand": expand}, files=upload).json()
        assert names(ids, [h["id"] for h in body["results"]]) == expected
    body = client.post("/api/search", params={"k": 4, "expand": 2}, files=upload).json()
    assert [h["score"] for h in body["results"]] == pytest.approx(EXPANDED_SCORES, abs=1e-4)
    by_id = client.get(f"/api/images/{ids['a1']}/similar", params={"k": 3, "expand": 2}).json()
    assert names(ids, [h["id"] for h in by_id["results"]]) == ["b1", "a2", "d"]
    assert [h["score"] for h in by_id["results"]] == pytest.approx([0.9983, 0.8437, 0.4621], abs=1e-4)


def test_cli_search_expand(colours, capsys: pytest.CaptureFixture[str]) -> None:
    collection, query, ids = colours
    for option, expected in ((["--expand", "0"], PLAIN), (["--expand", "2"], EXPANDED)):
        assert main(["search", str(query), "-k", "4", "--collection", str(collection.path), "--json", *option]) == 0
        assert names(ids, [r["id"] for r in json.loads(capsys.readouterr().out)]) == expected


def test_exact_ranking_expands_the_query_as_the_index_does(colours) -> None:
    """Evaluation ranks by brute force (`exact=True`); with `expand` it must give the index path's answers."""
    collection, query, ids = colours
    found = collection.search_vectors(collection.embed(query), 4, expand=2, exact=True)
    assert names(ids, found.ids[0].tolist()) == EXPANDED
    assert found.scores[0].tolist() == pytest.approx(EXPANDED_SCORES, abs=1e-4)
    a1 = collection.vectors_of([ids["a1"]])
    found = collection.search_vectors(a1, 3, expand=2, exact=True, exclude=[ids["a1"]])
    assert names(ids, found.ids[0].tolist()) == ["b1", "a2", "d"]
    assert found.scores[0].tolist() == pytest.approx([0.9983, 0.8437, 0.4621], abs=1e-4)


def test_evaluate_with_expand_ranks_every_query_expanded(colours, tmp_path: Path) -> None:
    from lookalike.evaluation.report import write_report
    from lookalike.evaluation.runner import evaluate_folder

    collection, _, _ = colours
    name = collection.default_embedder
    expanded = evaluate_folder(tmp_path / "photos", collection, [name], expand=2)
    assert evaluate_folder(tmp_path / "photos", collection, [name], expand=0).expand == 0 and expanded.expand == 2
    assert evaluate_folder(tmp_path / "photos", collection, [name]).expand == collection.default_expand
    sample = expanded.samples[name]
    gallery = np.array(sorted(r.id for r in collection.records()), dtype=np.int64)
    found = collection.search_vectors(
        collection.vectors_of(gallery), 3, within=gallery, exclude=gallery, exact=True, expand=2
    )
    np.testing.assert_array_equal(sample.ranking, np.searchsorted(gallery, found.ids))
    md, _ = write_report(expanded, tmp_path / "report")
    assert "query expansion" in md.read_text()


def test_a_new_collection_expands_by_default_and_an_older_one_does_not(colours, tmp_path: Path) -> None:
    """Searches that do not say expand over the collection's `default_expand`: DEFAULT_EXPAND for a new
    collection, none for one whose config predates it; the setting is saved with the collection."""
    from lookalike.index.rerank import DEFAULT_EXPAND

    collection, query, ids = colours
    assert collection.default_expand == DEFAULT_EXPAND == 5
    over_all = collection.search(query, k=4, expand=4)
    assert [r.id for r in collection.search(query, k=4)] == [r.id for r in over_all]
    client = TestClient(create_app(collection))
    body = client.post("/api/search", params={"k": 4}, files={"file": ("q.png", query.read_bytes(), "image/png")})
    assert body.json()["expand"] == DEFAULT_EXPAND
    assert [h["id"] for h in body.json()["results"]] == [r.id for r in over_all]

    collection.set_default_expand(0)
    assert names(ids, [r.id for r in collection.search(query, k=4)]) == PLAIN
    config = json.loads((collection.path / "config.json").read_text())
    assert config["expand"] == 0
    del config["expand"]  # as a collection made before query expansion was the default
    (collection.path / "config.json").write_text(json.dumps(config))
    with Collection.open(collection.path, create=False) as older:
        assert older.default_expand == 0
        assert names(ids, [r.id for r in older.search(query, k=4)]) == PLAIN
    with pytest.raises(ValueError, match="expand"):
        collection.set_default_expand(-1)


def test_index_sets_the_collection_s_default_expansion(colours, capsys: pytest.CaptureFixture[str]) -> None:
    """`lookalike index --expand N` saves N as the collection's default: later searches (CLI, Python) use it."""
    collection, query, ids = colours
    folder = query.parent / "photos"
    assert main(["index", str(folder), "--collection", str(collection.path), "--expand", "0", "--json"]) == 0
    capsys.readouterr()
    with Collection.open(collection.path, create=False) as reopened:
        assert reopened.default_expand == 0
    assert main(["search", str(query), "-k", "4", "--collection", str(collection.path), "--json"]) == 0
    assert names(ids, [r["id"] for r in json.loads(capsys.readouterr().out)]) == PLAIN
    assert main(["index", str(folder), "--collection", str(collection.path), "--expand", "-1"]) == 2
    assert "--expand must be 0 or more" in capsys.readouterr().err
