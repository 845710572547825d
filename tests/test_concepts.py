"""Search by words over the concepts (ImageNet classes) the default embedder gives each image."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_samples
from fastapi.testclient import TestClient

from lookalike import Collection
from lookalike.cli.main import main
from lookalike.concepts import TAG_MIN_SCORE, TOP_CLASSES, ConceptError, normalise, top_classes, vocabulary
from lookalike.embedders import DEFAULT_EMBEDDER

GOLDEN_RETRIEVER, TABBY, SCHOOL_BUS, SPORTS_CAR, MOUNTAIN_BIKE, AIRLINER = 207, 281, 779, 817, 671, 404
DOG_CLASSES = set(range(151, 269))  # ImageNet-1k's dog breeds
CAT_CLASSES = {281, 282, 283, 284, 285}  # its domestic cats


# --- words -> classes --------------------------------------------------------------------------


def test_a_class_name_finds_that_class_and_a_general_word_every_class_below_it() -> None:
    words = vocabulary()
    (term,) = words.read("Golden Retriever")
    assert term.classes == (GOLDEN_RETRIEVER,)
    (dog,) = words.read("dog")
    assert set(dog.classes) == DOG_CLASSES  # every breed, through WordNet's hypernyms, and nothing else
    (vehicle,) = words.read("vehicle")
    assert {SCHOOL_BUS, SPORTS_CAR, MOUNTAIN_BIKE, AIRLINER} <= set(vehicle.classes)
    assert not set(vehicle.classes) & (DOG_CLASSES | CAT_CLASSES)
    assert set(words.read("tabby cat")[0].classes) == {TABBY}  # a synonym


def test_plurals_and_filler_words_are_understood() -> None:
    words = vocabulary()
    assert words.read("dogs")[0].classes == words.read("dog")[0].classes
    assert words.read("buses")[0].words == "bus"
    assert words.read("geese")[0].words == "goose"  # WordNet's irregular plural
    assert words.read("binocular")[0].words == "binoculars"  # a plural-only name
    assert [t.words for t in words.read("a photo of the school buses")] == ["school bus"]
    assert [t.words for t in words.read("dog with a ball")] == ["dog", "ball"]


def test_unknown_words_get_a_clear_answer_never_an_empty_list() -> None:
    words = vocabulary()
    with pytest.raises(ConceptError, match=r"no concept matches 'retreiver'; closest: .*retriever"):
        words.read("golden retreiver")
    with pytest.raises(ConceptError, match="no concept matches 'qwxz'.*ImageNet classes"):
        words.read("qwxz")
    with pytest.raises(ConceptError, match="empty"):
        words.read("  ?! ")
    with pytest.raises(ConceptError, match="name a thing"):
        words.read("a photo of the")


def test_the_shipped_vocabulary_carries_its_licence_and_covers_the_1000_classes() -> None:
    from importlib.resources import files

    data = json.loads(gzip.decompress((files("lookalike") / "data" / "imagenet_concepts.json.gz").read_bytes()))
    assert "Princeton University" in data["licence"]
    assert len(data["wnids"]) > 1000 and data["wnids"][GOLDEN_RETRIEVER] == "n02099601"
    assert normalise("Jack-o'-Lantern") == "jack o lantern" and vocabulary().read("jack-o'-lantern")


def test_top_classes_are_the_most_probable_best_first() -> None:
    probabilities = np.array([[0.1, 0.6, 0.05, 0.25], [0.4, 0.1, 0.3, 0.2]], dtype=np.float32)
    ids, scores = top_classes(probabilities, 2)
    assert ids.tolist() == [[1, 3], [0, 2]]
    np.testing.assert_allclose(scores, [[0.6, 0.25], [0.4, 0.3]])


# --- a collection ------------------------------------------------------------------------------


def test_searching_by_words_finds_the_cats_and_the_dogs(shared_collection: Collection) -> None:
    # One of the 12 cats (cat.6, black) looks like a schipperke to the network: 9 of 10 is what it can do.
    for words, label in [("cat", "cat"), ("dogs", "dog"), ("a photo of a domestic cat", "cat")]:
        found = shared_collection.search_text(words, 10)
        assert found.method == "concepts" and found.embedder == "efficientnet-lite0"
        labels = [r.label for r in found.results]
        assert len(labels) == 10 and labels.count(label) >= 9, (words, labels)
        scores = [r.score for r in found.results]
        assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
    only_cats = shared_collection.search_text("dog", 3, label="cat").results
    assert only_cats and {r.label for r in only_cats} == {"cat"}


def test_words_that_match_nothing_are_left_out_and_said_so(shared_collection: Collection) -> None:
    found = shared_collection.search_text("dog on a beach", 5)
    assert [t.words for t in found.terms] == ["dog"]
    assert found.ignored == ("no concept matches 'beach'; closest: bench",)
    assert [r.id for r in found.results] == [r.id for r in shared_collection.search_text("dog", 5).results]
    with pytest.raises(ConceptError, match="no concept matches 'qwxz'"):
        shared_collection.search_text("qwxz beach")  # nothing matches: an error, never an empty list
    with pytest.raises(ConceptError, match="no concept matches 'beach'"):
        shared_collection.search(shared_collection.image(1).path, tag="dog on a beach")  # filters are strict


def test_every_result_carries_its_tags(shared_collection: Collection, data_dir: Path) -> None:
    hits = shared_collection.search(data_dir / "cat" / "cat.100.jpg", k=5)
    assert all(hit.tags for hit in hits if hit.label == "cat")
    for hit in hits:
        assert [t.score for t in hit.tags] == sorted((t.score for t in hit.tags), reverse=True)
        assert all(t.score >= TAG_MIN_SCORE for t in hit.tags)
    tags = {t.name for hit in hits if hit.label == "cat" for t in hit.tags}
    assert tags & {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def test_image_search_filtered_by_a_tag(shared_collection: Collection, data_dir: Path) -> None:
    query = data_dir / "cat" / "cat.100.jpg"
    tagged = {int(i) for i in shared_collection.tagged_ids("dog")}
    labels = [shared_collection.image(i).label for i in tagged]
    assert labels.count("dog") >= 10 and labels.count("cat") <= 3  # cats a breed of dog is the 2nd guess for
    stored = shared_collection.catalog.concepts_of("efficientnet-lite0", tagged)
    for classes in stored.values():  # each shows a tag (a class of 0.1 or more) that is a dog breed
        assert any(c in DOG_CLASSES and score >= TAG_MIN_SCORE for c, score in classes)
    dogs = shared_collection.search(query, k=5, tag="dog", expand=0)
    everything = shared_collection.search(query, k=24, expand=0)
    assert [h.id for h in dogs] == [h.id for h in everything if h.id in tagged][:5]  # the nearest tagged images
    with pytest.raises(ConceptError, match="closest"):
        shared_collection.search(query, k=5, tag="dgo")


def test_concepts_are_kept_with_the_vectors_and_go_with_them(sample_folder: Path, data_dir: Path) -> None:
    collection = Collection.open(sample_folder.parent / "collection")
    collection.sync(sample_folder)
    catalog = collection.catalog
    ids = collection.vector_ids()
    assert catalog.concept_ids(DEFAULT_EMBEDDER) == ids and len(ids) == 24
    assert {len(v) for v in catalog.concepts_of(DEFAULT_EMBEDDER, ids).values()} == {TOP_CLASSES}
    # A changed file gets new concepts; a removed one loses them.
    changed = sample_folder / "cat" / "cat.1.jpg"
    shutil.copy2(data_dir / "dog" / "dog.50.jpg", changed)
    collection.sync(sample_folder)
    record = catalog.get_by_path(str(changed.resolve()))
    top = catalog.concepts_of(DEFAULT_EMBEDDER, [record.id])[record.id][0][0]
    assert top in DOG_CLASSES
    (sample_folder / "dog" / "dog.1.jpg").unlink()
    collection.sync(sample_folder)
    assert len(catalog.concept_ids(DEFAULT_EMBEDDER)) == 23
    # An added image gets its concepts with its vectors.
    added = collection.add_image((data_dir / "cat" / "cat.100.jpg").read_bytes(), sample_folder.parent / "new.jpg")
    assert catalog.concept_ids(DEFAULT_EMBEDDER) == collection.vector_ids()
    assert collection.search_text("cat", 30).results[0].label in ("cat", None)
    assert added.id in {r.id for r in collection.search_text("cat", 30).results}
    collection.close()


def test_a_collection_indexed_before_concepts_gets_them_from_the_next_index_run(
    sample_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    collection_dir = sample_folder.parent / "collection"
    with Collection.open(collection_dir) as collection:
        collection.sync(sample_folder)
        _, before = collection.catalog.vectors(DEFAULT_EMBEDDER)
        generation = collection.catalog.generation(DEFAULT_EMBEDDER)
        # What a collection indexed by an older lookalike looks like: vectors, no concepts.
        collection.catalog._db.execute("DELETE FROM concepts")
        collection.catalog._db.execute("DELETE FROM meta WHERE key LIKE 'concepts:%'")
        with pytest.raises(ConceptError, match="lookalike index"):
            collection.search_text("cat")
    assert main(["search", "--text", "cat", "--collection", str(collection_dir)]) == 2
    assert "lookalike index" in capsys.readouterr().err

    assert main(["index", str(sample_folder), "--collection", str(collection_dir)]) == 0
    assert "24 given their concepts" in capsys.readouterr().out
    with Collection.open(collection_dir) as collection:
        report = collection.sync(sample_folder)
        assert (report.unchanged, report.embedded, report.described) == (24, 0, 0)  # nothing left to do
        _, after = collection.catalog.vectors(DEFAULT_EMBEDDER)
        np.testing.assert_array_equal(after, before)  # the vectors and the index were left alone
        assert collection.catalog.generation(DEFAULT_EMBEDDER) == generation
        assert [r.label for r in collection.search_text("cat", 5).results] == ["cat"] * 5


def test_the_command_line_searches_by_words(shared_collection: Collection, capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--collection", str(shared_collection.path)]
    assert main(["search", "--text", "dog", "-k", "4", "--json", *where]) == 0
    captured = capsys.readouterr()
    hits = json.loads(captured.out)
    assert [h["label"] for h in hits] == ["dog"] * 4 and all(h["tags"] for h in hits)
    assert "'dog' -> dog (118 ImageNet classes)" in captured.err
    assert main(["search", "--text", "tabby cat", "-k", "2", *where]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(" cat " in line and "[" in line for line in lines)
    assert main(["search", "--text", "golden retreiver", *where]) == 2
    assert "no concept matches 'retreiver'; closest: retriever" in capsys.readouterr().err
    assert main(["search", *where]) == 2
    assert "--text" in capsys.readouterr().err


def test_the_rest_api_searches_by_words(tmp_path: Path, data_dir: Path) -> None:
    from lookalike.server import create_app

    root = copy_samples(data_dir, tmp_path / "photos")
    with Collection.open(tmp_path / "collection") as collection:
        collection.sync(root)
        client = TestClient(create_app(collection))
        response = client.get("/api/search/text", params={"q": "dog", "k": 6})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["method"] == "concepts" and body["terms"] == [{"words": "dog", "concepts": ["dog"], "classes": 118}]
        assert len(body["results"]) == 6 and [h["label"] for h in body["results"]].count("dog") >= 5
        assert all(h["tags"] and h["thumbnail_url"].startswith("/api/images/") for h in body["results"])
        unknown = client.get("/api/search/text", params={"q": "dgo"})
        assert unknown.status_code == 422 and "no concept matches 'dgo'; closest: " in unknown.json()["detail"]
        assert client.get("/api/search/text", params={"q": ""}).status_code == 422
        # Image search, filtered by a tag, and its results' tags.
        query = (data_dir / "dog" / "dog.100.jpg").read_bytes()
        tagged = {int(i) for i in collection.tagged_ids("tabby")}
        found = client.post("/api/search?k=4&tag=tabby", files={"file": ("q.jpg", query, "image/jpeg")}).json()
        assert len(found["results"]) == 4 and {h["id"] for h in found["results"]} <= tagged
        assert {h["label"] for h in found["results"]} == {"cat"}
        first = found["results"][0]["id"]
        similar = client.get(f"/api/images/{first}/similar", params={"k": 3, "tag": "hound"}).json()
        assert {h["id"] for h in similar["results"]} <= {int(i) for i in collection.tagged_ids("hound")}
        assert {h["label"] for h in similar["results"]} == {"dog"}
