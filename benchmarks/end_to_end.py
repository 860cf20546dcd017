"""End to end on all ~19k shared records: `car-onnx select` with the default bundle (one int8 pass for scores and
embeddings) against the reference pipeline's structure (a PyTorch scorer, then sentence-transformers, then the
same scikit-learn clustering), whole processes, same threads; wall time per stage, peak RSS, selection overlap.

    python -m benchmarks.end_to_end [--quick] [--work DIR]
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from car_onnx.runtime.session import machine_threads

from .common import car_onnx, real_records, section_main, timed_process, worker


def stages(summary: str) -> dict:
    """Stage seconds from car-onnx's closing line: '... [read 1.0s, score+embed 2.0s, ...]'."""
    inside = re.search(r"\[(.*)\]$", summary).group(1)
    return {k: float(v) for k, v in (re.match(r"(.+) ([\d.]+)s$", part).groups() for part in inside.split(", "))}


def run(work: Path, quick: bool) -> dict:
    rows = real_records(1000 if quick else None, seed=4)
    rows = [{**r, "id": i} for i, r in enumerate(rows)]
    data = work / f"e2e-{len(rows)}.json"
    data.write_text(json.dumps(rows))
    threads, n1 = machine_threads(), len(rows) // 50  # 2%, about the paper's share on Alpaca
    ours = timed_process(
        [car_onnx(), "select", data, "-o", work / "e2e-ours.json", "--n1", n1, "--threads", threads, "--force"]
    )
    ours["stages_s"] = stages(ours.pop("last_line"))
    ref = timed_process(worker("reference_select", data, work / "e2e-ref.json", threads, n1))
    a = {r["id"] for r in json.loads((work / "e2e-ours.json").read_text())}
    b = set(json.loads((work / "e2e-ref.json").read_text()))
    return {
        "records": len(rows),
        "threads": threads,
        "n1": n1,
        "car_onnx_select_int8": ours,
        "reference_structure_pytorch_fp32": ref,
        "speedup": round(ref["seconds"] / ours["seconds"], 2),
        "peak_memory_ratio": round(ours["peak_rss_mb"] / ref["peak_rss_mb"], 3),
        "selected": {"car_onnx": len(a), "reference": len(b), "jaccard": round(len(a & b) / len(a | b), 4)},
    }


if __name__ == "__main__":
    section_main("end_to_end", run, __doc__)
