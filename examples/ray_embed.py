"""Distributed embedding with Ray Data: image shards in, vectors into a Milvus collection lookalike can search.

    # a Ray cluster and a Milvus cluster (run on the Ray head node, or anywhere with `ray.init("auto")`)
    python examples/ray_embed.py s3://bucket/images/shard-00000 s3://bucket/images/shard-00001 ... \\
        --milvus milvus://milvus.internal:19530/photos --out s3://bucket/lookalike/manifest --address auto

    # one machine: Ray starts locally, the driver serves a Milvus Lite file on a local port
    python examples/ray_embed.py ../shared/data/catsdogs --limit 300 --milvus-lite /tmp/vectors.db --out /tmp/manifest

Pipeline (each stage scales on its own; Ray streams blocks between them, so memory stays bounded):

1. read: `ray.data.read_binary_files` lists the shards (folders, files or globs; local, S3, GCS, HDFS) and
   reads the files in parallel tasks. A shard is any unit of files; thousands of them give Ray room to
   balance.
2. embed: an actor pool, one embedder per actor (the model is loaded once, not per batch); each actor
   decodes, preprocesses and embeds a batch with lookalike's own code, so the vectors equal what
   `lookalike index` would compute. Unreadable files are dropped and counted.
3. write: a second actor pool, each with a connection to Milvus, upserts (id, vector) in batches.
   Ids are a 63-bit hash of the path, so workers need no coordination and a retried task rewrites the
   same rows instead of duplicating them (upsert is idempotent).
4. the manifest (id, path, label) goes to Parquet (`--out`), and a marker `lookalike-index.json`
   that `lookalike.index.load_index` opens, so lookalike searches the collection (the example ends with one
   query).

The collection is created (dropped first if present) through `lookalike.index.create_index`, so its schema
is the one the Milvus backend reads and writes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path, PurePosixPath

import numpy as np

from lookalike.embedders import DEFAULT_EMBEDDER
from lookalike.index import create_index, load_index

IMAGE_EXTENSIONS = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"]


def image_id(path: str) -> int:
    """A stable 63-bit id for a path (for 10^8 images, the chance of any collision is ~5e-4)."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") >> 1


