"""The evaluation report: what its pictures show, and the identical files it lists."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import Collection
from lookalike.cli.main import main
from lookalike.evaluation.metrics import evaluate_rankings, per_class_figures, per_query_figures, precision_curve
from lookalike.evaluation.report import (
    THUMB,
    embedding_map,
    example_grid,
    example_queries,
    failure_table,
    plot_precision_curves,
    worst_classes,
    write_report,
)
from lookalike.evaluation.runner import EmbedderEvaluation, Evaluation, RetrievalSample, evaluate_folder

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
        [
            "precision_at_k.png", "embedding_map.png", "examples-efficientnet-lite0.png", "examples-mean-colour.png",
            "failures-efficientnet-lite0.png", "failures-mean-colour.png",
        ]
    )  # fmt: skip
    assert report.count("## Where retrieval fails") == 1 and "| cat | 12 |" in report and "| dog | 13 |" in report
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


def _five_photos(data_dir: Path) -> RetrievalSample:
    """Three cats (label a) and two dogs (label b) with a ranking chosen by hand (2 results per query)."""
    paths = [str(data_dir / "cat" / f"cat.{i}.jpg") for i in (1, 2, 3)]
    paths += [str(data_dir / "dog" / f"dog.{i}.jpg") for i in (1, 2)]
    ranking = np.array([[3, 1, 2, 4], [0, 2, 3, 4], [4, 3, 0, 1], [4, 0, 1, 2], [0, 3, 1, 2]])
    vectors = np.eye(5, dtype=np.float32)
    return RetrievalSample(vectors, ["a", "a", "a", "b", "b"], paths, ranking)


def test_per_class_average_precision_by_hand(data_dir: Path) -> None:
    sample = _five_photos(data_dir)
    # AP@R per query: q0 ranks a cat 2nd of R=2 -> (1/2)(1/2); q1 both first -> 1; q2 none in its top 2 -> 0;
    # q3 finds its one dog first -> 1; q4 does not -> 0.
    per_query = per_query_figures(sample.ranking, sample.labels, k=2)
    np.testing.assert_allclose(per_query["AP@R"], [0.25, 1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(per_query["precision@2"], [0.5, 1.0, 0.0, 0.5, 0.5])
    classes = per_class_figures(sample.ranking, sample.labels, k=2)
    assert [(c["label"], c["images"]) for c in classes] == [("a", 3), ("b", 2)]  # worst first
    assert classes[0]["MAP@R"] == pytest.approx(1.25 / 3) and classes[1]["MAP@R"] == pytest.approx(0.5)
    assert classes[0]["precision@2"] == pytest.approx(0.5) and classes[1]["precision@2"] == pytest.approx(0.5)
    overall = evaluate_rankings(sample.ranking, sample.labels, (2,))["MAP@R"]
    assert overall == pytest.approx((3 * classes[0]["MAP@R"] + 2 * classes[1]["MAP@R"]) / 5) == pytest.approx(0.45)
    worst = worst_classes(sample, k=2)
    assert [(w["label"], w["query"], w["wrong"]) for w in worst] == [("a", 2, [4, 3]), ("b", 4, [0])]
    table = failure_table(sample, k=2).splitlines()
    assert table[2] == "| a | 3 | 0.4167 | 0.5000 | cat.3.jpg (0.000) | dog.2.jpg (b), dog.1.jpg (b) |"
    assert table[3] == "| b | 2 | 0.5000 | 0.5000 | dog.2.jpg (0.000) | cat.1.jpg (a) |"


@pytest.mark.parametrize("visuals", [False, True])
def test_report_shows_where_retrieval_fails(data_dir: Path, tmp_path: Path, visuals: bool) -> None:
    sample = _five_photos(data_dir)
    evaluation = Evaluation(
        folder=str(data_dir), images=5, labels={"a": 3, "b": 2}, duplicate_groups=[], skipped=[], ks=[1, 2],
        machine={"cpu": "x", "cores": "2", "python": "3.11", "torch": "-"},
    )  # fmt: skip
    figures = evaluate_rankings(sample.ranking, sample.labels, (1, 2))
    curve = precision_curve(sample.ranking, sample.labels, 4)
    evaluation.results.append(EmbedderEvaluation("net", 5, 20, figures, curve, None, "", 0.0))
    evaluation.samples["net"] = sample
    md_path, json_path = write_report(evaluation, tmp_path, k=2, visuals=visuals)
    report = md_path.read_text()
    assert "## Where retrieval fails" in report
    assert "| a | 3 | 0.4167 | 0.5000 | cat.3.jpg (0.000) | dog.2.jpg (b), dog.1.jpg (b) |" in report
    per_class = json.loads(json_path.read_text())["per_class"]["net"]
    assert [(c["label"], round(c["MAP@R"], 4)) for c in per_class] == [("a", 0.4167), ("b", 0.5)]
    grid = tmp_path / "failures-net.png"
    assert grid.is_file() == visuals and ("failures-net.png" in report) == visuals
    if visuals:
        with Image.open(grid) as png:
            image = png.convert("RGB")
        pad = 6
        assert image.size == (3 * (THUMB + pad) + pad, 2 * (THUMB + pad) + pad)  # query + top 2, two classes
        # row 1 (class a's worst query, cat.3): both results are dogs, framed red
        for col in (1, 2):
            x = pad + col * (THUMB + pad) + pad // 2
            assert image.getpixel((x - 1, pad + THUMB // 2)) == RED
