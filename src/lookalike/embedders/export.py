"""Exporting a PyTorch network to ONNX, checked: the one export-and-session helper.

Every ONNX file lookalike runs is made here, for the embedders (`onnx.OnnxEmbedder.prepare`)
and for training's feature caches (`onnx_runner`). An export is compared with PyTorch on a
probe batch before it is kept, so both runtimes give the same vectors (within 1e-4).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import EmbedderError
from .runtime import cache_dir, onnxruntime_available, open_session

#: largest difference between ONNX Runtime's and PyTorch's outputs that an export may show
EXPORT_TOLERANCE = 1e-4


def fingerprint(module: nn.Module) -> str:
    """A hash of a module's weights (for cache files of networks that exist only in memory)."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _probe(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if dtype == torch.uint8:
        return torch.randint(0, 256, tuple(shape), dtype=torch.uint8, generator=generator)
    return torch.randn(tuple(shape), generator=generator).to(dtype)


def export_checked(
    module: nn.Module,
    path: Path,
    *,
    example_shape: Sequence[int],
    dtype: torch.dtype = torch.uint8,
    name: str | None = None,
    tolerance: float = EXPORT_TOLERANCE,
    output_names: Sequence[str] = ("embeddings",),
    input_name: str = "images",
    probe: torch.Tensor | None = None,
) -> None:
    """Export `module` (input `input_name` of `example_shape`, dynamic batch axis) to `path`, atomically.

    A module returning a tuple has one output per name in `output_names` ("embeddings" first).
    The export is run on a random probe batch and kept only if every output matches PyTorch within
    `tolerance` (`probe`: the batch to check with, instead of a random one of `example_shape`).
    The exporter's warnings and messages are not shown.
    """
    module.eval()  # the exported wrapper too, or dropout/batch-norm stay in training mode
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = _probe(example_shape, dtype) if probe is None else probe
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        sink = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (probe,),
                tmp,
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_axes={input_name: {0: "batch"}, **{out: {0: "batch"} for out in output_names}},
                opset_version=17,
                dynamo=False,
            )
        if onnxruntime_available():
            with torch.inference_mode():
                out = module(probe)
            expected = [t.numpy() for t in (out if isinstance(out, tuple | list) else [out])]
            got = open_session(Path(tmp), threads=1, keep_optimised=False).run(None, {input_name: probe.numpy()})
            difference = max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))
            if not difference <= tolerance:
                raise EmbedderError(
                    f"the ONNX export of {name or 'the network'} differs from PyTorch by {difference:.2e} "
                    f"(tolerance {tolerance:.0e}); run it with runtime 'torch'"
                )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def onnx_runner(
    module: nn.Module, name: str, example_shape: Sequence[int], threads: int = 2, dtype: torch.dtype = torch.float32
) -> Callable[[np.ndarray], np.ndarray]:
    """Run an in-memory `module` through ONNX Runtime (exported once, cached by its weights), else eager PyTorch."""
    module.eval()
    if not onnxruntime_available():

        def run_torch(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(batch)).numpy()

        return run_torch
    path = cache_dir() / "onnx" / f"{name}-{fingerprint(module)}.onnx"
    if not path.exists():
        export_checked(module, path, example_shape=example_shape, dtype=dtype, name=name)
    session = open_session(path, threads)
    return lambda batch: session.run(None, {"images": batch})[0]
