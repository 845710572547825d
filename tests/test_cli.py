"""The `lookalike` command, end to end, as a user runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lookalike import Collection
from lookalike.cli.main import main
from lookalike.embedders import DEFAULT_EMBEDDER


def test_index_search_evaluate(sample_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    col = str(tmp_path / "col")
    (sample_folder / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")

    assert main(["index", str(sample_folder), "--collection", col, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["added"]) == 24
    assert [Path(s["path"]).name for s in summary["skipped"]] == ["broken.jpg"]

    assert main(["index", str(sample_folder), "--collection", col]) == 0
    assert "0 added, 0 updated, 0 removed, 24 unchanged, 1 skipped" in capsys.readouterr().out

    query = sample_folder / "cat" / "cat.3.jpg"
    assert main(["search", str(query), "-k", "4", "--collection", col, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 4 and str(query) not in [r["path"] for r in results]
    assert sum(r["label"] == "cat" for r in results) >= 3

    assert main(["search", str(query), "--collection", col]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[0].split()[0] == "1"

    out = tmp_path / "report"
    assert main(["evaluate", str(sample_folder), "--collection", col, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"| {DEFAULT_EMBEDDER} |" in printed and "MAP@R" in printed
    figures = json.loads((out / "results.json").read_text())
    result = figures["results"][0]
    assert figures["images"] == 24 and result["figures"]["queries"] == 24
    assert result["figures"]["precision@5"] >= 0.8
    report = (out / "report.md").read_text()
    assert report.count("efficientnet-lite0") >= 2
    # Without --visuals the precision@k curve is a table (no plotting library needed), with the same figures.
    assert not (out / "precision_at_k.png").exists()
    row = next(line for line in report.splitlines() if line.startswith(f"| {DEFAULT_EMBEDDER} |") and "k=" not in line)
    curve_row = [line for line in report.splitlines() if line.startswith(f"| {DEFAULT_EMBEDDER} |")][-1]
    assert row != curve_row and float(curve_row.split("|")[4]) == pytest.approx(
        result["figures"]["precision@5"], abs=1e-4
    )


def test_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(tmp_path / "q.jpg"), "--collection", str(tmp_path / "none")]) == 2
    assert "lookalike index" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "missing"), "--collection", str(tmp_path / "c")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["index", str(tmp_path), "--collection", str(tmp_path / "d"), "--embedder", "nope"]) == 2
    assert "unknown embedder" in capsys.readouterr().err
    assert not (tmp_path / "d").exists(), "a collection is not created for an unknown embedder"


# --- options -----------------------------------------------------------------------------------------


def test_search_label(shared_collection: Collection, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = data_dir / "cat" / "cat.100.jpg"
    col = str(shared_collection.path)
    assert main(["search", str(query), "-k", "30", "--label", "dog", "--collection", col, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed) == 12 and {r["label"] for r in printed} == {"dog"}
    assert [r["id"] for r in printed] == [r.id for r in shared_collection.search(query, k=30, label="dog")]
    assert main(["search", str(query), "-k", "5", "--label", "horse", "--collection", col]) == 0
    assert "no results" in capsys.readouterr().out


def test_index_log_file_holds_every_skipped_file(
    tmp_path: Path, data_dir: Path, mean_colour: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    (folder / "cat").mkdir(parents=True)
    shutil.copy(data_dir / "cat" / "cat.1.jpg", folder / "cat")
    shutil.copy(data_dir / "cat" / "cat.2.jpg", folder / "cat")
    for i in range(23):
        (folder / "cat" / f"bad-{i:02d}.jpg").write_bytes(b"not an image " * i)
    col, log = str(tmp_path / "col"), tmp_path / "logs" / "index.json"
    log.parent.mkdir()
    assert main(["index", str(folder), "--collection", col, "--embedder", mean_colour, "--log", str(log)]) == 0
    printed = capsys.readouterr().out
    assert "2 added, 0 updated, 0 removed, 0 unchanged, 23 skipped" in printed
    assert printed.count("  skipped ") == 20 and f"... and 3 more (all in {log})" in printed
    summary = json.loads(log.read_text())
    assert sorted(Path(s["path"]).name for s in summary["skipped"]) == [f"bad-{i:02d}.jpg" for i in range(23)]
    assert {s["reason"] for s in summary["skipped"]} == {"empty file (0 bytes)", "not a recognised image format"}
    assert sorted(Path(p).name for p in summary["added"]) == ["cat.1.jpg", "cat.2.jpg"]
    assert main(["index", str(folder), "--collection", col, "--embedder", mean_colour]) == 0
    assert "... and 3 more (use --log FILE)" in capsys.readouterr().out


def test_index_kind_is_chosen_once_and_kept(
    sample_folder: Path, tmp_path: Path, mean_colour: str, capsys: pytest.CaptureFixture[str]
) -> None:
    col = tmp_path / "col"
    options = ["--collection", str(col), "--embedder", mean_colour]
    assert main(["index", str(sample_folder), *options, "--index", "hnsw"]) == 0
    assert json.loads((col / "config.json").read_text())["index"] == "hnsw"
    assert json.loads((col / "indexes" / f"{mean_colour}.json").read_text())["kind"] == "HNSW32,Flat"
    capsys.readouterr()
    assert main(["stats", "--collection", str(col)]) == 0
    assert json.loads(capsys.readouterr().out)["index_type"] == "hnsw"
    # --index names the kind of a new collection; an existing one keeps its own.
    assert main(["index", str(sample_folder), *options, "--index", "flat"]) == 0
    assert json.loads((col / "config.json").read_text())["index"] == "hnsw"


def test_an_unknown_index_kind_is_a_clear_error_and_creates_nothing(
    sample_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    col = tmp_path / "col"
    assert main(["index", str(sample_folder), "--collection", str(col), "--index", "lsh"]) == 2
    assert "unknown index type 'lsh'" in capsys.readouterr().err
    assert not col.exists(), "no collection is left behind that every later run would fail on"


def test_stats(shared_collection: Collection, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--collection", str(shared_collection.path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["path"] == str(shared_collection.path)
    assert (stats["images"], stats["unreadable"], stats["labels"]) == (24, 0, {"cat": 12, "dog": 12})
    assert stats["default_embedder"] == "efficientnet-lite0" and stats["index_type"] == "auto"
    assert stats["indexed_embedders"] == {"efficientnet-lite0": 24} and stats["default_expand"] == 5
    assert main(["stats", "--collection", str(tmp_path / "none")]) == 2
    assert "lookalike index" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


# --- serve: the options reach the app ------------------------------------------------------------------


def serve_and_probe(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Run `lookalike serve ARGV` with uvicorn replaced by a probe of the app it was given."""
    import uvicorn

    seen: dict[str, object] = {}

    def probe(app, host: str, port: int, **kwargs: object) -> None:
        client = TestClient(app, base_url=f"http://127.0.0.1:{port}")

        def cors(origin: str) -> str | None:
            return client.get("/api/stats", headers={"Origin": origin}).headers.get("access-control-allow-origin")

        seen.update(
            host=host,
            port=port,
            limits=client.get("/api/limits").json(),
            cors={origin: cors(origin) for origin in ("http://a.test", "http://b.test", "http://evil.test")},
            upload_600k=client.post("/api/search", files={"file": ("x.jpg", b"\xff" * 600_000, "image/jpeg")}),
            foreign_host=TestClient(app, base_url="http://rebound.example").get("/api/stats").status_code,
        )

    monkeypatch.setattr(uvicorn, "run", probe)
    assert main(["serve", *argv]) == 0
    return seen


def test_serve_options_reach_the_app(shared_collection: Collection, monkeypatch: pytest.MonkeyPatch) -> None:
    col = ["--collection", str(shared_collection.path)]
    seen = serve_and_probe(
        [*col, "--port", "8765", "--max-upload-mb", "0.5", "--cors-origin", "http://a.test", "--cors-origin",
         "http://b.test"],
        monkeypatch,
    )  # fmt: skip
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8765)
    assert seen["limits"]["max_upload_bytes"] == 2**19
    assert seen["upload_600k"].status_code == 413 and "too large" in seen["upload_600k"].json()["detail"]
    assert seen["cors"] == {
        "http://a.test": "http://a.test",
        "http://b.test": "http://b.test",
        "http://evil.test": None,
    }
    assert seen["foreign_host"] == 400  # on loopback, only loopback host names

    defaults = serve_and_probe(col, monkeypatch)
    assert (defaults["host"], defaults["port"]) == ("127.0.0.1", 8000)
    assert defaults["limits"]["max_upload_bytes"] == 20 * 2**20
    assert defaults["upload_600k"].status_code == 422  # within the limit: read, and refused as no image
    assert defaults["cors"] == {"http://a.test": None, "http://b.test": None, "http://evil.test": None}
