"""Training: loss falls, saved models reload to the same vectors, resume, and the held-out split.

Every run here is tiny (the 24 sample photos, 64x64 pixels or cached features, 1-3 epochs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike import Collection
from lookalike.cli.main import main
from lookalike.training import TrainingRun, train
from lookalike.training.loop import CHECKPOINT
from lookalike.training.saved import read_split
from lookalike.training.split import Split, SplitRule

# Big validation and test shares so 24 images still give every split both labels.
RULE = SplitRule(test_fraction=0.25, val_fraction=0.25)


def run(method: str, folder: Path, **kwargs: object) -> TrainingRun:
    spec = {"batch_size": 8, **kwargs.pop("spec", {})}
    if method == "autoencoder" or spec.get("backbone") == "scratch":
        spec.setdefault("width", 8)  # a tiny network: these tests check behaviour, not quality
    return TrainingRun(method=method, folder=folder, split=RULE, spec=spec, **kwargs)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_split_is_by_content_stable_and_keeps_duplicates_together(shared_collection: Collection) -> None:
    records = shared_collection.catalog.records(status="ok")
    split = Split.of(records, RULE)
    assert split.counts() == Split.of(list(reversed(records)), RULE).counts()
    assert sum(split.counts().values()) == len({r.sha256 for r in records})
    assert not set(split.train) & set(split.test) and not set(split.val) & set(split.test)
    # A copy of an image (same content, other path) lands on the same side.
    copy = records[0].__class__(**{**records[0].__dict__, "id": -1, "path": "/elsewhere/copy.jpg"})
    assert RULE.assign(copy.sha256) == RULE.assign(records[0].sha256)
    # Same rule, other fractions: a different split (the rule is part of what is saved).
    assert Split.of(records, SplitRule(0.5, 0.25)).counts() != split.counts()


def test_autoencoder_loss_falls_and_model_reloads_to_the_same_vectors(sample_folder: Path, tmp_path: Path) -> None:
    with Collection.open(tmp_path / "col") as collection:
        trained = train(collection, run("autoencoder", sample_folder, epochs=3, patience=5), bars=False)
        losses = [h["train_loss"] for h in trained.info["history"]]
        assert losses[-1] < losses[0] * 0.9, losses
        images = [sample_folder / "cat" / "cat.1.jpg", sample_folder / "dog" / "dog.2.jpg"]
        embedder = collection.embedder("autoencoder")
        expected = torch.nn.functional.normalize(
            trained.module(torch.from_numpy(np.stack([embedder.preprocessing(_open(p)) for p in images]))), dim=1
        ).detach()
        vectors = np.stack([collection.embed(p, embedder="autoencoder") for p in images])
    assert vectors.shape == (2, 256)
    np.testing.assert_allclose(vectors, expected.numpy(), atol=1e-4)
    # A new process (fresh registry lookup) gets the same vectors, via ONNX and via PyTorch.
    with Collection.open(tmp_path / "col") as again:
        np.testing.assert_allclose(again.embed(images[0], embedder="autoencoder"), vectors[0], atol=1e-4)
    from lookalike.embedders import create

    eager = create("autoencoder", runtime="torch", models_dir=tmp_path / "col" / "models")
    np.testing.assert_allclose(eager.embed_images([_open(images[1])])[0], vectors[1], atol=1e-4)


def _open(path: Path):
    from lookalike.images import open_image

    return open_image(path)


@pytest.mark.parametrize(
    ("method", "spec"),
    [("siamese", {"backbone": "frozen", "mining": "random"}), ("triplet", {"backbone": "frozen"})],
)
def test_metric_learning_loss_falls_on_the_training_images(
    shared_collection: Collection, method: str, spec: dict, tmp_path: Path
) -> None:
    """The loss over all training images (fixed, not a random batch) is lower after training."""
    from lookalike.training import metric_learning
    from lookalike.training.loop import seed_everything
    from lookalike.training.prepared import Prepared

    records = shared_collection.catalog.records(status="ok")
    prepared = Prepared.of(records, Split.of(records, RULE), tmp_path / "cache", seed=0)
    seed_everything(0)
    spec_obj = metric_learning.MetricSpec(method=method, batch_size=8, **spec)
    task = metric_learning.MetricTask(spec_obj, metric_learning.build_network(spec_obj), prepared)
    everything = (
        torch.from_numpy(np.asarray(task.train_inputs[:, 0], np.float32)),
        torch.from_numpy(prepared.train_labels),
    )

    def full_loss() -> float:
        seed_everything(1)  # the same random pairs before and after
        with torch.no_grad():
            return float(task.loss(everything))

    before = full_loss()
    from lookalike.training.loop import LoopConfig, fit

    fit(task, tmp_path / "work", LoopConfig(epochs=3, patience=5, lr=3e-3), progress=False)
    assert full_loss() < before * 0.9, (before, full_loss())


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_a_kill_continues_from_the_checkpoint(sample_folder: Path, tmp_path: Path, schedule: str) -> None:
    """Interrupted after epoch 1 and run again: it starts at epoch 2 and ends exactly where an
    uninterrupted run ends (same seed), whatever the learning-rate schedule."""
    request = run("siamese", sample_folder, epochs=2, patience=5, schedule=schedule, spec={"backbone": "scratch"})
    with Collection.open(tmp_path / "whole") as collection:
        whole = train(collection, request, bars=False)

    class Killed(KeyboardInterrupt):
        pass

    def kill_after_first(record) -> None:
        if record.epoch == 1:
            raise Killed

    with Collection.open(tmp_path / "killed") as collection:
        with pytest.raises(Killed):
            train(collection, request, bars=False, on_epoch=kill_after_first)
        model_dir = collection.models_dir / "siamese"
        assert (model_dir / CHECKPOINT).exists() and not (model_dir / "model.json").exists()
        assert "siamese" not in collection.available_embedders()  # unfinished: not an embedder yet
        resumed_epochs: list[int] = []
        resumed = train(collection, request, bars=False, on_epoch=lambda r: resumed_epochs.append(r.epoch))
    assert resumed_epochs == [2]  # epoch 1 was not trained again
    assert [h["epoch"] for h in resumed.info["history"]] == [1, 2]
    assert not (model_dir / CHECKPOINT).exists()
    for key, value in weights(whole.module).items():
        torch.testing.assert_close(resumed.module.state_dict()[key], value, msg=key)


def test_cosine_schedule_decays_every_group_to_zero_and_keeps_the_warm_up(tmp_path: Path) -> None:
    """Per step, each group's rate is its initial rate times the half cosine over all epochs;
    a group the task silences for an epoch (the fine-tuning warm-up) stays at 0 for that epoch."""
    from lookalike.training.loop import LoopConfig, Task, cosine_factor, fit

    class Recorder(Task):
        def __init__(self) -> None:
            self.model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
            self.rates: list[tuple[float, float]] = []

        def parameter_groups(self, lr: float) -> list[dict[str, object]]:
            return [
                {"params": self.model[0].parameters(), "lr": lr},
                {"params": self.model[1].parameters(), "lr": lr / 10},
            ]

        def start_epoch(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer
            if epoch == 1:
                optimizer.param_groups[1]["lr"] = 0.0

        def steps_per_epoch(self) -> int:
            return 4

        def batches(self, epoch: int):
            return [torch.ones(2, 3)] * 4

        def loss(self, batch: torch.Tensor) -> torch.Tensor:
            self.rates.append(tuple(g["lr"] for g in self.optimizer.param_groups))
            return self.model(batch).pow(2).mean()

        def validate(self) -> dict[str, float]:
            return {"MAP@R": float(len(self.rates))}  # always improving: every epoch runs

    task = Recorder()
    fit(task, tmp_path, LoopConfig(epochs=3, lr=0.1, schedule="cosine"), progress=False)
    expected = [cosine_factor(epoch + step / 4, 3) for epoch in range(3) for step in range(4)]
    assert [head for head, _ in task.rates] == pytest.approx([0.1 * f for f in expected])
    assert [rest for _, rest in task.rates] == pytest.approx([0.0] * 4 + [0.01 * f for f in expected[4:]])
    assert task.rates[0][0] == pytest.approx(0.1) and task.rates[-1][0] < 0.01  # decays towards 0
    with pytest.raises(ValueError, match="schedule"):
        LoopConfig(schedule="linear")


def test_resume_refuses_a_checkpoint_of_other_settings(sample_folder: Path, tmp_path: Path) -> None:
    request = run("siamese", sample_folder, epochs=2, spec={"backbone": "scratch"})

    def stop(record) -> None:
        raise KeyboardInterrupt

    with Collection.open(tmp_path / "col") as collection:
        with pytest.raises(KeyboardInterrupt):
            train(collection, request, bars=False, on_epoch=stop)
        other = run("siamese", sample_folder, epochs=2, spec={"backbone": "scratch", "dim": 64})
        with pytest.raises(ValueError, match="other settings"):
            train(collection, other, bars=False)


def test_training_never_sees_the_evaluation_split(
    sample_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every image training opens is in train/val; evaluation then uses exactly the rest."""
    import lookalike.training.data as data

    opened: list[str] = []
    real_open = data.open_image

    def recording_open(path, **kwargs):
        opened.append(str(path))
        return real_open(path, **kwargs)

    monkeypatch.setattr(data, "open_image", recording_open)
    col = tmp_path / "col"
    with Collection.open(col) as collection:
        trained = train(collection, run("autoencoder", sample_folder, epochs=1), bars=False)
        records = collection.catalog.records(status="ok")
    split = read_split(col / "models" / "autoencoder")
    by_path = {r.path: r.sha256 for r in records}
    test_paths = {p for p, sha in by_path.items() if sha in set(split.test)}
    assert opened and test_paths
    assert not set(opened) & test_paths
    assert {by_path[p] for p in opened} == set(split.train) | set(split.val)
    assert trained.info["split"]["counts"] == split.counts()

    out = tmp_path / "report"
    assert main(["evaluate", str(sample_folder), "--collection", str(col), "--out", str(out),
                 "--embedders", "efficientnet-lite0,autoencoder", "--no-visuals"]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == len(test_paths)
    assert results["held_out"]["models"] == ["autoencoder"]
    assert [r["training_seconds"] is None for r in results["results"]] == [True, False]
    assert "training time" in (out / "report.md").read_text()


def test_cli_train_compact_autoencoder_and_report_visuals(sample_folder: Path, tmp_path: Path, capsys) -> None:
    col = str(tmp_path / "col")
    argv = ["train", "autoencoder", str(sample_folder), "--collection", col, "--variant", "features", "--epochs", "1"]
    argv += ["--val-fraction", "0.25", "--test-fraction", "0.25", "--batch-size", "8", "--json"]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "autoencoder-compact" and info["dim"] == 128
    assert main(argv) == 2  # already trained: refused without --restart
    out = tmp_path / "report"
    assert main(["evaluate", str(sample_folder), "--collection", col, "--out", str(out),
                 "--embedders", "efficientnet-lite0,autoencoder-compact"]) == 0  # fmt: skip
    report = (out / "report.md").read_text()
    assert "Held-out test split" in report
    for name in ("embedding_map.png", "examples-efficientnet-lite0.png", "examples-autoencoder-compact.png"):
        assert (out / name).stat().st_size > 1000


def test_finetune_warms_up_the_head_first_and_embeds_mirror_images_alike(
    sample_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 1 trains only the new head (the pretrained blocks are untouched), epoch 2 fine-tunes
    the blocks too; the saved embedder gives an image and its mirror image the same vector."""
    spec = {"backbone": "finetune", "backbone_model": "efficientnet-lite0", "trainable_blocks": 1, "views": 2,
            "head_warmup_epochs": 1}  # fmt: skip
    request = run("triplet", sample_folder, epochs=2, patience=5, lr=3e-3, spec=spec)
    snapshots: list[dict[str, torch.Tensor]] = []
    from lookalike.training import session

    real_fit = session.fit

    def recording_fit(task, *args, **kwargs):
        snapshots.append(weights(task.model))
        kwargs["on_epoch"] = lambda record: snapshots.append(weights(task.model))
        return real_fit(task, *args, **kwargs)

    monkeypatch.setattr(session, "fit", recording_fit)
    with Collection.open(tmp_path / "col") as collection:
        train(collection, request, bars=False)
        embedder = collection.embedder("triplet")
        crops = np.stack([embedder.preprocess(_open(p)) for p in sorted(sample_folder.rglob("*.jpg"))[:4]])
        vectors, mirrored = embedder.embed_arrays(crops), embedder.embed_arrays(crops[:, :, ::-1].copy())
    initial, after_warmup, after_finetune = snapshots
    block = "backbone.network._blocks.15._project_conv.weight"
    assert torch.equal(after_warmup[block], initial[block])  # warm-up: blocks frozen
    assert not torch.equal(after_warmup["head.0.weight"], initial["head.0.weight"])  # ... head trained
    assert not torch.equal(after_finetune[block], after_warmup[block])  # then the blocks move
    frozen = "backbone.network._blocks.14._project_conv.weight"  # before the cut: never trained
    assert torch.equal(after_finetune[frozen], initial[frozen])
    np.testing.assert_allclose(mirrored, vectors, atol=1e-5)
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3  # ... and different images stay different


def test_retraining_a_name_drops_the_old_models_vectors(sample_folder: Path, tmp_path: Path) -> None:
    """Vectors are stored by embedder name: after `--restart` they must come from the new model."""
    image = sample_folder / "cat" / "cat.1.jpg"
    with Collection.open(tmp_path / "col") as collection:
        train(collection, run("autoencoder", sample_folder, epochs=1, seed=0), bars=False)
        collection.sync(sample_folder, embedder="autoencoder")
        assert len(collection.search(image, k=3, embedder="autoencoder")) == 3  # an index is built and saved
        ids, old = collection.catalog.vectors("autoencoder")
        train(collection, run("autoencoder", sample_folder, epochs=1, seed=1, restart=True), bars=False)
        assert collection.catalog.count_vectors("autoencoder") == 0
        collection.sync(sample_folder, embedder="autoencoder")
        new_ids, new = collection.catalog.vectors("autoencoder")
        record = collection.catalog.get_by_path(str(image.resolve()))
        fresh = collection.embed(image, embedder="autoencoder")
        index_vector = collection.index("autoencoder")
        hits = collection.search(image, k=3, embedder="autoencoder")
    np.testing.assert_array_equal(new_ids, ids)
    row = list(new_ids).index(record.id)
    # Stored vector == what the new model gives (up to JPEG draft decoding), and not the old one.
    assert float(new[row] @ fresh) > 0.999 > float(old[row] @ fresh) + 0.005, (new[row] @ fresh, old[row] @ fresh)
    assert len(index_vector) == 24 and len(hits) == 3


def test_a_larger_pretrained_backbone_is_fine_tuned_saved_and_reloaded(sample_folder: Path, tmp_path: Path) -> None:
    """`--backbone-model efficientnet-lite2`: 21 blocks at 260 pixels; only the blocks after the cut train,
    and the saved embedder rebuilds the same network (same vectors in a new collection handle)."""
    spec = {"backbone": "finetune", "backbone_model": "efficientnet-lite2", "trainable_blocks": 1, "views": 2}
    request = run("siamese", sample_folder, epochs=1, patience=5, lr=3e-3, spec={**spec, "head_warmup_epochs": 0})
    images = sorted(sample_folder.rglob("*.jpg"))[:3]
    with Collection.open(tmp_path / "col") as collection:
        from lookalike.embedders.networks import EfficientNetBackbone

        pretrained = weights(EfficientNetBackbone(1, True, "efficientnet-lite2"))
        info = train(collection, request, bars=False).info
        assert info["architecture"]["backbone"] == "efficientnet-lite2"
        embedder = collection.embedder("siamese")
        assert embedder.preprocessing.crop == 260
        from lookalike.training.saved import load_module

        module, _ = load_module(tmp_path / "col" / "models" / "siamese")
        trained = {k.removeprefix("backbone."): v for k, v in weights(module).items()}
        vectors = np.stack([collection.embed(p, embedder="siamese") for p in images])
    assert not torch.equal(
        trained["network._blocks.20._project_conv.weight"], pretrained["network._blocks.20._project_conv.weight"]
    )
    assert torch.equal(
        trained["network._blocks.19._project_conv.weight"], pretrained["network._blocks.19._project_conv.weight"]
    )
    with Collection.open(tmp_path / "col") as again:
        np.testing.assert_allclose(np.stack([again.embed(p, embedder="siamese") for p in images]), vectors, atol=1e-4)
