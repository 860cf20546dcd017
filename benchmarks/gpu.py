"""GPU check: fp16 and fp32 on CUDA against CPU fp32 (scores and embeddings, the export's gates), records/s at
several batch budgets and peak GPU memory, for the default bundle and the full-size IQS (XLM-R-large shape, random
weights); and fp16 records/s with each of onnxruntime's attention kernels.

    python -m benchmarks --only gpu     (or python -m benchmarks.gpu [--quick] [--work DIR] [--default BUNDLE]
                                         [--iqs BUNDLE] [--records FILE])

On a bare machine without network it runs from a kit: benchmarks/gpu_kit.py packs one, benchmarks/gpu_device.sh
unpacks it there and runs this. Without CUDA it says why and exits 0, writing nothing. A bundle without fp16 gets
it here with the export's own conversion; without --iqs the full-size IQS is exported once under --work (needs the
export extra); without --default the installed default bundle serves. `--rehearse-on-cpu` runs the same code with
CPU standing in for CUDA (a smoke test of this file on a machine without a GPU; its figures say nothing about a
GPU and are not saved).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from car_onnx.runtime.bundle import find_bundle
from car_onnx.runtime.graph import OnnxModel
from car_onnx.runtime.manifest import read_manifest
from car_onnx.runtime.session import (
    CUDA_ATTENTION_KERNELS,
    SessionConfig,
    cuda_problem,
    machine_threads,
    preload_cuda_libraries,
)

from .common import ROOT, WORK, real_records, save

BUDGETS = (2048, 8192, 32768, 131072)  # --max-tokens: rows x longest row per batch
IQS_DIR = "gpu-iqs-full"


def read_records(path: Path | None, n: int) -> list[dict]:
    """The first `n` records of a JSON-lines file (the kit's: the GPU machine has no ../shared), else real ones."""
    if path is None:
        return real_records(n, seed=4)
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(n))]


def build_iqs(out: Path) -> None:
    """(Child process.) The full-size IQS checkpoint and its fp32 bundle, checked on 16 texts."""
    from car_onnx_export.iqs import export_scorer

    from .export_iqs_full import build

    build(out)
    texts = [
        f"Instruction: {r['instruction']} Input: {r['input']} Response: {r['output']}" for r in real_records(16, seed=5)
    ]
    export_scorer(
        out / "run" / "checkpoints" / "epoch=0.ckpt",
        out / "bundle",
        base=out / "base",
        precisions=("fp32",),
        texts=texts,
    )
    (out / "run" / "checkpoints" / "epoch=0.ckpt").unlink()  # 2.2 GB, not needed any more


def with_fp16(root: Path) -> Path:
    """`root` with an fp16 variant of each model: made from fp32 with the export's own conversion where missing
    (no torch needed; the fidelity against CPU fp32 is what check_model measures)."""
    import dataclasses

    from car_onnx.runtime.manifest import Variant, write_manifest
    from car_onnx_export.onnx_tools import convert_fp16

    manifest = read_manifest(root)
    if all("fp16" in m.variants for m in manifest.models):
        return root
    models = []
    for m in manifest.models:
        if "fp16" not in m.variants:
            rel = f"{m.name}/model.fp16.onnx"
            convert_fp16(root / m.variants["fp32"].graph, root / rel)
            m = dataclasses.replace(m, variants={**m.variants, "fp16": Variant(rel)})
        models.append(m)
    write_manifest(root, models, manifest.created_by + " + fp16 by benchmarks.gpu")
    return root


class GpuMemory:
    """Peak device memory in use while inside (MiB above what was in use on entry), polled through NVML every
    10 ms; None where NVML is missing (no GPU)."""

    def __enter__(self):
        import threading

        self.peak_mib = None
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no NVML: no GPU, or nvidia-ml-py not installed
            return self
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        used = lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used  # noqa: E731
        self._base, self._peak, self._stop = used(), 0, threading.Event()

        def poll():
            while not self._stop.is_set():
                self._peak = max(self._peak, used())
                self._stop.wait(0.01)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak_mib = round(max(0, self._peak - self._base) / 2**20)


def scorer_texts(root: Path, records: list[dict]):
    """The bundle's scoring model, and each record's text with where its response starts (OnnxModel.run reads the
    starts only where the graph reads the response)."""
    (spec,) = [m for m in read_manifest(root).models if "score" in m.roles]
    texts = [spec.template.render(r["instruction"], r["input"], r["output"]) for r in records]
    starts = [spec.template.response_start(r["instruction"], r["input"]) for r in records]
    return spec, texts, starts


def check_model(root: Path, records: list[dict], n_ref: int, device: str, budgets) -> dict:
    """CPU fp32 reference on the first `n_ref` records, then fp32 and fp16 on `device` at each budget over all
    records: fidelity against the reference (gates as at export) and records/s (session creation excluded,
    after a warm-up batch), with the peak device memory of each precision (session, arena and all budgets)."""
    from car_onnx_export.onnx_tools import DEFAULT_GATES, check_gate, compare

    spec, texts, starts = scorer_texts(root, records)
    roles = tuple(spec.roles)
    n = len(texts)
    start = time.perf_counter()
    cpu = OnnxModel(spec, root, "fp32", SessionConfig(device="cpu", threads=machine_threads()))
    ref = cpu.run(texts[:n_ref], roles, starts=starts[:n_ref])
    del cpu
    out = {
        "model": spec.name,
        "records": n,
        "reference_records": n_ref,
        "cpu_fp32_reference_s": round(time.perf_counter() - start, 1),
        "runs": {},
    }
    for precision in ("fp32", "fp16"):
        with GpuMemory() as memory:
            start = time.perf_counter()
            model = OnnxModel(spec, root, precision, SessionConfig(device=device))
            load_s = time.perf_counter() - start
            if device == "cuda" and model.session.get_providers()[0] != "CUDAExecutionProvider":
                raise RuntimeError(f"the CUDA session for {model.graph} fell back to {model.session.get_providers()}")
            model.run(texts[:8], roles, starts=starts[:8])  # warm-up: CUDA kernels, memory arena
            runs = {}
            for budget in budgets:
                start = time.perf_counter()
                got = model.run(texts, roles, max_tokens=budget, starts=starts)
                seconds = time.perf_counter() - start
                metrics = compare(ref, {k: v[:n_ref] for k, v in got.items()})
                failed = check_gate(precision, metrics, DEFAULT_GATES)
                runs[f"{precision}, --max-tokens {budget}"] = {
                    "records_per_s": round(n / seconds, 1),
                    "seconds": round(seconds, 2),
                    "load_s": round(load_s, 2),
                    **metrics,
                    "gate": "passed" if not failed else "; ".join(failed),
                }
            del model
        for run in runs.values():
            run["peak_gpu_memory_mib"] = memory.peak_mib
        out["runs"].update(runs)
    return out


