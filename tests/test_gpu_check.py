"""`python -m benchmarks --only gpu`: without CUDA it says so, exits 0 and writes nothing; its checks and
timings run end to end with CPU standing in for CUDA (--rehearse-on-cpu) on tiny bundles."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from car_onnx.session import cuda_problem
from car_onnx_export import tiny

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "corpora"


def bench(*args, env=None):
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, **(env or {})})
    return p.returncode, p.stdout, p.stderr


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    problem = cuda_problem()
    if problem is None:
        pytest.skip("this machine has CUDA")
    results = ROOT / "benchmarks" / "results" / "gpu.json"
    before = results.read_bytes() if results.exists() else None
    rc, out, err = bench("--work", tmp_path)
    assert rc == 0 and json.loads(out) == {"skipped": f"no CUDA here: {problem}"}
    assert err == f"gpu: no CUDA here: {problem}\n"
    assert (results.read_bytes() if results.exists() else None) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"needs the shared corpora at {SHARED}")
def test_rehearsal_on_cpu_checks_both_precisions_at_each_budget(tmp_path):
    joint = tiny.make_bundle(tmp_path / "joint", precisions=("fp32", "fp16"))
    scorer = tiny.make_bundle(tmp_path / "split", split=True, precisions=("fp32", "fp16"), seed=3)
    rc, out, err = bench("--rehearse-on-cpu", "--quick", "--iqs", scorer, "--work", tmp_path / "work",
                         env={"CAR_ONNX_BUNDLE": str(joint)})
    assert rc == 0, err
    result = json.loads(out)
    assert result["device"] == "cpu" and "gpu" not in result
    for key, records, roles in (("default_bundle", 200, {"spearman", "mean_cosine"}), ("iqs_full", 16, {"spearman"})):
        runs = result[key]["runs"]
        assert result[key]["records"] == records
        assert list(runs) == [f"{p}, --max-tokens {b}" for p in ("fp32", "fp16") for b in (2048, 8192)]
        for name, r in runs.items():
            assert r["texts"] == records and roles <= set(r) and r["records_per_s"] > 0
            assert r["gate"] == "passed", (name, r)
            if name.startswith("fp32"):  # the same graph on the same device: the reference's numbers
                assert r["max_abs_score_error"] <= 1e-6 and r["spearman"] == 1.0
    assert not (tmp_path / "work" / "gpu-iqs-full").exists()  # --iqs given: nothing built
