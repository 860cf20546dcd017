"""The Python API in-process: `Model.embed` of real records against sentence-transformers' `encode`, each timed
inside its own process around the call alone (interpreter start-up and model loading reported apart), same run.

    python -m benchmarks --only api
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from car_onnx.runtime.session import machine_threads

from .common import records_file, section_main, timed_process, worker


def run(work: Path, quick: bool) -> dict:
    n, threads = (200 if quick else 2000), machine_threads()
    data = records_file(work, n, seed=2)
    timed_process([sys.executable, "-c", "import torch, sentence_transformers, onnxruntime, car_onnx"])  # warm cache
    st = timed_process(worker("st_embed", data, work / "api-st.npy", threads, "default"))
    api = timed_process(worker("api_embed", data, work / "api.npy", threads))
    a, b = np.load(work / "api.npy"), np.load(work / "api-st.npy")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {
        "records": n,
        "threads": threads,
        "sentence-transformers encode (PyTorch fp32)": st,
        "car_onnx Model.embed (default bundle, int8)": api,
        "in_process_speedup": round(st["infer_s"] / api["infer_s"], 2),
        "mean_cosine_vs_st": round(float(cos.mean()), 6),
    }


if __name__ == "__main__":
    section_main("api", run, __doc__)