ATTENTION_KERNELS = {
    "onnxruntime's choice": 0,
    "cuDNN": 8,
    "flash": 1,
    "memory-efficient": 2,
    "TensorRT fused": 4,
    "unfused": 16,
    "car-onnx's (all but cuDNN)": CUDA_ATTENTION_KERNELS,
}


def attention_kernels(root: Path, records: list[dict], device: str, budget: int = 2048) -> dict:
    """fp16 records/s with each of onnxruntime's attention kernels allowed alone (its `sdpa_kernel` mask), at one
    budget (many batch shapes), and the largest score difference from car-onnx's setting."""
    spec, texts, starts = scorer_texts(root, records)
    out, scores = {}, {}
    for name, mask in ATTENTION_KERNELS.items():
        model = OnnxModel(spec, root, "fp16", SessionConfig(device=device, attention_kernels=mask))
        model.run(texts[:8], ("score",), starts=starts[:8])
        start = time.perf_counter()
        scores[name] = model.run(texts, ("score",), max_tokens=budget, starts=starts)["score"]
        out[name] = {"sdpa_kernel": mask, "records_per_s": round(len(texts) / (time.perf_counter() - start), 1)}
        del model
    ours = scores["car-onnx's (all but cuDNN)"]
    for name in out:
        out[name]["max_abs_score_difference"] = float(np.abs(scores[name] - ours).max())
    return {"model": spec.name, "records": len(texts), "max_tokens": budget, "kernels": out}


def run(
    work: Path,
    quick: bool,
    device: str = "cuda",
    iqs_bundle: Path | None = None,
    default: Path | None = None,
    records_file: Path | None = None,
) -> dict:
    if device == "cuda":
        if problem := cuda_problem():
            return {"skipped": f"no CUDA here: {problem}"}
        preload_cuda_libraries()  # as `--device cuda` does
    start = time.perf_counter()
    if iqs_bundle is None:
        iqs = Path(work) / IQS_DIR
        if not (iqs / "bundle" / "manifest.json").is_file():
            subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--build-iqs", str(iqs)], cwd=ROOT, check=True)
        iqs_bundle = iqs / "bundle"
    default = with_fp16(find_bundle(default))
    with_fp16(iqs_bundle)
    prepared_s = round(time.perf_counter() - start, 1)
    budgets = BUDGETS[:2] if quick else BUDGETS
    n = 200 if quick else 4000
    records = read_records(records_file, n)
    try:
        result = {"device": device}
        for key, root, some, n_ref in (
            ("default_bundle", default, records, len(records)),
            ("iqs_full", iqs_bundle, records[: 64 if quick else 1024], 16 if quick else 128),
        ):
            result[key] = check_model(root, some, n_ref, device, budgets)
            print(json.dumps({key: result[key]}), flush=True)  # in the log, should the next one break
        result["attention_kernels"] = [
            attention_kernels(default, records[:2000], device),
            attention_kernels(iqs_bundle, records[: 512 if not quick else 32], device),
        ]
    except RuntimeError as err:
        if "fell back" not in str(err):
            raise
        return {"skipped": f"CUDA provider present but not usable (CUDA/cuDNN libraries?): {err}"}
    import onnxruntime as ort

    result.update(
        bundles_prepared_s=prepared_s,
        seconds=round(time.perf_counter() - start, 1),
        onnxruntime=f"{ort.__version__} ({ort.get_device()})",
    )
    if device == "cuda":
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        result["gpu"] = smi.stdout.strip() if smi.returncode == 0 else "unknown (nvidia-smi failed)"
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rehearse-on-cpu", action="store_true", help="CPU stands in for CUDA; nothing is saved")
    ap.add_argument("--iqs", type=Path, help="a full-size IQS bundle (else built under --work with the export)")
    ap.add_argument("--default", type=Path, help="the default bundle (else the installed one)")
    ap.add_argument("--records", type=Path, help="records as JSON lines (else real ones from ../shared)")
    ap.add_argument("--build-iqs", type=Path, help="only build the full-size IQS bundle in DIR/bundle (export extra)")
    args = ap.parse_args(argv)
    if args.build_iqs:
        build_iqs(args.build_iqs)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    result = run(args.work, args.quick, "cpu" if args.rehearse_on_cpu else "cuda", args.iqs, args.default, args.records)
    print(json.dumps(result, indent=2))
    if "skipped" in result:
        print(f"gpu: {result['skipped']}", file=sys.stderr)
    elif not args.rehearse_on_cpu:
        print(f"written to {save('gpu', result)}")


if __name__ == "__main__":
    main()
