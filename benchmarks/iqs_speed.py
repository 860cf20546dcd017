"""The paper's scorer at full size (XLM-R-large-shaped IQS checkpoint, random weights, same compute): PyTorch fp32
running COMET's forward on length-sorted batches versus our ONNX fp32 and int8 on the same real texts.

    python -m benchmarks.iqs_speed [--quick] [--work DIR]

Uses the bundle `benchmarks.export_iqs_full --keep` leaves in $TMPDIR/car_iqs_full (made first if missing,
about 10 minutes; skipped in --quick mode)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from car_onnx.runtime.session import machine_threads

from .common import ROOT, records_file, section_main, timed_process, worker

IQS = Path(tempfile.gettempdir()) / "car_iqs_full"


def run(work: Path, quick: bool) -> dict:
    built_s = 0.0
    if not (IQS / "bundle" / "manifest.json").is_file():
        if quick:
            return {"skipped": f"no full-size IQS bundle in {IQS}; run without --quick once to build it"}
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "benchmarks.export_iqs_full", "--work", str(IQS), "--keep"], cwd=ROOT, check=True
        )
        built_s = round(time.perf_counter() - start)
    n, threads = (32 if quick else 256), machine_threads()
    data = records_file(work, n, seed=3)
    runs = {
        "PyTorch fp32 (COMET forward, length-sorted batches of 8)": timed_process(
            worker("iqs_torch", IQS, data, work / "iqs-torch.npy", threads)
        )
    }
    for p in ("fp32", "int8"):
        runs[f"car-onnx {p}"] = timed_process(
            worker("onnx_run", IQS / "bundle", data, work / f"iqs-{p}.npy", threads, p, "score", "paper")
        )
    base = next(iter(runs.values()))
    for r in runs.values():
        r["texts_per_s"] = round(n / r["infer_s"], 2)
        r["tokens_per_s"] = round(r["tokens"] / r["infer_s"], 1)
        r["tokens_per_s_vs_pytorch"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
    ref = np.load(work / "iqs-torch.npy")
    from car_onnx_export.onnx_tools import compare

    fidelity = {p: compare({"score": ref}, {"score": np.load(work / f"iqs-{p}.npy")}) for p in ("fp32", "int8")}
    return {
        "texts": n,
        "threads": threads,
        "runs": runs,
        "vs_pytorch_fp32": fidelity,
        "bundle_built_s": built_s,
        "note": "random weights (std 0.02): speed and memory are those of the real model; the int8 fidelity "
        "figures say little about the trained IQS",
    }


if __name__ == "__main__":
    section_main("iqs_speed", run, __doc__)
