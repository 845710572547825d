"""Training: loss falls, saved models reload to the same vectors, resume, and the held-out split;
the method registry and the `lookalike train` options generated from it.

Every run here is tiny (the 24 sample photos, 64x64 pixels or cached features, 1-3 epochs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike import Collection
from lookalike.cli.main import main
from lookalike.training import TrainingRun, train
from lookalike.training.loop import CHECKPOINT
from lookalike.training.saved import read_split
from lookalike.training.split import DEFAULT_SALT, Split, SplitRule

# Big validation and test shares so 24 images still give every split both labels.
RULE = SplitRule(test_fraction=0.25, val_fraction=0.25)


def run(method: str, folder: Path, **kwargs: object) -> TrainingRun:
    spec = {"batch_size": 8, **kwargs.pop("spec", {})}
    if method == "autoencoder" or spec.get("backbone") == "scratch":
        spec.setdefault("width", 8)  # a tiny network: these tests check behaviour, not quality
    return TrainingRun(method=method, folder=folder, split=RULE, spec=spec, **kwargs)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def record_weights_each_epoch(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """The trained module's weights before training and after every epoch of the next `train` (session.fit patched)."""
    from lookalike.training import session

    snapshots: list[dict[str, torch.Tensor]] = []
    real_fit = session.fit

    def recording_fit(task, *args, **kwargs):
        snapshots.append(weights(task.model))
        kwargs["on_epoch"] = lambda record: snapshots.append(weights(task.model))
        return real_fit(task, *args, **kwargs)

    monkeypatch.setattr(session, "fit", recording_fit)
    return snapshots


class Killed(KeyboardInterrupt):
    """A kill of the training process, raised by `kill_after_first`."""


def kill_after_first(record) -> None:
    if record.epoch == 1:
        raise Killed


