"""Shared fixtures (a small fixed subset of the real cats-and-dogs photos, copied to a temp folder), the
`--runslow` option, and the CI rules of ci_rules.py."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

# Under CI, a skipped browser or Milvus test (or a skipped test module) fails the run.
from ci_rules import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401
from PIL import Image

from lookalike.embedders import Embedder, Preprocessing, l2_normalise

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOOKALIKE_DATA", REPO.parent / "shared" / "data" / "catsdogs"))

# A fixed subset (not random) so every run sees the same images.
SAMPLE_PER_LABEL = 12


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow (`make test` and CI do)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # Exported ONNX files go to a per-run temp cache, never the user's home.
    config.stash[_CACHE] = os.environ["LOOKALIKE_CACHE"] = tempfile.mkdtemp(prefix="lookalike-test-cache-")


def pytest_unconfigure(config: pytest.Config) -> None:
    # The run's exported models (up to a few GB with the trained ones) go with it.
    shutil.rmtree(config.stash.get(_CACHE, ""), ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "cat").is_dir():
        pytest.fail(f"the sample images are missing: expected {DATA}/cat and {DATA}/dog (set LOOKALIKE_DATA)")
    return DATA


def sample_files(data_dir: Path, per_label: int = SAMPLE_PER_LABEL) -> list[Path]:
    return [data_dir / label / f"{label}.{i}.jpg" for label in ("cat", "dog") for i in range(1, per_label + 1)]


def copy_samples(data_dir: Path, root: Path, per_label: int = SAMPLE_PER_LABEL) -> Path:
    """Copy the fixed sample photos (the first `per_label` of each label) to root/{cat,dog}/ and return root."""
    for src in sample_files(data_dir, per_label):
        dst = root / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return root


@pytest.fixture()
def sample_folder(tmp_path: Path, data_dir: Path) -> Path:
    """A writable folder of 12 cat and 12 dog photos: <tmp>/photos/{cat,dog}/..."""
    root = tmp_path / "photos"
    copy_samples(data_dir, root)
    return root


@pytest.fixture()
def small_collection(tmp_path: Path, data_dir: Path):
    """A writable collection of 3 cats and 3 dogs, for tests that add and delete: <tmp>/collection."""
    from servers import indexed

    with indexed(copy_samples(data_dir, tmp_path / "photos", per_label=3), tmp_path / "collection") as collection:
        yield collection


@pytest.fixture(scope="session")
def shared_collection(tmp_path_factory: pytest.TempPathFactory, data_dir: Path):
    """A read-only collection of the sample images with efficientnet-lite0, built once per session.

    Lite0, not the default two-view embedder: half the embedding time, and tests compare its vectors with
    the PyTorch network's. Its searches expand queries, as a new collection's do. Tests that change a
    collection build their own.
    """
    from lookalike import Collection

    root = tmp_path_factory.mktemp("shared") / "photos"
    copy_samples(data_dir, root)
    collection = Collection.open(root.parent / "collection", embedder="efficientnet-lite0")
    collection.sync(root)
    yield collection
    collection.close()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory):
    """A real Milvus standalone server (the `milvus` package, server 2.3.5) for the whole session.

    Its data lives in a temporary folder, it listens on free ports of 127.0.0.1, and it is stopped at the
    end through the package's API. When it cannot start the test is skipped with the reason (a failure
    under CI for tests marked `milvus`, see ci_rules.py).
    """
    try:
        from lookalike.index.milvus_server import EmbeddedMilvus

        server = EmbeddedMilvus(tmp_path_factory.mktemp("milvus-server")).start()
    except Exception as exc:
        pytest.skip(f"no Milvus server: {exc}")
    yield server
    server.stop()


class MeanColour(Embedder):
    """An embedder (registered as "mean-colour" by the fixture below): a picture's mean colour, centred on
    mid-grey, as a unit vector. One-colour pictures give vectors chosen by hand; photos embed in microseconds."""

    name = "mean-colour"
    dim = 3
    preprocessing = Preprocessing()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        return l2_normalise(np.asarray(batch, dtype=np.float32) - 128.0)


@pytest.fixture()
def mean_colour(monkeypatch: pytest.MonkeyPatch) -> str:
    """Registers the "mean-colour" embedder for one test (plug-ins register by name) and returns its name."""
    from lookalike import embedders

    monkeypatch.setitem(embedders._BUILTIN, MeanColour.name, lambda weights=None, runtime="auto": MeanColour())
    return MeanColour.name


def duplicate_photos(data_dir: Path, root: Path, per_label: int = 5) -> dict[str, Path]:
    """root/{cat,dog}/ with `per_label` photos of each, plus three edited copies among them: cat.1 at half
    size, dog.1 mirrored, dog.2 re-compressed at JPEG quality 30. Returns the copies by name."""
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(1, per_label + 1):
            shutil.copy2(data_dir / label / f"{label}.{i}.jpg", root / label / f"{label}.{i}.jpg")
    copies = {
        "cat.1-half.jpg": root / "cat" / "cat.1-half.jpg",
        "dog.1-mirrored.jpg": root / "dog" / "dog.1-mirrored.jpg",
        "dog.2-q30.jpg": root / "dog" / "dog.2-q30.jpg",
    }
    with Image.open(data_dir / "cat" / "cat.1.jpg") as image:
        image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS).save(copies["cat.1-half.jpg"])
    with Image.open(data_dir / "dog" / "dog.1.jpg") as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(copies["dog.1-mirrored.jpg"], quality=90)
    with Image.open(data_dir / "dog" / "dog.2.jpg") as image:
        image.save(copies["dog.2-q30.jpg"], quality=30)
    return copies


@contextmanager
def embedding_held(model: Embedder) -> Iterator[threading.Event]:
    """Hold every `model.embed_and_classify` call until the block ends; yields an event set once one waits.

    For tests of what other threads can do while a long embedding runs. The model is put back afterwards.
    """
    embedding, release = threading.Event(), threading.Event()
    original = model.embed_and_classify

    def held(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        embedding.set()
        assert release.wait(60)
        return original(batch)

    model.embed_and_classify = held  # type: ignore[method-assign]
    try:
        yield embedding
    finally:
        release.set()
        del model.embed_and_classify  # the class's method again
