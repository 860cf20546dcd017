"""car-onnx on Ray, on this machine (issue 16):

1. overhead: `select` on 20,000 real records with the default bundle, single process (2 threads) against
   `--ray local` (a cluster started for the job, 2 actors of 1 CPU), same run, outputs compared byte for byte;
2. driver memory: peak RSS of the driver in `--cluster sample` mode (default options otherwise: exact dedup,
   n1 = 2%) at 200k, 500k, 1M and 2M records (the real ones repeated, each repeat made unique) with the lookup
   bundle (real tokenizer, no transformer), the cluster started by this process so that only the driver counts;
   and the same job without Ray (`--threads 2`, the chunks of --ray: 512 records), outputs compared byte for byte;
3. scaling: the same job on a test cluster of 1 and of 2 one-CPU nodes (ray.cluster_utils.Cluster).

    python -m benchmarks --only ray [--quick]        (RAY_BENCH=overhead,memory,scaling: a subset)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from car_onnx.api import RAY_CHUNK_RECORDS

from .common import RESULTS, car_onnx, machine, records_file, timed_process
from .end_to_end import stages
from .scaling import lookup_bundle


def select(data: Path, out: Path, *args) -> dict:
    result = timed_process([car_onnx(), "select", data, "-o", out, "--n1", "2%", "--force", *args])
    result["stages_s"] = stages(result.pop("last_line"))
    return result


def overhead(work: Path, n: int) -> dict:
    data = records_file(work, n, seed=11)
    local = select(data, work / "ray-local.jsonl", "--threads", 2)
    on_ray = select(data, work / "ray-ray.jsonl", "--ray", "local")
    same = (work / "ray-local.jsonl").read_bytes() == (work / "ray-ray.jsonl").read_bytes()
    infer = "score+embed"
    return {
        "records": n,
        "single_process": local,
        "ray_local_2_actors": on_ray,
        "same_output": same,
        "wall_overhead": round(on_ray["seconds"] / local["seconds"] - 1, 3),
        "inference_overhead": round(on_ray["stages_s"][infer] / local["stages_s"][infer] - 1, 3),
    }


def memory(work: Path, sizes: list[int]) -> dict:
    """Peak RSS of the driver alone: the cluster (one node of 2 CPUs) runs in processes this one started; and of
    the same job in one process."""
    from ray.cluster_utils import Cluster

    bundle, out = lookup_bundle(work), {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        for n in sizes:
            data = records_file(work, n, seed=12, unique=True)
            args = ("-b", bundle, "--cluster", "sample")
            ray = select(data, work / "ray-mem.jsonl", *args, "--ray", cluster.address)
            local = select(data, work / "local-mem.jsonl", *args, "--threads", 2, "--chunk-records", RAY_CHUNK_RECORDS)
            same = (work / "ray-mem.jsonl").read_bytes() == (work / "local-mem.jsonl").read_bytes()
            out[str(n)] = {
                "driver_peak_rss_mb": ray["peak_rss_mb"],
                "seconds": ray["seconds"],
                "stages_s": ray["stages_s"],
                "without_ray": {k: local[k] for k in ("peak_rss_mb", "seconds")},
                "same_output": same,
            }
            print(f"ray memory {n:,}: {out[str(n)]}", file=sys.stderr, flush=True)
    finally:
        cluster.shutdown()
    return out


SCALING = """
import sys, time, subprocess
from ray.cluster_utils import Cluster
nodes, data, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
for _ in range(nodes - 1):
    c.add_node(num_cpus=1)
c.wait_for_nodes()
start = time.perf_counter()
p = subprocess.run([sys.argv[4], "select", data, "-o", out, "--n1", "2%", "--force", "--ray", c.address,
                    "--chunk-records", "500"], capture_output=True, text=True)
seconds = time.perf_counter() - start
c.shutdown()
assert p.returncode == 0, p.stderr
print(seconds, "|", p.stderr.strip().splitlines()[-1])
"""


def scaling(work: Path, n: int) -> dict:
    data = records_file(work, n, seed=13)
    out = {}
    for nodes in (1, 2):
        p = subprocess.run(
            [sys.executable, "-c", SCALING, str(nodes), data, work / f"ray-scale-{nodes}.jsonl", car_onnx()],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds, last = p.stdout.strip().splitlines()[-1].split(" | ", 1)
        out[f"{nodes}_node"] = {"seconds": round(float(seconds), 1), "stages_s": stages(last)}
    out["speedup"] = round(out["1_node"]["seconds"] / out["2_node"]["seconds"], 2)
    out["records"] = n
    return out


def run(work: Path, quick: bool) -> dict:
    """The parts named in RAY_BENCH (default all); the figures of parts not run are kept from results/ray.json,
    each part with the command that made it."""
    parts = (os.environ.get("RAY_BENCH") or "overhead,memory,scaling").split(",")
    saved = RESULTS / "ray.json"
    result = {
        k: v
        for k, v in (json.loads(saved.read_text()) if saved.is_file() else {}).items()
        if k in ("overhead", "driver_memory_sample_mode", "scaling")
    }
    jobs = {
        "overhead": ("overhead", lambda: overhead(work, 1000 if quick else 20_000)),
        "memory": (
            "driver_memory_sample_mode",
            lambda: memory(work, [20_000, 50_000] if quick else [200_000, 500_000, 1_000_000, 2_000_000]),
        ),
        "scaling": ("scaling", lambda: scaling(work, 500 if quick else 4_000)),
    }
    for part in parts:
        key, job = jobs[part]
        result[key] = {
            **job(),
            "command": f"RAY_BENCH={part} python -m benchmarks --only ray" + (" --quick" if quick else ""),
            "cpu": machine()["cpu"],
        }
    result["note"] = (
        "overhead: default bundle, int8, whole processes (Ray's start-up included); memory: the "
        "driver's own peak RSS (ru_maxrss) with the cluster started apart from it; scaling: "
        "default bundle, 500-record chunks, a test cluster of one-CPU nodes on one 2-core host"
    )
    return result
