"""The `lookalike` command, end to end, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lookalike.cli.main import main


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
    assert "| efficientnet-lite0 |" in printed and "MAP@R" in printed
    figures = json.loads((out / "results.json").read_text())
    result = figures["results"][0]
    assert figures["images"] == 24 and result["figures"]["queries"] == 24
    assert result["figures"]["precision@5"] >= 0.8
    report = (out / "report.md").read_text()
    assert report.count("efficientnet-lite0") >= 2
    # Without --visuals the precision@k curve is a table (no plotting library needed), with the same figures.
    assert not (out / "precision_at_k.png").exists()
    row = next(line for line in report.splitlines() if line.startswith("| efficientnet-lite0 |") and "k=" not in line)
    curve_row = [line for line in report.splitlines() if line.startswith("| efficientnet-lite0 |")][-1]
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
