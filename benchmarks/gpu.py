"""GPU check, for the day a CUDA machine is at hand: fp16 and fp32 on CUDA against CPU fp32 (scores and
embeddings, the export's gates), and records/s at several batch budgets, for the default bundle and the
full-size IQS (XLM-R-large shape, random weights).

    python -m benchmarks --only gpu          (or python -m benchmarks.gpu [--quick] [--work DIR])

Without CUDA it says why and exits 0, writing nothing. Unattended, under 8 minutes on 2 cores: the full-size IQS
bundle (fp32 + fp16) is exported once under --work with a short export check (the check that matters here is CUDA
against CPU fp32 on many texts); the default bundle is the installed one, or exported under --work when it has no
fp16 variant. `--rehearse-on-cpu` runs the same code with CPU standing in for CUDA (a smoke test of this file on a
machine without a GPU; its figures say nothing about a GPU and are not saved).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from car_onnx.bundle import find_bundle
from car_onnx.manifest import read_manifest
from car_onnx.models import OnnxModel
from car_onnx.session import SessionConfig, cuda_problem, machine_threads, preload_cuda_libraries

from .common import ROOT, WORK, real_records, save

BUDGETS = (2048, 8192, 32768)  # --max-tokens: rows x longest row per batch
IQS_DIR = "gpu-iqs-full"


def texts_for(spec, n: int) -> list[str]:
    return [spec.template.render(r["instruction"], r["input"], r["output"]) for r in real_records(n, seed=4)]


def build_iqs(out: Path) -> None:
    """(Child process.) The full-size IQS checkpoint and its bundle with fp32 and fp16, checked on 16 texts."""
    from car_onnx_export.iqs import export_scorer

    from .export_iqs_full import build

    build(out)
    texts = [f"Instruction: {r['instruction']} Input: {r['input']} Response: {r['output']}"
             for r in real_records(16, seed=5)]
    export_scorer(out / "run" / "checkpoints" / "epoch=0.ckpt", out / "bundle", base=out / "base",
                  precisions=("fp32", "fp16"), texts=texts)
    (out / "run" / "checkpoints" / "epoch=0.ckpt").unlink()  # 2.2 GB, not needed any more


def default_bundle(work: Path) -> Path:
    """The installed default bundle if it has fp16, else one exported under `work` (about a minute)."""
    root = find_bundle(None)
    if "fp16" in read_manifest(root).models[0].variants:
        return root
    root = work / "gpu-default"
    if not (root / "manifest.json").is_file():
        from car_onnx_export.default import export_default

        export_default(root, precisions=("fp32", "fp16"), log=lambda m: None)
    return root


def check_model(root: Path, n: int, device: str, budgets) -> dict:
    """CPU fp32 reference, then fp32 and fp16 on `device` at each budget: fidelity against the reference
    (gates as at export) and records/s (session creation excluded, after a warm-up batch)."""
    from car_onnx_export.onnx_tools import DEFAULT_GATES, check_gate, compare

    (spec,) = [m for m in read_manifest(root).models if "score" in m.roles]
    roles = tuple(spec.roles)
    texts = texts_for(spec, n)
    start = time.perf_counter()
    cpu = OnnxModel(spec, root, "fp32", SessionConfig(device="cpu", threads=machine_threads()))
    ref = cpu.run(texts, roles)
    del cpu
    out = {"model": spec.name, "records": n, "cpu_fp32_reference_s": round(time.perf_counter() - start, 1),
           "runs": {}}
    for precision in ("fp32", "fp16"):
        start = time.perf_counter()
        model = OnnxModel(spec, root, precision, SessionConfig(device=device))
        load_s = time.perf_counter() - start
        if device == "cuda" and model.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"the CUDA session for {model.graph} fell back to {model.session.get_providers()}")
        model.run(texts[:8], roles)  # warm-up: CUDA kernels, memory arena
        for budget in budgets:
            start = time.perf_counter()
            got = model.run(texts, roles, max_tokens=budget)
            seconds = time.perf_counter() - start
            metrics = compare(ref, got)
            failed = check_gate(precision, metrics, DEFAULT_GATES)
            out["runs"][f"{precision}, --max-tokens {budget}"] = {
                "records_per_s": round(n / seconds, 1), "seconds": round(seconds, 2), "load_s": round(load_s, 2),
                **metrics, "gate": "passed" if not failed else "; ".join(failed)}
        del model
    return out


def run(work: Path, quick: bool, device: str = "cuda", iqs_bundle: Path | None = None) -> dict:
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
    built_s = round(time.perf_counter() - start, 1)
    budgets = BUDGETS[:2] if quick else BUDGETS
    try:
        result = {
            "device": device,
            "default_bundle": check_model(default_bundle(work), 200 if quick else 2000, device, budgets),
            "iqs_full": check_model(iqs_bundle, 16 if quick else 128, device, budgets),
        }
    except RuntimeError as err:
        if "fell back" not in str(err):
            raise
        return {"skipped": f"CUDA provider present but not usable (CUDA/cuDNN libraries?): {err}"}
    import onnxruntime as ort

    result.update(iqs_bundle_built_s=built_s, seconds=round(time.perf_counter() - start, 1),
                  onnxruntime_build=ort.get_device())
    if device == "cuda":
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        result["gpu"] = smi.stdout.strip() if smi.returncode == 0 else "unknown (nvidia-smi failed)"
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rehearse-on-cpu", action="store_true", help="CPU stands in for CUDA; nothing is saved")
    ap.add_argument("--iqs", type=Path, help="a bundle to use instead of the full-size IQS (for --rehearse-on-cpu)")
    ap.add_argument("--build-iqs", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build_iqs:
        build_iqs(args.build_iqs)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    if args.iqs and not args.rehearse_on_cpu:
        ap.error("--iqs goes with --rehearse-on-cpu: the saved figures are the full-size IQS's")
    result = run(args.work, args.quick, "cpu" if args.rehearse_on_cpu else "cuda", args.iqs)
    print(json.dumps(result, indent=2))
    if "skipped" in result:
        print(f"gpu: {result['skipped']}", file=sys.stderr)
    elif not args.rehearse_on_cpu:
        print(f"written to {save('gpu', result)}")


if __name__ == "__main__":
    main()
