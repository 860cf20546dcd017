"""car-onnx on Spark, on this machine (issue 35):

1. overhead: `select` on 20,000 real records with the default bundle, single process (2 threads) against
   `--spark local[2]` (two Python workers of one batch each), same run, the selected rows compared;
2. memory in sample mode: peak RSS of the largest process (the driver's JVM, which in local mode also runs the
   executors, or the Python driver) of `select --spark local[2] --cluster sample` at 100k, 300k and 1M records (the
   real ones repeated, each repeat made unique) with the lookup bundle (real tokenizer, no transformer).

    [SPARK_SIZES=100000,300000] [SPARK_OVERHEAD=0] python -m benchmarks.spark_scale [--quick]

SPARK_OVERHEAD=0 runs the memory rows alone and keeps the overhead row of the results file (said in the result).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .common import RESULTS, car_onnx, real_records, section_main, timed_process
from .scaling import lookup_bundle
from .whole_records import bundles


def jsonl_file(folder: Path, n: int, seed: int) -> Path:
    """n real records as JSON lines (what Spark reads in parallel), the k-th repeat's instructions ending " #k"."""
    path = Path(folder) / f"records-{n}-{seed}-unique.jsonl"
    if not path.exists():
        rows = real_records(None, seed)
        with open(f"{path}.part", "w") as f:
            for i in range(n):
                k, r = divmod(i, len(rows))
                row = dict(rows[r], instruction=f"{rows[r]['instruction']} #{k}") if k else rows[r]
                f.write(json.dumps(row) + "\n")
        os.replace(f"{path}.part", path)
    return path


def select(data: Path, out: Path, *args) -> dict:
    env = {"PYSPARK_PYTHON": sys.executable}
    result = timed_process([car_onnx(), "select", data, "-o", out, "--n1", "2%", "--force", *args], env=env)
    result.pop("last_line", None)
    return result


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def overhead(work: Path, n: int) -> dict:
    data, bundle = jsonl_file(work, n, seed=11), bundles(work, ("default",))["default"]
    local = select(data, work / "spark-local.jsonl", "-b", bundle, "--threads", 2)
    spark = select(data, work / "spark-spark.jsonl", "-b", bundle, "--spark", "local[2]")
    return {
        "records": n,
        "single_process": local,
        "spark_local_2": spark,
        "same_rows": rows(work / "spark-local.jsonl") == rows(work / "spark-spark.jsonl"),
        "wall_overhead": round(spark["seconds"] / local["seconds"] - 1, 3),
    }


def memory(work: Path, sizes: list[int]) -> dict:
    bundle, out = lookup_bundle(work), {}
    for n in sizes:
        data = jsonl_file(work, n, seed=12)
        got = select(data, work / "spark-mem.jsonl", "-b", bundle, "--cluster", "sample", "--spark", "local[2]")
        out[str(n)] = {"peak_rss_mb": got["peak_rss_mb"], "seconds": got["seconds"]}
        print(f"spark memory {n:,}: {out[str(n)]}", file=sys.stderr, flush=True)
    return out


def run(work: Path, quick: bool) -> dict:
    sizes = [int(s) for s in os.environ["SPARK_SIZES"].split(",")] if os.environ.get("SPARK_SIZES") else None
    if os.environ.get("SPARK_OVERHEAD") == "0":
        before = json.loads((RESULTS / "spark.json").read_text())
        kept = {"measured": f"{before['date']}, by `{before['command']}` (kept)", **before["overhead"]}
    else:
        kept = overhead(work, 1000 if quick else 20_000)
    return {
        "overhead": kept,
        "memory_sample_mode": memory(work, sizes or ([20_000, 50_000] if quick else [100_000, 300_000, 1_000_000])),
    }


if __name__ == "__main__":
    section_main("spark", run, __doc__)
