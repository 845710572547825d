"""The evaluation report: what its pictures show, and the identical files it lists."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from lookalike import Collection
from lookalike.cli.main import main
from lookalike.evaluation.report import (
    THUMB,
    embedding_map,
    example_grid,
    example_queries,
    plot_precision_curves,
    write_report,
)
from lookalike.evaluation.runner import EmbedderEvaluation, Evaluation, evaluate_folder

GREEN, RED = (0x1A, 0x96, 0x41), (0xD7, 0x19, 0x1C)  # the example grid's frames: same label, other label


def test_precision_plot_draws_one_labelled_curve_per_embedder(tmp_path: Path) -> None:
    evaluation = Evaluation(
        folder="/photos", images=30, labels={"a": 15, "b": 15}, duplicate_groups=[], skipped=[], ks=[1, 5], machine={}
    )
    curves = {"net-a": [1.0, 0.75, 0.5, 0.5], "net-b": [0.5, 0.5, 0.25, 0.0]}
    for name, curve in curves.items():
        evaluation.results.append(
            EmbedderEvaluation(name, 3, 12, {}, curve, images_per_second=None, throughput_note="", eval_seconds=0.0)
        )
    figure = plot_precision_curves(evaluation, tmp_path / "curves.png")
    (axes,) = figure.axes
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("k", "precision@k")
    assert "30 images" in axes.get_title()
    assert [line.get_label() for line in axes.lines] == list(curves)
    for line, curve in zip(axes.lines, curves.values(), strict=True):
        assert list(line.get_xdata()) == [1, 2, 3, 4]
        assert list(line.get_ydata()) == curve
    assert [text.get_text() for text in axes.get_legend().get_texts()] == list(curves)
    with Image.open(tmp_path / "curves.png") as png:
        assert png.size == (600, 400)  # 6 x 4 inches at 100 dpi: the figure that was checked is the one saved


def test_report_lists_identical_files_and_draws_a_map_and_examples_per_embedder(
    sample_folder: Path, tmp_path: Path, mean_colour: str, capsys: pytest.CaptureFixture[str]
) -> None:
    original = sample_folder / "cat" / "cat.1.jpg"
    copy = sample_folder / "dog" / "copy-of-cat.1.jpg"  # the same bytes, filed under another label
    shutil.copy(original, copy)
    names = ["efficientnet-lite0", mean_colour]
    with Collection.open(tmp_path / "collection") as collection:
        evaluation = evaluate_folder(sample_folder, collection, names)
    assert evaluation.images == 25 and evaluation.labels == {"cat": 12, "dog": 13}
    assert evaluation.duplicate_groups == [[str(original), str(copy)]]

    md_path, json_path = write_report(evaluation, tmp_path / "report", visuals=True)
    report = md_path.read_text()
    assert "Exact duplicate files in the gallery (1 groups" in report
    assert f"- {original} = {copy}" in report
    assert json.loads(json_path.read_text())["duplicate_groups"] == [[str(original), str(copy)]]
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert sorted(linked) == sorted(
        ["precision_at_k.png", "embedding_map.png", "examples-efficientnet-lite0.png", "examples-mean-colour.png"]
    )
    assert all((md_path.parent / name).is_file() for name in linked), "every picture the report links exists"

    # The map: one panel per embedder, the same 25 images in each, one colour per label.
    figure = embedding_map(evaluation, tmp_path / "map.png")
    assert [axes.get_title() for axes in figure.axes] == names
    for axes in figure.axes:
        assert {c.get_label(): len(c.get_offsets()) for c in axes.collections} == {"cat": 12, "dog": 13}
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == ["cat", "dog"]

    # The examples: a row per query, its top 5 framed green when they share its label, red otherwise.
    sample = evaluation.samples[mean_colour]
    grid = example_grid(sample, tmp_path / "grid.png")
    queries = example_queries(sample)
    pad = 6
    assert len(queries) == 6 and grid.size == (6 * (THUMB + pad) + pad, 6 * (THUMB + pad) + pad)
    frames = []
    for row, query in enumerate(queries):
        for col, hit in enumerate(sample.ranking[query, :5].tolist(), start=1):
            x, y = pad + col * (THUMB + pad) + pad // 2, pad + row * (THUMB + pad)
            frames.append(grid.getpixel((x - 2, y + THUMB // 2)))
            assert frames[-1] == (GREEN if sample.labels[hit] == sample.labels[query] else RED), (row, col)
    assert {GREEN, RED} <= set(frames), "mean colour mixes cats and dogs up: both frames occur"

    # The command line says so too.
    out = tmp_path / "cli-report"
    assert main(["evaluate", str(sample_folder), "--collection", str(tmp_path / "collection"), "--out", str(out)]) == 0
    assert "note: 1 group(s) of identical files in the gallery" in capsys.readouterr().out