def test_split_is_by_content_stable_and_keeps_duplicates_together(shared_collection: Collection) -> None:
    records = shared_collection.catalog.records(status="ok")
    split = Split.of(records, RULE)
    # The documented rule, computed here on its own: sha256("salt:content hash") as a 64-bit fraction u;
    # u < 0.25 test, u < 0.5 validation, the rest train.
    for record in records:
        digest = hashlib.sha256(f"{DEFAULT_SALT}:{record.sha256}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        side = "test" if u < 0.25 else "val" if u < 0.5 else "train"
        assert record.sha256 in getattr(split, side), (record.path, u)
    assert all(0 < n < len(records) for n in split.counts().values())
    assert sum(split.counts().values()) == len({r.sha256 for r in records})
    assert not set(split.train) & set(split.test) and not set(split.val) & set(split.test)
    # Neither the order of the records nor their paths matter: a moved folder keeps its split.
    assert Split.of(list(reversed(records)), RULE).to_dict() == split.to_dict()
    moved = [dataclasses.replace(r, path="/moved" + r.path) for r in records]
    assert Split.of(moved, RULE).to_dict() == split.to_dict()
    # A copy of an image (same content, other path) is the same image: listed once, selected once.
    copy = dataclasses.replace(records[0], id=-1, path="/elsewhere/copy.jpg")
    with_copy = Split.of([*records, copy], RULE)
    assert with_copy.to_dict() == split.to_dict()
    side = next(name for name in ("train", "val", "test") if records[0].sha256 in getattr(split, name))
    chosen = with_copy.select([*records, copy], side)
    assert [r.sha256 for r in chosen].count(records[0].sha256) == 1
    assert len(chosen) == len(getattr(split, side))
    # Same rule, other fractions: a different split (the rule is part of what is saved).
    assert Split.of(records, SplitRule(0.5, 0.25)).counts() != split.counts()


def test_autoencoder_loss_falls_and_model_reloads_to_the_same_vectors(sample_folder: Path, tmp_path: Path) -> None:
    with Collection.open(tmp_path / "col") as collection:
        trained = train(collection, run("autoencoder", sample_folder, epochs=3, patience=5))
        losses = [h["train_loss"] for h in trained.info["history"]]
        assert losses[-1] < losses[0] * 0.9, losses
        images = [sample_folder / "cat" / "cat.1.jpg", sample_folder / "dog" / "dog.2.jpg"]
        embedder = collection.embedder("autoencoder")
        # decoded as indexing and queries decode for this small-input network (a large JPEG reduced in draft mode)
        decoded = [collection.decode_query(p, "autoencoder") for p in images]
        expected = torch.nn.functional.normalize(
            trained.module(torch.from_numpy(np.stack([embedder.preprocessing(image) for image in decoded]))), dim=1
        ).detach()
        vectors = np.stack([collection.embed(p, embedder="autoencoder") for p in images])
    assert vectors.shape == (2, 256)
    np.testing.assert_allclose(vectors, expected.numpy(), atol=1e-4)
    # A new process (fresh registry lookup) gets the same vectors, via ONNX and via PyTorch.
    with Collection.open(tmp_path / "col") as again:
        np.testing.assert_allclose(again.embed(images[0], embedder="autoencoder"), vectors[0], atol=1e-4)
    from lookalike.embedders import create

    eager = create("autoencoder", runtime="torch", models_dir=tmp_path / "col" / "models")
    np.testing.assert_allclose(eager.embed_images([decoded[1]])[0], vectors[1], atol=1e-4)


def _open(path: Path):
    from lookalike.images import open_image

    return open_image(path)


@pytest.mark.parametrize(
    ("method", "spec"),
    [
        ("siamese", {"backbone": "frozen", "mining": "random"}),
        ("triplet", {"backbone": "frozen"}),
        ("proxy-anchor", {"backbone": "frozen"}),
    ],
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
    task = metric_learning.MetricTask(spec_obj, prepared)
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

    fit(task, tmp_path / "work", LoopConfig(epochs=3, patience=5, lr=3e-3))
    assert full_loss() < before * 0.9, (before, full_loss())


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_a_kill_continues_from_the_checkpoint(
    sample_folder: Path, tmp_path: Path, schedule: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """Interrupted after epoch 1 and run again: it starts at epoch 2 and ends exactly where an
    uninterrupted run ends (same seed), whatever the learning-rate schedule. The uninterrupted run
    reports through its callbacks and prints nothing."""
    request = run("siamese", sample_folder, epochs=2, patience=5, schedule=schedule, spec={"backbone": "scratch"})
    steps: list[tuple[str, int, int]] = []
    figures: list[tuple[str, dict[str, float]]] = []
    with Collection.open(tmp_path / "whole") as collection:
        capfd.readouterr()
        whole = train(
            collection,
            request,
            progress=lambda stage, done, total: steps.append((stage, done, total)),
            figures=lambda stage, values: figures.append((stage, dict(values))),
        )
        assert capfd.readouterr() == ("", "")  # the library draws no bar and prints nothing
    batches = whole.info["split"]["counts"]["train"] // 8  # full batches of 8
    assert batches >= 1
    for epoch, record in enumerate(whole.info["history"], start=1):
        stage = f"epoch {epoch}/2"
        assert [(d, t) for s, d, t in steps if s == stage] == [(i, batches) for i in range(batches + 1)]
        shown = [v for s, v in figures if s == stage]
        assert len(shown) == batches + 1 and all(v.keys() == {"loss"} for v in shown[:-1])
        assert shown[-2] == {"loss": record["train_loss"]}  # the running loss after the last step
        assert shown[-1] == {"loss": record["train_loss"], "MAP@R": record["validation"]["MAP@R"]}
    assert {s for s, _, _ in steps} >= {"caching pixels (train)", "caching pixels (val)"}

    with Collection.open(tmp_path / "killed") as collection:
        with pytest.raises(Killed):
            train(collection, request, on_epoch=kill_after_first)
        model_dir = collection.models_dir / "siamese"
        assert (model_dir / CHECKPOINT).exists() and not (model_dir / "model.json").exists()
        assert "siamese" not in collection.available_embedders()  # unfinished: not an embedder yet
        resumed_epochs: list[int] = []
        resumed = train(collection, request, on_epoch=lambda r: resumed_epochs.append(r.epoch))
    assert resumed_epochs == [2]  # epoch 1 was not trained again
    assert [h["epoch"] for h in resumed.info["history"]] == [1, 2]
    assert not (model_dir / CHECKPOINT).exists()
    assert_same_weights(resumed.module.state_dict(), whole.module.state_dict())


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Bit for bit: same keys, same dtypes, same values."""
    assert got.keys() == expected.keys()
    different = [key for key, value in expected.items() if not torch.equal(got[key], value)]
    assert not different, different


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

    # Half a cosine over 3 epochs of 4 steps: 0.5 * (1 + cos(pi * t / 3)) at t = 0, 0.25, ..., 2.75, by hand.
    expected = [1.0, 0.98296, 0.93301, 0.85355, 0.75, 0.62941, 0.5, 0.37059, 0.25, 0.14645, 0.06699, 0.01704]
    assert cosine_factor(1.5, 3) == pytest.approx(0.5) and cosine_factor(0.75, 3) == pytest.approx(0.8536, abs=1e-4)
    assert cosine_factor(0, 3) == 1.0 and cosine_factor(3, 3) == pytest.approx(0.0)
    task = Recorder()
    fit(task, tmp_path, LoopConfig(epochs=3, lr=0.1, schedule="cosine"))
    assert [head for head, _ in task.rates] == pytest.approx([0.1 * f for f in expected], abs=1e-6)
    assert [rest for _, rest in task.rates] == pytest.approx([0.0] * 4 + [0.01 * f for f in expected[4:]], abs=1e-7)
    assert task.rates[0][0] == pytest.approx(0.1) and task.rates[-1][0] < 0.01  # decays towards 0
    with pytest.raises(ValueError, match="schedule"):
        LoopConfig(schedule="linear")


def test_resume_refuses_a_checkpoint_of_other_settings(sample_folder: Path, tmp_path: Path) -> None:
    request = run("siamese", sample_folder, epochs=2, spec={"backbone": "scratch"})

    def stop(record) -> None:
        raise KeyboardInterrupt

    with Collection.open(tmp_path / "col") as collection:
        with pytest.raises(KeyboardInterrupt):
            train(collection, request, on_epoch=stop)
        other = run("siamese", sample_folder, epochs=2, spec={"backbone": "scratch", "dim": 64})
        with pytest.raises(ValueError, match="other settings"):
            train(collection, other)


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
        trained = train(collection, run("autoencoder", sample_folder, epochs=1))
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
    snapshots = record_weights_each_epoch(monkeypatch)
    with Collection.open(tmp_path / "col") as collection:
        train(collection, request)
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


def test_proxy_anchor_trains_its_proxies_with_the_head_and_resumes_them(
    sample_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proxy-anchor: one proxy per label; in the warm-up epoch the proxies and the head move and the
    pretrained blocks do not; the proxies are checkpointed, so a run killed after epoch 1 and resumed ends
    with exactly the weights of an uninterrupted one; the saved embedder holds no proxy."""
    spec = {"backbone": "finetune", "backbone_model": "efficientnet-lite0", "trainable_blocks": 1, "views": 1,
            "head": "residual", "head_warmup_epochs": 1, "whiten": False}  # fmt: skip
    request = run("proxy-anchor", sample_folder, epochs=2, patience=5, spec=spec)
    snapshots = record_weights_each_epoch(monkeypatch)
    with Collection.open(tmp_path / "whole") as collection:
        whole = train(collection, request)
    monkeypatch.undo()
    initial, after_warmup, after_finetune = snapshots
    assert initial["loss.proxies"].shape == (2, 1280)  # cat, dog; the residual head keeps 1280 dimensions
    block = "embedding.backbone.network._blocks.15._project_conv.weight"
    assert torch.equal(after_warmup[block], initial[block])  # warm-up: blocks frozen
    for moved in ("loss.proxies", "embedding.head.residual.2.weight"):
        assert not torch.equal(after_warmup[moved], initial[moved]), moved  # ... proxies and head trained
    assert not torch.equal(after_finetune[block], after_warmup[block])  # then the blocks move
    assert not any("proxies" in key for key in whole.module.state_dict())

    with Collection.open(tmp_path / "killed") as collection:
        with pytest.raises(Killed):
            train(collection, request, on_epoch=kill_after_first)
        resumed = train(collection, request)
    assert [h["epoch"] for h in resumed.info["history"]] == [1, 2]
    assert_same_weights(resumed.module.state_dict(), whole.module.state_dict())


def test_retraining_a_name_drops_the_old_models_vectors(sample_folder: Path, tmp_path: Path) -> None:
    """Vectors are stored by embedder name: after `--restart` they must come from the new model."""
    image = sample_folder / "cat" / "cat.1.jpg"
    with Collection.open(tmp_path / "col") as collection:
        train(collection, run("autoencoder", sample_folder, epochs=1, seed=0))
        collection.sync(sample_folder, embedder="autoencoder")
        assert len(collection.search(image, k=3, embedder="autoencoder")) == 3  # an index is built and saved
        ids, old = collection.catalog.vectors("autoencoder")
        train(collection, run("autoencoder", sample_folder, epochs=1, seed=1, restart=True))
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
        info = train(collection, request).info
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


# --- the method registry and the command line built from it -----------------------------------------


def parse(*argv: str):
    """`lookalike train ...` parsed and turned into the TrainingRun it asks for (nothing is trained)."""
    from lookalike.cli.main import build_parser
    from lookalike.cli.train import request_of

    return request_of(build_parser().parse_args(["train", *argv]))


def test_the_defaults_of_every_method_come_from_its_spec_and_registry_entry() -> None:
    from lookalike.training.methods.autoencoder import AutoencoderSpec
    from lookalike.training.methods.metric import MetricSpec
    from lookalike.training.run import LoopConfig

    method, spec, config, name = parse("siamese", "photos").resolve()
    assert (method.name, spec, name) == ("siamese", MetricSpec(method="siamese"), "siamese")
    assert (spec.backbone, spec.backbone_model, spec.trainable_blocks, spec.mining) == (
        "finetune", "efficientnet-lite2", 2, "hard")  # fmt: skip
    assert (spec.dim, spec.batch_size, spec.views, spec.augment, spec.flip_average) == (128, 64, 3, True, True)
    assert (spec.head_warmup_epochs, spec.backbone_lr_scale, spec.margin) == (1, 0.02, 0.2)
    assert config == LoopConfig(epochs=4, lr=1e-3, patience=3, schedule="cosine", seed=0)
    assert parse("siamese", "photos").split == SplitRule(test_fraction=0.2, val_fraction=0.1)

    _, spec, config, name = parse("triplet", "photos", "--backbone", "frozen").resolve()
    assert (spec.method, name, config.epochs, config.schedule) == ("triplet", "triplet", 20, "constant")
    _, _, config, _ = parse("triplet", "photos", "--backbone", "scratch").resolve()
    assert (config.epochs, config.lr, config.schedule) == (10, 1e-3, "constant")

    _, spec, config, name = parse("autoencoder", "photos").resolve()
    assert (spec, name, config.epochs) == (AutoencoderSpec(), "autoencoder", 10)
    assert (spec.dim, spec.noise, spec.noise_level, spec.augment, spec.width) == (256, "none", 0.25, False, 32)
    _, spec, config, name = parse("autoencoder", "photos", "--variant", "features").resolve()
    assert (spec.dim, name, config.epochs, config.schedule) == (128, "autoencoder-compact", 30, "constant")
    _, spec, _, _ = parse("autoencoder", "photos", "--variant", "features", "--dim", "64").resolve()
    assert spec.dim == 64  # a given option beats the variant's default


def test_every_option_is_passed_on_with_its_meaning() -> None:
    request = parse(
        "triplet", "photos", "--backbone", "scratch", "--backbone-model", "efficientnet-lite0",
        "--trainable-blocks", "3", "--margin", "0.3", "--views", "2", "--no-augment", "--no-flip-average",
        "--dim", "64", "--batch-size", "16", "--head-warmup-epochs", "0", "--backbone-lr-scale", "0.1",
        "--epochs", "2", "--lr", "0.01", "--patience", "5", "--schedule", "cosine", "--seed", "3",
        "--val-fraction", "0.15", "--test-fraction", "0.3", "--restart", "--name", "mine",
    )  # fmt: skip
    method, spec, config, name = request.resolve()
    assert (request.folder, request.restart, name) == (Path("photos"), True, "mine")
    assert request.split == SplitRule(test_fraction=0.3, val_fraction=0.15)
    assert config.epochs == 2 and config.lr == 0.01 and config.patience == 5 and config.seed == 3
    assert config.schedule == "cosine"
    assert dataclasses.asdict(spec) == {
        **dataclasses.asdict(method.make_spec({})), "backbone": "scratch", "backbone_model": "efficientnet-lite0",
        "trainable_blocks": 3, "margin": 0.3, "views": 2, "augment": False, "flip_average": False, "dim": 64,
        "batch_size": 16, "head_warmup_epochs": 0, "backbone_lr_scale": 0.1,
    }  # fmt: skip
    _, spec, _, _ = parse("siamese", "photos", "--mining", "random", "--backbone", "frozen").resolve()
    assert (spec.mining, spec.backbone) == ("random", "frozen")
    _, spec, _, _ = parse("autoencoder", "photos", "--noise", "gaussian", "--noise-level", "0.1", "--augment").resolve()
    assert (spec.noise, spec.noise_level, spec.augment) == ("gaussian", 0.1, True)


def test_each_method_offers_exactly_its_spec_fields_as_options(capsys: pytest.CaptureFixture[str]) -> None:
    """The sub-command of a method is generated from its spec: every field that applies is an option
    whose value reaches the spec; a field of another method is refused, by the CLI and by the API."""
    from lookalike.training.methods import all_methods

    assert sorted(m.name for m in all_methods()) == ["autoencoder", "proxy-anchor", "selfsup", "siamese", "triplet"]
    samples = {int: "7", float: "0.125", str: None}
    for method in all_methods():
        for f, opt in method.options():
            if isinstance(f.default, bool):
                argv, value = (
                    ["--no-" + f.name.replace("_", "-") if f.default else "--" + f.name.replace("_", "-")],
                    (not f.default),
                )
            else:
                text = opt.choices[-1] if opt.choices else samples[type(f.default)]
                argv, value = ["--" + f.name.replace("_", "-"), text], type(f.default)(text)
            assert parse(method.name, "photos", *argv).spec == {f.name: value}, (method.name, f.name)
    for method, foreign in [("triplet", "--mining"), ("siamese", "--margin"), ("autoencoder", "--backbone")]:
        with pytest.raises(SystemExit):
            parse(method, "photos", foreign, "1")
        assert "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--mining: not an option of triplet"):
        run("triplet", Path("photos"), spec={"mining": "random"}).resolve()
    with pytest.raises(ValueError, match="backbone must be one of frozen, finetune, scratch"):
        run("siamese", Path("photos"), spec={"backbone": "tiny"}).resolve()
    with pytest.raises(ValueError, match="unknown training method 'simclr'"):
        run("simclr", Path("photos")).resolve()


def test_the_backbone_choices_are_the_networks_with_weights() -> None:
    from lookalike.embedders.weights import EFFICIENTNET_LITE_SIZES
    from lookalike.training.methods.metric import BACKBONE_MODELS

    assert tuple(EFFICIENTNET_LITE_SIZES) == BACKBONE_MODELS


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "siamese", "--help"]])
def test_help_never_imports_pytorch(argv: list[str]) -> None:
    """The registry and every method's options are read without PyTorch, numpy or Pillow; the Task base
    class a method module may define its task from is as light."""
    code = (
        "import sys, json, contextlib, io\nfrom lookalike.cli.main import main\n"
        "out = io.StringIO()\n"
        f"with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n    main({argv!r})\n"
        "import lookalike.training.task  # what a method module may subclass at its top\n"
        "heavy = [m for m in ('torch', 'torchvision', 'pytorch_metric_learning', 'numpy', 'PIL') if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, 'help': out.getvalue()}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["heavy"] == [] and "usage: lookalike" in out["help"]
    if argv[-2:] == ["siamese", "--help"]:
        assert "--backbone-lr-scale" in out["help"] and "20 with --backbone frozen" in out["help"]


# A training method declared outside the package: one spec, one task, one `register` call (here by the
# test, with monkeypatch so the registry is restored), and `lookalike train toy` exists.


def toy_method():
    from lookalike.embedders.networks import Embedding, SmallConvNet
    from lookalike.training.data import PixelCache, pixel_batch
    from lookalike.training.methods import Defaults, Method
    from lookalike.training.options import MethodSpec, option
    from lookalike.training.task import Task

    @dataclasses.dataclass(frozen=True)
    class Spec(MethodSpec):
        dim: int = option(8, "code size")
        scores: str = option("0.5,0.9,0.3,0.2", "the validation score of epochs 1, 2, ... (epoch 0 scores 0)")

        def architecture(self) -> dict[str, object]:
            return {"backbone": "small-cnn", "features": self.dim, "width": 4, "head": "identity", "dim": self.dim}

    class ToyTask(Task):
        """A tiny CNN on the photos' pixels, pulled towards 1; its validation scores are scripted, and it
        keeps a copy of the weights each time it is validated (after epoch 0, 1, 2, ...)."""

        snapshots: list[dict[str, torch.Tensor]] = []

        def __init__(self, spec: Spec, prepared) -> None:
            self.model = self.embedding = Embedding(SmallConvNet(spec.dim, 4), torch.nn.Identity())
            self.pixels = PixelCache(prepared.cache_root, prepared.train).load()
            self.scores = [0.0] + [float(x) for x in spec.scores.split(",")]
            self.epoch = 0
            ToyTask.snapshots = []

        def steps_per_epoch(self) -> int:
            return 2

        def batches(self, epoch: int):
            self.epoch = epoch
            for idx in np.array_split(np.random.permutation(len(self.pixels)), 2):
                yield pixel_batch(self.pixels[idx], None)

        def loss(self, batch: torch.Tensor) -> torch.Tensor:
            return (self.model.backbone(batch) - 1).pow(2).mean()

        def validate(self) -> dict[str, float]:
            ToyTask.snapshots.append(weights(self.model))
            return {"MAP@R": self.scores[self.epoch]}

    return Method("toy", "a toy method", Spec, task=ToyTask, defaults={"": Defaults(epochs=6)}), ToyTask


def test_a_registered_method_trains_from_the_command_line_and_early_stopping_keeps_the_best_epoch(
    sample_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Validation peaks at epoch 2 and falls twice: with patience 2 training stops after epoch 4, and
    the saved embedder has exactly epoch 2's weights (not the last epoch's)."""
    from lookalike.training import methods
    from lookalike.training.saved import load_module

    method, task = toy_method()
    methods.all_methods()  # the built-in ones first
    monkeypatch.setitem(methods._REGISTRY, "toy", method)
    col = tmp_path / "col"
    argv = ["train", "toy", str(sample_folder), "--collection", str(col), "--patience", "2"]
    argv += ["--scores", "0.5,0.9,0.3,0.2,0.95"]
    assert main([*argv, "--val-fraction", "0.25", "--test-fraction", "0.25", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["method"], info["name"], info["loop"]["epochs"]) == ("toy", "toy", 6)
    assert (info["best_epoch"], info["epochs_run"], info["stopped_early"]) == (2, 4, True)
    assert [h["validation"]["MAP@R"] for h in info["history"]] == [0.5, 0.9, 0.3, 0.2]
    snapshots = task.snapshots  # after epochs 0..4
    assert len(snapshots) == 5
    assert not torch.equal(snapshots[2]["backbone.fc.weight"], snapshots[4]["backbone.fc.weight"])
    module, _ = load_module(col / "models" / "toy")
    assert_same_weights(module.state_dict(), snapshots[2])
    with Collection.open(col) as collection:
        assert "toy" in collection.available_embedders()
        assert collection.embed(sample_folder / "cat" / "cat.1.jpg", embedder="toy").shape == (8,)


def test_a_checkpoint_that_could_run_code_is_refused(
    sample_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A collection folder from someone else may hold a checkpoint whose pickle runs code when loaded:
    resuming loads tensors and plain values only, so it is refused and the code never runs."""
    marker = tmp_path / "the-payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    col = tmp_path / "col"
    checkpoint = col / "models" / "siamese" / CHECKPOINT
    checkpoint.parent.mkdir(parents=True)
    torch.save({"model": {}, "optimizer": Payload(), "fingerprint": "x"}, checkpoint)
    torch.load(checkpoint, weights_only=False)  # the payload is live: an unrestricted load runs it
    assert marker.exists()
    marker.unlink()

    argv = ["train", "siamese", str(sample_folder), "--collection", str(col), "--backbone", "scratch", "--width", "8"]
    argv += ["--batch-size", "8", "--epochs", "1", "--val-fraction", "0.25", "--test-fraction", "0.25"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "could run code: refused" in err and "--restart" in err
    assert not marker.exists()
    assert main([*argv, "--restart"]) == 0  # starting over discards it
    assert not marker.exists() and not checkpoint.exists()
    out, err = capsys.readouterr()
    assert out.startswith("trained siamese (siamese, 128 dims): best epoch")
    # The command line draws the epoch's bar from the loop's callbacks: its batches, loss, validation score.
    assert "epoch 1/1: 100%" in err and "batch" in err and "loss=" in err and "MAP@R=" in err


def test_a_training_process_killed_mid_run_resumes_to_bit_identical_weights(
    sample_folder: Path, tmp_path: Path
) -> None:
    """SIGKILL a real `lookalike train` process after its first checkpoint, run the same command again:
    it resumes (the epochs before the kill are kept, not retrained) and ends with exactly the weights
    of a run that was never interrupted."""
    tiny = ["--width", "8", "--scratch-features", "32", "--hidden", "32", "--dim", "16", "--batch-size", "8"]
    args = ["train", "siamese", str(sample_folder), "--backbone", "scratch", *tiny, "--epochs", "12"]
    args += ["--patience", "12", "--val-fraction", "0.25", "--test-fraction", "0.25", "--json"]

    def command(col: Path) -> list[str]:
        return [sys.executable, "-m", "lookalike.cli.main", *args, "--collection", str(col)]

    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr

    col = tmp_path / "killed"
    model_dir = col / "models" / "siamese"
    process = subprocess.Popen(command(col), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (model_dir / CHECKPOINT).exists() and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (model_dir / "model.json").exists(), "killed too late to test anything"
    before = torch.load(model_dir / CHECKPOINT, weights_only=True)["result"]["history"]
    assert 1 <= len(before) < 12

    rerun = subprocess.run(command(col), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    info = json.loads(rerun.stdout)
    assert [h["epoch"] for h in info["history"]] == list(range(1, 13))
    assert info["history"][: len(before)] == before  # carried over from the checkpoint (timings included)
    expected = json.loads(whole.stdout)
    assert [h["train_loss"] for h in info["history"]] == [h["train_loss"] for h in expected["history"]]
    load = lambda path: torch.load(path / "models" / "siamese" / "weights.pt", weights_only=True)  # noqa: E731
    assert_same_weights(load(col), load(tmp_path / "whole"))
