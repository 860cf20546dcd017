"""One machine past 10M records (issue 16): `car-onnx select --cluster sample` on 10,000,000 records (the ~19k
shared real records repeated, each repeat made unique, so exact dedup keeps them all), the lookup bundle (real
tokenizer, no transformer: the pipeline's own costs), default options otherwise (exact dedup, n1 = 2%, n2 = 1),
2 threads, whole process: peak RSS, time by stage, and the disk the work directory took.

    python -m benchmarks --only sample_10m          (--quick: 1M records)"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .common import car_onnx, records_file, timed_process
from .end_to_end import stages
from .scaling import lookup_bundle

N = 10_000_000


def run(work: Path, quick: bool) -> dict:
    n = 1_000_000 if quick else N
    data = records_file(work, n, seed=12, unique=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        result = timed_process(
            [
                car_onnx(),
                "select",
                data,
                "-o",
                work / "sample-10m.jsonl",
                "-b",
                lookup_bundle(work),
                "--cluster",
                "sample",
                "--threads",
                2,
                "--force",
                "--work-dir",
                Path(tmp) / "job",
            ]
        )
        disk = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    result["stages_s"] = stages(result.pop("last_line"))
    return {
        "records": n,
        "input_gb": round(data.stat().st_size / 2**30, 2),
        "select": result,
        "work_dir_gb": round(disk / 2**30, 2),
        "note": "the scan's places and dedup keys (in TMPDIR) are on disk too, ~40 bytes a record, not counted",
    }
