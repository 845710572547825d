"""Writing an evaluation as markdown (with a precision@k plot) and JSON."""

from __future__ import annotations

from pathlib import Path

from ..storage import atomic_path, write_json
from .runner import Evaluation

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
    header = "| embedder | " + " | ".join(columns) + " | dims | bytes/image | images/s |"
    lines = [header, "|" + "---|" * (len(columns) + 4)]
    for result in evaluation.results:
        speed = f"{result.images_per_second:.1f}" if result.images_per_second else "n/a"
        cells = " | ".join(f"{result.figures[c]:.4f}" for c in columns)
        lines.append(f"| {result.embedder} | {cells} | {result.dim} | {result.bytes_per_image} | {speed} |")
    return "\n".join(lines)


def plot_precision_curves(evaluation: Evaluation, path: Path) -> None:
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


def write_report(evaluation: Evaluation, out_dir: Path, k: int = 5) -> tuple[Path, Path]:
    """Write report.md, results.json and precision_at_k.png into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, plot_path = out_dir / "results.json", out_dir / "report.md", out_dir / "precision_at_k.png"
    write_json(json_path, evaluation.to_dict())
    plot_precision_curves(evaluation, plot_path)
    m = evaluation.machine
    lines = [
        "# lookalike evaluation",
        "",
        f"Folder `{evaluation.folder}`: {evaluation.images} images, labels "
        + ", ".join(f"{label} ({n})" for label, n in evaluation.labels.items())
        + ". Leave-one-out: every image queries all the others; metric definitions in docs/metrics.md.",
        "",
        summary_table(evaluation, k),
        "",
        "![precision@k](precision_at_k.png)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}. "
        f"Wall time {evaluation.wall_seconds:.1f} s (started {evaluation.started}).",
        "",
    ]
    for result in evaluation.results:
        speed = f"{result.images_per_second:.1f} images/s" if result.images_per_second else "n/a"
        lines.append(f"- {result.embedder}: embedding throughput {speed}, {result.throughput_note}.")
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
