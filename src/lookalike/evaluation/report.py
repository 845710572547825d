"""Writing an evaluation as markdown (with a precision@k plot) and JSON."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..storage import atomic_path, write_json
from .metrics import per_class_figures, per_query_figures
from .runner import Evaluation, RetrievalSample

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

MAP_POINTS = 1500  # t-SNE on more points adds minutes and no readability
EXAMPLE_QUERIES = 6
#: classes shown in "where retrieval fails", worst first, and wrong neighbours listed per example query
WORST_CLASSES = 5
WRONG_SHOWN = 5
THUMB = 112

TABLE_COLUMNS = [
    "precision@1",
    "precision@5",
    "recall@5",
    "hit_rate@5",
    "mAP@5",
    "MAP@R",
    "R-precision",
    "knn_accuracy@5",
]


def summary_table(evaluation: Evaluation, k: int = 5) -> str:
    columns = [c.replace("@5", f"@{k}") for c in TABLE_COLUMNS]
    columns = [c for c in columns if evaluation.results and c in evaluation.results[0].figures]
    # Training time only when a trained embedder is in the table (pretrained-only tables stay as they were).
    trained = any(r.training_seconds is not None for r in evaluation.results)
    header = "| embedder | " + " | ".join(columns) + " | dims | bytes/image | images/s |"
    header += " training time |" if trained else ""
    lines = [header, "|" + "---|" * (len(columns) + 4 + trained)]
    for result in evaluation.results:
        speed = f"{result.images_per_second:.1f}" if result.images_per_second else "n/a"
        cells = " | ".join(f"{result.figures[c]:.4f}" for c in columns)
        line = f"| {result.embedder} | {cells} | {result.dim} | {result.bytes_per_image} | {speed} |"
        if trained:
            line += f" {_duration(result.training_seconds)} |"
        lines.append(line)
    return "\n".join(lines)


CURVE_POINTS = (1, 2, 5, 10, 20, 50)


def curve_table(evaluation: Evaluation) -> str:
    """precision@k at a few k, one row per embedder (the plot's numbers, for reports without pictures)."""
    points = [k for k in CURVE_POINTS if evaluation.results and k <= len(evaluation.results[0].precision_curve)]
    lines = ["| precision@k | " + " | ".join(f"k={k}" for k in points) + " |", "|---|" + "---|" * len(points)]
    for result in evaluation.results:
        cells = " | ".join(f"{result.precision_curve[k - 1]:.4f}" for k in points)
        lines.append(f"| {result.embedder} | {cells} |")
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "none (pretrained)"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def plot_precision_curves(evaluation: Evaluation, path: Path) -> Figure:
    """precision@k against k, one line per embedder, saved as a PNG; returns the (closed) figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for result in evaluation.results:
        ax.plot(range(1, len(result.precision_curve) + 1), result.precision_curve, label=result.embedder)
    ax.set_xlabel("k")
    ax.set_ylabel("precision@k")
    ax.set_title(f"precision@k, leave-one-out, {evaluation.images} images")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return fig


def embedding_map(evaluation: Evaluation, path: Path, points: int = MAP_POINTS) -> Figure:
    """One t-SNE panel per embedder, the same (deterministic) images in each, coloured by label; saved as a
    PNG, and the (closed) figure returned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    results = evaluation.results
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        sample = evaluation.samples[result.embedder]
        n = len(sample.vectors)
        chosen = np.sort(np.random.default_rng(0).permutation(n)[: min(points, n)])
        labels = np.asarray(sample.labels)[chosen]
        xy = TSNE(2, init="pca", random_state=0, perplexity=min(30.0, max(2.0, (len(chosen) - 1) / 3))).fit_transform(
            sample.vectors[chosen]
        )
        for label in sorted(set(labels.tolist())):
            mask = labels == label
            ax.scatter(xy[mask, 0], xy[mask, 1], s=4, alpha=0.6, label=label)
        ax.set_title(result.embedder)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(set(evaluation.labels)) <= 12:
        axes[0][0].legend(markerscale=3, fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return fig


def example_queries(sample: RetrievalSample, count: int = EXAMPLE_QUERIES) -> list[int]:
    """The same queries for every embedder: evenly spread over the images sorted by path."""
    order = np.argsort(np.asarray(sample.paths), kind="stable")
    picks = np.linspace(0, len(order) - 1, num=min(count, len(order))).round().astype(int)
    return [int(order[i]) for i in picks]


def worst_classes(sample: RetrievalSample, count: int = WORST_CLASSES, k: int = 5) -> list[dict[str, object]]:
    """The `count` classes whose images find each other worst (lowest MAP@R), each with its worst query
    (lowest AP@R; ties: first by path) and the wrong neighbours among that query's top k (positions into
    `sample.paths`)."""
    ap = per_query_figures(sample.ranking, sample.labels, k)["AP@R"]
    labels = np.asarray(sample.labels)
    paths = np.asarray(sample.paths)
    out = []
    for row in per_class_figures(sample.ranking, sample.labels, k)[:count]:
        members = np.flatnonzero((labels == row["label"]) & ~np.isnan(ap))
        members = members[np.lexsort((paths[members], ap[members]))]
        query = int(members[0])
        wrong = [int(i) for i in sample.ranking[query, :k] if labels[i] != labels[query]]
        out.append({**row, "query": query, "query_AP@R": float(ap[query]), "wrong": wrong})
    return out


def failure_table(sample: RetrievalSample, count: int = WORST_CLASSES, k: int = 5) -> str:
    """Markdown: the worst classes, an example query of each and its wrong neighbours in the top k."""
    lines = [
        f"| class | images | MAP@R | precision@{k} | worst query (AP@R) | its wrong neighbours in the top {k} |",
        "|---|---|---|---|---|---|",
    ]
    for row in worst_classes(sample, count, k):
        query = int(row["query"])  # type: ignore[call-overload]
        wrong = ", ".join(f"{Path(sample.paths[i]).name} ({sample.labels[i]})" for i in row["wrong"][:WRONG_SHOWN])  # type: ignore[attr-defined]
        lines.append(
            f"| {row['label']} | {row['images']} | {row['MAP@R']:.4f} | {row[f'precision@{k}']:.4f} | "
            f"{Path(sample.paths[query]).name} ({row['query_AP@R']:.3f}) | {wrong or 'none'} |"
        )
    return "\n".join(lines)


def example_grid(sample: RetrievalSample, path: Path, top: int = 5, queries: list[int] | None = None) -> Image.Image:
    """Rows of query + top results as thumbnails, framed green (same label) or red; saved as a PNG and returned.

    `queries`: positions of the query images (default: `example_queries`)."""
    from PIL import Image, ImageDraw, ImageOps

    from ..images import ImageError, open_image

    queries = example_queries(sample) if queries is None else queries
    pad = 6
    grid = Image.new("RGB", ((top + 1) * (THUMB + pad) + pad, len(queries) * (THUMB + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for row, q in enumerate(queries):
        for col, i in enumerate([q, *sample.ranking[q, :top].tolist()]):
            try:
                thumb = ImageOps.fit(open_image(sample.paths[i], draft_size=(THUMB, THUMB)), (THUMB, THUMB))
            except ImageError:
                thumb = Image.new("RGB", (THUMB, THUMB), "grey")
            x = pad + col * (THUMB + pad) + (pad if col else 0) // 2
            y = pad + row * (THUMB + pad)
            grid.paste(thumb, (x, y))
            if col:
                colour = "#1a9641" if sample.labels[i] == sample.labels[q] else "#d7191c"
                draw.rectangle([x - 2, y - 2, x + THUMB + 1, y + THUMB + 1], outline=colour, width=3)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return grid


def write_report(evaluation: Evaluation, out_dir: Path, k: int = 5, visuals: bool | None = None) -> tuple[Path, Path]:
    """Write report.md and results.json into `out_dir`.

    `visuals` (default: when the evaluation is on a held-out split) adds pictures: the precision@k
    curves, a 2-D map of the embeddings and a grid of example queries per embedder. Without them
    the curves are a table, and neither matplotlib nor scikit-learn is imported.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, plot_path = out_dir / "results.json", out_dir / "report.md", out_dir / "precision_at_k.png"
    data = evaluation.to_dict()
    data["per_class"] = {
        name: per_class_figures(sample.ranking, sample.labels, k) for name, sample in evaluation.samples.items()
    }
    write_json(json_path, data)
    if visuals is None:
        visuals = evaluation.held_out is not None
    if visuals:
        plot_precision_curves(evaluation, plot_path)
    m = evaluation.machine
    scope = "Leave-one-out: every image queries all the others; metric definitions in docs/metrics.md."
    if evaluation.held_out is not None:
        rule = evaluation.held_out["rule"]
        scope = (
            f"Held-out test split only (the {rule['test_fraction']:.0%} of images chosen by content hash, minus any "
            f"image a trained model saw): no evaluated model was trained or validated on these images. " + scope
        )
    if evaluation.expand:
        scope += (
            f" Ranked with query expansion: each query moved towards its top {evaluation.expand} neighbours"
            " (alpha-QE, as `lookalike search --expand`), then searched again."
        )
    lines = [
        "# lookalike evaluation",
        "",
        f"Folder `{evaluation.folder}`: {evaluation.images} images, labels "
        + ", ".join(f"{label} ({n})" for label, n in evaluation.labels.items())
        + ". "
        + scope,
        "",
        summary_table(evaluation, k),
        "",
        "![precision@k](precision_at_k.png)" if visuals else curve_table(evaluation),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}. "
        f"Wall time {evaluation.wall_seconds:.1f} s (started {evaluation.started}).",
        "",
    ]
    for result in evaluation.results:
        speed = f"{result.images_per_second:.1f} images/s" if result.images_per_second else "n/a"
        lines.append(f"- {result.embedder}: embedding throughput {speed}, {result.throughput_note}.")
    if visuals and evaluation.samples:
        embedding_map(evaluation, out_dir / "embedding_map.png")
        lines += ["", "## 2-D map of the embeddings (t-SNE, coloured by label)", "", "![map](embedding_map.png)"]
        lines += ["", "## Example queries (first column) and their top 5 (green: same label, red: other)"]
        for result in evaluation.results:
            path = out_dir / f"examples-{result.embedder}.png"
            example_grid(evaluation.samples[result.embedder], path)
            lines += ["", f"### {result.embedder}", "", f"![{result.embedder}]({path.name})"]
    if evaluation.samples:
        lines += [
            "",
            "## Where retrieval fails",
            "",
            f"Per class: how well its images find each other (MAP@R of its queries, precision@{k}), the "
            f"{WORST_CLASSES} worst classes first, each with its worst query and the other classes' images in that "
            "query's top results. Every class's figures are in results.json (`per_class`).",
        ]
        for result in evaluation.results:
            sample = evaluation.samples.get(result.embedder)
            if sample is None:
                continue
            lines += ["", f"### {result.embedder}", "", failure_table(sample, k=k)]
            if visuals:
                path = out_dir / f"failures-{result.embedder}.png"
                queries = [int(row["query"]) for row in worst_classes(sample, k=k)]  # type: ignore[call-overload]
                example_grid(sample, path, top=k, queries=queries)
                lines += ["", f"![worst classes, {result.embedder}]({path.name})"]
    if evaluation.duplicate_groups:
        lines += [
            "",
            f"Exact duplicate files in the gallery ({len(evaluation.duplicate_groups)} groups, they inflate scores):",
        ]
        lines += [f"- {' = '.join(group)}" for group in evaluation.duplicate_groups]
    if evaluation.skipped:
        lines += ["", f"Skipped as unreadable ({len(evaluation.skipped)}):"]
        lines += [f"- {path}: {reason}" for path, reason in evaluation.skipped]
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return md_path, json_path
