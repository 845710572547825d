"""ONNX Runtime sessions and the cache of exported networks (no PyTorch here).

ONNX Runtime's graph optimisation costs about 0.3 s per session; the optimised graph is saved
in the cache (per ONNX Runtime version and CPU), so a later process loads it ready.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from .base import EmbedderError

RUNTIMES = ("auto", "onnx", "torch")


def cache_dir() -> Path:
    """Where exported ONNX files live (`LOOKALIKE_CACHE`, else ~/.cache/lookalike)."""
    root = os.environ.get("LOOKALIKE_CACHE") or Path.home() / ".cache" / "lookalike"
    return Path(root)


def file_identity(path: Path) -> str:
    """A file's identity without reading it: absolute path, size and modification time."""
    try:
        stat = path.stat()
    except FileNotFoundError as exc:
        raise EmbedderError(f"weights file not found: {path}") from exc
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def short_hash(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _cpu_tag() -> str:
    """ONNX Runtime version and CPU: an optimised graph may only be reused where both match."""
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                cpu += line
    return short_hash(ort.__version__, platform.machine(), cpu)


def open_session(path: Path, threads: int, *, keep_optimised: bool = True) -> Any:
    """An ONNX Runtime session of the model at `path`, from its saved optimised graph when there is one.

    `keep_optimised=False` neither reads nor writes the saved optimised graph (a model checked once).
    """
    import onnxruntime as ort

    def options(level: ort.GraphOptimizationLevel) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Idle worker threads sleep instead of spinning. Spinning threads keep a core busy between operators,
        # which on a shared CPU takes it from the decoding threads, from other requests and from other
        # processes: measured on 2 busy cores (load 12), EfficientNet-Lite0 took 39 ms of CPU per image with
        # spinning and 19 ms without, and a served search's CPU fell from 45 to 33 ms.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = level
        opts.log_severity_level = 3  # errors only: the optimiser's notes are not for the user
        return opts

    providers = ["CPUExecutionProvider"]
    if not keep_optimised:
        return ort.InferenceSession(str(path), options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL), providers)
    stat = path.stat()
    optimised = (
        cache_dir()
        / "onnx-optimised"
        / f"{path.stem}-{short_hash(str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns), _cpu_tag())}.onnx"
    )
    if optimised.is_file():
        try:
            return ort.InferenceSession(str(optimised), options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL), providers)
        except Exception:  # a damaged cache file: optimise again below
            optimised.unlink(missing_ok=True)
    opts = options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    tmp = None
    with contextlib.suppress(OSError):
        optimised.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=optimised.parent, suffix=".onnx.tmp")
        os.close(fd)
        opts.optimized_model_filepath = tmp
    try:
        session = ort.InferenceSession(str(path), opts, providers)
        if tmp is not None and os.path.getsize(tmp) > 0:
            os.replace(tmp, optimised)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return session
