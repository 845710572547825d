"""The examples run: examples/ray_embed.py on a handful of photos, with a local Ray and Milvus Lite.

(Ray is in the `test` extra as in `scale`: the example cannot rot unnoticed.)
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lookalike import Collection

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def ray_example():
    spec = importlib.util.spec_from_file_location("ray_embed", EXAMPLES / "ray_embed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ray_example_embeds_photos_into_milvus_lite_as_lookalike_index_would(tmp_path: Path, data_dir: Path) -> None:
    photos = tmp_path / "photos"
    for label in ("cat", "dog"):
        (photos / label).mkdir(parents=True)
        for i in range(1, 4):
            shutil.copy(data_dir / label / f"{label}.{i}.jpg", photos / label)
    (photos / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a photo")
    db, out = tmp_path / "vectors.db", tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "ray_embed.py"), str(photos), "--milvus-lite", str(db), "--out", str(out),
         "--batch-size", "4"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    summary = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert summary["embedded"] == 6 and summary["in_milvus"] == 6, "the unreadable file is dropped"
    first = summary["neighbours"][0]
    assert first["path"] == summary["query"] and first["score"] > 0.999  # the query photo finds itself first

    # Every vector in Milvus equals the one `lookalike index` stores for that file, under the example's id.
    import pandas as pd
    from pymilvus import MilvusClient

    from lookalike.index.milvus import release_lite

    manifest = pd.read_parquet(out / "manifest")
    paths = {int(row.id): str(row.path).removeprefix("local://") for row in manifest.itertuples()}
    example = ray_example()
    assert all(image_id == example.image_id(path) for image_id, path in paths.items())
    client = MilvusClient(str(db))
    try:
        client.load_collection(summary["collection"])  # a new Milvus Lite session starts it released
        rows = client.query(summary["collection"], filter="id >= 0", output_fields=["id", "vector"])
    finally:
        client.close()
        release_lite(db)
    stored = {int(row["id"]): np.asarray(row["vector"], dtype=np.float32) for row in rows}
    assert sorted(stored) == sorted(paths)
    with Collection.open(tmp_path / "collection") as collection:
        collection.sync(photos)
        for image_id, path in paths.items():
            record = collection.catalog.get_by_path(str(Path(path).resolve()))
            np.testing.assert_allclose(stored[image_id], collection.stored_vector(record.id), atol=1e-5)
