"""Across records: how each scorer orders the paper's own selection (car_selected_iqs.json, 1,013 Alpaca records
with the paper's 550M IQS score each), against that score. The defects table compares a record with its own
corrupted copy; the selection ranks different records against each other, which is what this measures: the
Spearman correlation of each bundle's scores with the IQS scores, and with the answer's length in characters (a
length meter would score high there). Bundles: the default before the defect-aware scorer, the default now, with its
tuned branch, with its relevance branch, with both, its quality head alone (the same head, exported without the
defect term), the multilingual now. And on 2,000 real records of the shared English corpora (the defects section's
pool): how much of the quality head's own order the default's whole score keeps, and how much of the default's the
tuned and relevance options keep (Spearman, and the share of the top 5% still in the top 5%).

    python -m benchmarks.iqs_order [--quick] [--work DIR]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import car_onnx

from .common import ROOT, real_records, section_main, shared_file
from .defects import bundles


def quality_alone(work: Path) -> Path:
    """The default bundle with its quality head alone: the shipped head's weights without its defect terms."""
    from safetensors.torch import load_file, save_file

    from car_onnx_export.default import TERMS, export_default

    out = work / "default-quality-alone"
    if not (out / "manifest.json").exists():
        weights = ROOT / "export" / "weights" / "minilm_head.safetensors"
        head = work / "quality-alone" / weights.name
        head.parent.mkdir(parents=True, exist_ok=True)
        keep = {k: v for k, v in load_file(str(weights)).items() if not k.startswith(TERMS)}
        save_file(keep, str(head))
        meta = json.loads(weights.with_suffix(".json").read_text())
        for term in TERMS:  # the terms' metadata, named as their weights' prefixes
            meta.pop(term.removesuffix("."), None)
        head.with_suffix(".json").write_text(json.dumps(meta))
        export_default(out, precisions=("fp32", "int8"), weights=head, log=lambda m: None)
    return out


def run(work: Path, quick: bool) -> dict:
    from scipy.stats import spearmanr

    data = json.loads(shared_file("corpora", "car_selected_iqs.json").read_text())[: 300 if quick else None]
    iqs = np.array([float(r["score"]) for r in data])
    lengths = np.array([len(r["output"]) for r in data])
    records = [{k: r[k] for k in ("instruction", "input", "output")} for r in data]
    paths = bundles(work) | {"default, quality head alone": quality_alone(work)}
    out = {
        "records": len(data),
        "iqs_vs_answer_chars": round(float(spearmanr(iqs, lengths).statistic), 4),
        "bundles": {},
    }
    for name, path in paths.items():
        for precision in ("fp32", "int8"):
            scores = car_onnx.load(path, precision=precision).score(records)
            out["bundles"][f"{name} {precision}"] = {
                "spearman_iqs": round(float(spearmanr(scores, iqs).statistic), 4),
                "spearman_answer_chars": round(float(spearmanr(scores, lengths).statistic), 4),
            }
            print(name, precision, out["bundles"][f"{name} {precision}"], flush=True)
    from car_onnx_export.onnx_tools import compare

    pool = real_records(400 if quick else 2000, seed=11)
    out["real_records"], out["kept_by_default"] = len(pool), {}
    for precision in ("fp32", "int8"):
        alone = car_onnx.load(paths["default, quality head alone"], precision=precision).score(pool)
        whole = car_onnx.load(paths["default"], precision=precision).score(pool)
        kept = compare({"score": alone}, {"score": whole})
        out["kept_by_default"][precision] = {
            "spearman_with_quality_alone": round(kept["spearman"], 4),
            "top5pct_kept": round(kept["top5pct_overlap"], 4),
        }
        print("default against its quality head alone", precision, out["kept_by_default"][precision], flush=True)
        for option in ("tuned", "relevance"):
            scores = car_onnx.load(paths[f"default --{option}"], precision=precision).score(pool)
            kept = compare({"score": whole}, {"score": scores})
            out.setdefault(f"kept_by_{option}", {})[precision] = {
                "spearman_with_default": round(kept["spearman"], 4),
                "top5pct_kept": round(kept["top5pct_overlap"], 4),
            }
            print(f"default --{option} against the default", precision, out[f"kept_by_{option}"][precision], flush=True)
    return out


if __name__ == "__main__":
    section_main("iqs_order", run, __doc__)
