"""onnxruntime sessions: which device and execution provider, how many threads, which precision."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from ..errors import BundleError, UsageError
from .manifest import PRECISIONS

DEVICES = ("cpu", "cuda", "auto")
# Preferred precision per device, best first: int8 (VNNI) on CPU, fp16 on CUDA.
PREFERENCE = {"cpu": ("int8", "fp32", "fp16"), "cuda": ("fp16", "fp32", "int8")}
# onnxruntime's attention kernels allowed on CUDA (its `sdpa_kernel` bit mask): flash 1, memory-efficient 2,
# TensorRT fused 4 and unfused 16; not cuDNN's (8). onnxruntime 1.31 prefers cuDNN for fp16 on Hopper, where it
# ran the default bundle 14x and the full-size IQS 9.7x slower than these (H200, --max-tokens 2048: many batch
# shapes, and cuDNN plans for each): benchmarks/results/gpu.json.
CUDA_ATTENTION_KERNELS = 1 | 2 | 4 | 16


def machine_threads() -> int:
    """Cores this process may run on (respects CPU affinity and container limits where visible)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# The one command that leaves exactly the GPU build installed, from any state (CPU build, both builds, none):
# both distributions install the same `onnxruntime` module, so pip cannot hold them side by side.
# 1.19 is the first with the `sdpa_kernel` CUDA option (CUDA_ATTENTION_KERNELS).
GPU_INSTALL = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.19'"


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def onnxruntime_builds() -> list[str]:
    """The onnxruntime distributions installed (onnxruntime, onnxruntime-gpu): more than one is a broken mix."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            version(name)
            found.append(name)
        except PackageNotFoundError:
            pass
    return found


def cuda_problem() -> str | None:
    """Why CUDA cannot run here, in one sentence with the fix; None when onnxruntime offers CUDA."""
    if "CUDAExecutionProvider" in available_providers():
        return None
    builds = onnxruntime_builds()
    if len(builds) > 1:
        return (
            f"onnxruntime has no CUDAExecutionProvider here: {' and '.join(builds)} are both installed and "
            f"overwrite each other's `onnxruntime` module; keep only the GPU build: `{GPU_INSTALL}`"
        )
    installed = ", ".join(builds) or "neither onnxruntime nor onnxruntime-gpu"
    return (
        f"onnxruntime has no CUDAExecutionProvider here (installed: {installed}); replace it with the GPU "
        f"build: `{GPU_INSTALL}`"
    )


@dataclass(frozen=True)
class SessionConfig:
    """Where and how graphs run; `device` is resolved (cpu or cuda) by `resolve`."""

    device: str = "cpu"
    threads: int | None = None
    precision: str | None = None  # None: the device's preferred precision that the bundle has
    attention_kernels: int = CUDA_ATTENTION_KERNELS  # CUDA only; 0: onnxruntime's own choice

    def providers(self) -> list:
        if self.device == "cuda":
            return [("CUDAExecutionProvider", {"sdpa_kernel": str(self.attention_kernels)}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def workers(self) -> int:
        """Batches run at once. On CPU one per thread, each single-threaded: a transformer's small per-text
        operations use the cores better side by side than split (measured 1.13-1.17x on 2 cores:
        benchmarks/kernels.py); on CUDA one."""
        return 1 if self.device == "cuda" else (self.threads or machine_threads())

    def pick_precision(self, have: list[str], model: str) -> str:
        if self.precision is not None:
            if self.precision not in have:
                raise UsageError(
                    f"{{precision}} {self.precision}: model '{model}' has no such variant (it has: {', '.join(have)})",
                    "precision",
                )
            return self.precision
        return next(p for p in PREFERENCE[self.device] if p in have)


def resolve(device: str = "auto", threads: int | None = None, precision: str | None = None) -> SessionConfig:
    """Check the requested device against what onnxruntime offers; `auto` falls back to CPU with a notice."""
    if device not in DEVICES:
        raise UsageError(f"{{device}} must be one of {', '.join(DEVICES)}, got {device!r}", "device")
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"{{precision}} must be one of {', '.join(PRECISIONS)}, got {precision!r}", "precision")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"{{threads}} must be an integer >= 1, got {threads!r}", "threads")
    problem = cuda_problem() if device != "cpu" else None
    if device == "cuda" and problem:
        raise UsageError(f"{{device}} cuda: {problem}; or use {{device}} cpu", "device")
    if device == "auto":
        device = "cpu" if problem else "cuda"
    if device == "cuda":
        preload_cuda_libraries()
    return SessionConfig(device=device, threads=threads, precision=precision)


def preload_cuda_libraries() -> None:
    """Load CUDA 12 / cuDNN 9 from pip's nvidia-* packages (`onnxruntime-gpu[cuda,cudnn]`) if they are there,
    else from the system paths: onnxruntime's own helper, which its CUDA provider needs to find pip-installed
    libraries."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


def _ort_errors(ort) -> tuple:
    """onnxruntime's exception classes (each derives from Exception directly)."""
    state = ort.capi.onnxruntime_pybind11_state
    names = (
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "EngineError",
        "RuntimeException",
        "InvalidProtobuf",
        "ModelLoaded",
        "NotImplemented",
        "InvalidGraph",
        "EPFail",
    )
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def create_session(path, config: SessionConfig):
    """An InferenceSession with full graph optimisation, single-threaded on CPU (`workers` run side by side);
    warns if CUDA was asked for but CPU is what runs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    cpu = config.device != "cuda"
    opts.intra_op_num_threads = 1 if cpu else (config.threads or machine_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # onnxruntime's CPU SkipLayerNormalization kernel is 2.6-4.8x slower than Add + LayerNormalization (measured
    # in benchmarks/kernels.py), so on CPU the session must not fuse them (exports leave them unfused).
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=opts,
            providers=config.providers(),
            disabled_optimizers=["SkipLayerNormFusion"] if cpu else None,
        )
    except (RuntimeError, *_ort_errors(ort)) as err:  # a file that is not a usable graph
        reason = " ".join(str(err).split())[:200]
        raise BundleError(f"{path}: onnxruntime cannot load this graph ({reason})") from None
    if config.device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        warnings.warn(f"CUDA session for {path} fell back to CPU", RuntimeWarning, stacklevel=2)
    return session
