"""Issue targets of the default bundle: pairwise agreement on score_valid.csv, int8 fidelity against fp32 on
1,000 real records (and the selections they give), and `car-onnx embed` against sentence-transformers (whole
processes, same threads), with the default bundle and with all-MiniLM-L6-v2 exported by `export embedder`. The
default bundle is exported from the repository's weights into the work dir (as benchmarks.defects does), not taken
from wherever one was installed.

    python -m benchmarks.default_bundle [--quick] [--work DIR]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from car_onnx.runtime.session import machine_threads

from .common import car_onnx, real_records, records_file, section_main, shared_file, timed_process, worker
from .defects import default_now


def agreement(bundle_dir: Path, precision: str) -> dict:
    import car_onnx
    from car_onnx.evaluate import agreement as pair_agreement

    path = shared_file("expert_revised", "score_valid.csv")
    rows = list(csv.DictReader(open(path, newline="")))
    labels = np.array([float(r["score"]) for r in rows])
    better_is_b = labels[1::2] > labels[0::2]
    measured = pair_agreement(car_onnx.load(bundle_dir, precision=precision), path)
    lengths = np.array([len(r["src"]) for r in rows])
    longer = np.where(better_is_b, lengths[1::2] > lengths[0::2], lengths[0::2] > lengths[1::2])
    return {
        "pairs": measured["pairs"],
        "agreement": round(measured["agreement"], 4),
        "longer_text_wins_chars": round(float(longer.mean()), 4),
    }


def fidelity(bundle_dir: Path, n: int) -> dict:
    """int8 against fp32 on n real records: scores, embeddings, and the CaR selection they lead to (n1 = 5%)."""
    import car_onnx
    from car_onnx import car_select
    from car_onnx_export.onnx_tools import compare

    recs = real_records(n, seed=1)
    fp32, int8 = (
        dict(zip(("score", "embed"), car_onnx.load(bundle_dir, device="cpu", precision=p).score_embed(recs)))
        for p in ("fp32", "int8")
    )
    a, b = (set(car_select(o["score"], o["embed"], n1="5%").indices.tolist()) for o in (fp32, int8))
    return {**compare(fp32, int8), "selection_jaccard": round(len(a & b) / len(a | b), 4), "selected": len(a)}


def embedder_bundle(work: Path) -> Path:
    """all-MiniLM-L6-v2 exported by `car-onnx export embedder` (fp32 + int8), built once under `work`."""
    out = work / "embedder-bundle"
    if not (out / "manifest.json").is_file():
        from car_onnx_export.default import minilm_dir
        from car_onnx_export.embedder import export_embedder

        export_embedder(minilm_dir(), out, precisions=("fp32", "int8"), log=lambda m: None)
    return out


def embed_speed(bundle_dir: Path, work: Path, n: int, threads: int) -> dict:
    """Whole processes embedding the same n real records: sentence-transformers (PyTorch fp32) against
    `car-onnx embed` with the default bundle (one pass: score + embedding) and with the exported embedder."""
    data = records_file(work, n, seed=2)
    embedder = embedder_bundle(work)
    runs, vectors = {}, {}
    # Warm the page cache first, so that no timed process is the one that reads torch from disk.
    timed_process([sys.executable, "-c", "import torch, sentence_transformers, onnxruntime, car_onnx"])
    for template in ("default", "paper"):  # the default bundle's template, and the paper's (the embedder's)
        name = f"sentence-transformers, {template} template"
        runs[name] = timed_process(worker("st_embed", data, work / f"st-{template}.npy", threads, template))
        vectors[name] = np.load(work / f"st-{template}.npy")
    for label, bundle, template in (("default bundle", bundle_dir, "default"), ("embedder bundle", embedder, "paper")):
        for precision in ("int8", "fp32"):
            name = f"car-onnx embed, {label} {precision}"
            runs[name] = timed_process(
                [
                    car_onnx(),
                    "embed",
                    data,
                    "-o",
                    work / "e.npy",
                    "-b",
                    bundle,
                    "--precision",
                    precision,
                    "--threads",
                    threads,
                    "--force",
                ]
            )
            st_name = f"sentence-transformers, {template} template"
            e, st = np.load(work / "e.npy"), vectors[st_name]
            runs[name]["mean_cosine_vs_st"] = round(float((e * st).sum(1).mean()), 6)
            runs[name]["speedup_vs_st"] = round(runs[st_name]["seconds"] / runs[name]["seconds"], 2)
            runs[name]["memory_vs_st"] = round(runs[name]["peak_rss_mb"] / runs[st_name]["peak_rss_mb"], 3)
    for run in runs.values():
        run["texts_per_s"] = round(n / run["seconds"], 1)
    return {"records": n, "threads": threads, "runs": runs}


def run(work: Path, quick: bool) -> dict:
    bundle_dir = default_now(work)
    return {
        "bundle": str(bundle_dir),
        "agreement_score_valid": {p: agreement(bundle_dir, p) for p in ("fp32", "int8")},
        "int8_vs_fp32": fidelity(bundle_dir, 200 if quick else 1000),
        "embed_speed": embed_speed(bundle_dir, work, 200 if quick else 2000, machine_threads()),
    }


if __name__ == "__main__":
    section_main("default_bundle", run, __doc__)