class Embed:
    """Ray actor: bytes of images -> (id, path, label, vector)."""

    def __init__(self, embedder: str):
        from lookalike import embedders

        self.model = embedders.create(embedder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from lookalike.images import ImageError, open_image

        arrays, paths = [], []
        for data, path in zip(batch["bytes"], batch["path"], strict=True):
            try:
                image = open_image(bytes(data), draft_size=self.model.preprocessing.draft_size)
            except ImageError:
                continue  # counted by the driver as read - embedded
            arrays.append(self.model.preprocess(image))
            paths.append(str(path))
        vectors = self.model.embed_arrays(np.stack(arrays)) if arrays else np.zeros((0, self.model.dim), np.float32)
        return {
            "id": np.array([image_id(p) for p in paths], dtype=np.int64),
            "path": np.array(paths, dtype=object),
            "label": np.array([PurePosixPath(p).parent.name for p in paths], dtype=object),
            "vector": vectors.astype(np.float32),
        }


class Write:
    """Ray actor: upsert each batch into the Milvus collection named by the marker; pass the rows on."""

    def __init__(self, marker: str):
        self.index = load_index(Path(marker))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(batch["id"]):
            self.index.add(batch["id"], np.stack(batch["vector"]))
        return {"id": batch["id"], "path": batch["path"], "label": batch["label"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", nargs="+", help="folders, files or globs of images (local or s3://, gs://, ...)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--milvus", help="milvus://HOST:PORT/NAME[?index=HNSW|IVF_SQ8|...] of a running Milvus")
    target.add_argument("--milvus-lite", type=Path, help="a Milvus Lite file, served by this driver on a local port")
    parser.add_argument("--out", required=True, help="folder for the manifest (Parquet) and the index marker")
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER, help=f"as lookalike index (default {DEFAULT_EMBEDDER})")
    parser.add_argument("--address", help="Ray cluster address ('auto' on a cluster node); default: start Ray here")
    parser.add_argument(
        "--embedders", type=int, default=1, help="embedding actors, 1 CPU each (on a cluster: one per core or GPU)"
    )
    parser.add_argument("--writers", type=int, default=1, help="Milvus writer actors")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, help="embed only the first N files (a quick local run)")
    args = parser.parse_args()

    import ray

    from lookalike import embedders

    if args.milvus_lite:
        # Milvus Lite runs inside one process; the Ray workers reach it over gRPC like a real server.
        from milvus_lite.server_manager import server_manager_instance

        args.milvus_lite.parent.mkdir(parents=True, exist_ok=True)
        db = str(args.milvus_lite.resolve())
        local = server_manager_instance.start_and_get_uri(db if db.endswith(".db") else db + ".db")
        if local is None:
            raise SystemExit(f"could not start Milvus Lite on {db}")
        kind = f"milvus://{local.removeprefix('http://')}/lookalike?index=FLAT"
    else:
        kind = args.milvus
    out = args.out if "://" in args.out else str(Path(args.out).resolve())
    if "://" not in out:
        Path(out).mkdir(parents=True, exist_ok=True)
    marker = str(Path(out) / "lookalike-index.json") if "://" not in out else "lookalike-index.json"

    started = time.perf_counter()
    if args.address:
        ray.init(address=args.address)
    else:
        # A local Ray on loopback. Logical CPUs above the cores: reading and writing mostly wait on I/O, and
        # Ray Data stalls when the read, embed and write stages cannot all hold a CPU at once.
        settings = {"num_cpus": max(4, os.cpu_count() or 1), "_node_ip_address": "127.0.0.1"}
        try:
            ray.init(**settings, include_dashboard=False)
        except Exception:  # noqa: BLE001 - its GCS server or raylet sometimes never starts (RuntimeError), or the
            # node times out during startup on a busy machine (a bare Exception): seen in this repository's CI
            ray.shutdown()
            ray.init(**settings, include_dashboard=False)
    dim = embedders.create(args.embedder).dim
    index = create_index(kind, dim, name=args.embedder)  # drops an existing collection of that name
    index.save(Path(marker))
    # Not kept open while Ray runs: an idle connection's keep-alive pings get it dropped by the server
    # ("Too many pings"), and the reconnect at the end then fails.
    index.close()

    files = ray.data.read_binary_files(args.shards, include_paths=True, file_extensions=IMAGE_EXTENSIONS)
    if args.limit:
        files = files.limit(args.limit)
    vectors = files.map_batches(
        Embed,
        fn_constructor_kwargs={"embedder": args.embedder},
        batch_size=args.batch_size,
        batch_format="numpy",
        concurrency=args.embedders,
        num_cpus=1,
    )
    written = vectors.map_batches(
        Write, fn_constructor_kwargs={"marker": marker}, batch_format="numpy", concurrency=args.writers, num_cpus=0.25
    )
    written.write_parquet(os.path.join(out, "manifest"))
    seconds = time.perf_counter() - started

    manifest = ray.data.read_parquet(os.path.join(out, "manifest")).to_pandas()
    ray.shutdown()
    index = load_index(Path(marker))
    stored = len(index)
    summary = {
        "embedded": len(manifest),
        "in_milvus": stored,
        "seconds": round(seconds, 1),
        "images_per_second": round(len(manifest) / seconds, 1),
        "collection": index.collection,
        "kind": kind,
        "marker": marker,
    }
    if len(manifest):
        # One query through lookalike's Milvus backend: the first image's nearest neighbours.
        first = manifest.iloc[0]
        model = embedders.create(args.embedder)
        from lookalike.images import open_image

        from_path = first["path"].removeprefix("local://")
        query = model.embed_images([open_image(from_path)]) if "://" not in from_path else None
        if query is not None:
            scores, ids = index.search(query, 5)
            by_id = manifest.set_index("id")
            summary["query"] = first["path"]
            summary["neighbours"] = [
                {"path": by_id.loc[i, "path"], "label": by_id.loc[i, "label"], "score": round(float(s), 4)}
                for s, i in zip(scores[0], ids[0], strict=True)
                if i >= 0
            ]
    print(json.dumps(summary, indent=2))
    return 0 if stored == len(manifest) else 1


if __name__ == "__main__":
    raise SystemExit(main())
