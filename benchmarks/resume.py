"""Resume overhead and determinism of `car-onnx select` with the default bundle on real records:
- an uninterrupted run, against a run with --work-dir killed (SIGKILL) half-way through inference and started
  again: the extra wall time the interruption costs, and whether the output bytes are the same;
- int8 and fp32 selections across thread counts and token budgets (batch sizes), compared with the default run.

    python -m benchmarks.resume [--quick] [--work DIR]
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from car_onnx.runtime.session import machine_threads

from .common import car_onnx, records_file, section_main


def select(data: Path, out: Path, *extra) -> float:
    start = time.perf_counter()
    subprocess.run([car_onnx(), "select", data, "-o", out, "--n1", "2%", "--force", "-q", *map(str, extra)], check=True)
    return time.perf_counter() - start


def ids(path: Path) -> list:
    return [(r["id"], r["cluster"]) for r in json.loads(path.read_text())]


def run(work: Path, quick: bool) -> dict:
    n = 500 if quick else 1000
    rows = json.loads(records_file(work, n, seed=6).read_text())
    data = work / f"resume-{n}.json"
    data.write_text(json.dumps([{**r, "id": i} for i, r in enumerate(rows)]))
    chunk = n // 20
    plain = select(data, work / "plain.json", "--chunk-records", chunk)

    wd = work / "resume-workdir"
    subprocess.run(["rm", "-rf", str(wd)], check=True)
    cmd = [
        car_onnx(),
        "select",
        data,
        "-o",
        work / "resumed.json",
        "--n1",
        "2%",
        "--force",
        "-q",
        "--chunk-records",
        chunk,
        "--work-dir",
        wd,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(list(map(str, cmd)))
    while len(list((wd / "chunks").glob("*.npz"))) < 10 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_after = time.perf_counter() - start
    finished = len(list((wd / "chunks").glob("*.npz")))
    resumed = select(data, work / "resumed.json", "--chunk-records", chunk, "--work-dir", wd)
    same = (work / "resumed.json").read_bytes() == (work / "plain.json").read_bytes()

    base = ids(work / "plain.json")
    variants = {}
    for precision in ("int8", "fp32"):
        ref = None
        for threads, budget in ((machine_threads(), 2048), (machine_threads(), 8192), (1, 2048)):
            out = work / f"det-{precision}-{threads}-{budget}.json"
            select(data, out, "--precision", precision, "--threads", threads, "--max-tokens", budget)
            got = ids(out)
            ref = ref or got
            a, b = {i for i, _ in ref}, {i for i, _ in got}
            variants[f"{precision}, {threads} threads, --max-tokens {budget}"] = {
                "same_selection_as_first": got == ref,
                "jaccard_with_first": round(len(a & b) / len(a | b), 4),
            }
    return {
        "records": n,
        "chunks": 20,
        "uninterrupted_s": round(plain, 1),
        "killed_after_s": round(killed_after, 1),
        "chunks_finished_when_killed": finished,
        "resumed_s": round(resumed, 1),
        "resume_overhead_s": round(killed_after + resumed - plain, 1),
        "resumed_output_identical": same,
        "default_run_selected": len(base),
        "determinism": variants,
    }


if __name__ == "__main__":
    section_main("resume", run, __doc__)
