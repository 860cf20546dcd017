"""`python -m benchmarks --only gpu`: without CUDA it says so, exits 0 and writes nothing; its checks and
timings run end to end with CPU standing in for CUDA (--rehearse-on-cpu) on tiny bundles."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from car_onnx.runtime.manifest import read_manifest
from car_onnx.runtime.session import cuda_problem
from car_onnx_export import tiny
from car_onnx_export.check_texts import RECORDS

ROOT = Path(__file__).resolve().parents[1]


def bench(*args, env=None):
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
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


def write_records(path: Path) -> Path:
    path.write_text("".join(json.dumps({"instruction": i, "input": x, "output": o}) + "\n" for i, x, o in RECORDS))
    return path


def test_rehearsal_on_cpu_checks_both_precisions_at_each_budget(tmp_path):
    """Bundles without fp16 get it from fp32 (the export's conversion), then both run at each budget against CPU
    fp32 on the records given; and each attention-kernel setting runs (on CPU they are the same numbers)."""
    joint = tiny.make_bundle(tmp_path / "joint", response=True)
    scorer = tiny.make_bundle(tmp_path / "split", split=True, seed=3)
    rc, out, err = bench(
        "--rehearse-on-cpu",
        "--quick",
        "--iqs",
        scorer,
        "--default",
        joint,
        "--records",
        write_records(tmp_path / "records.jsonl"),
        "--work",
        tmp_path / "work",
    )
    assert rc == 0, err
    result = json.loads(out[out.index("{\n") :])  # after one line per model, the whole result
    assert result["device"] == "cpu" and "gpu" not in result
    assert {m.name: set(m.variants) for m in read_manifest(joint).models} == {"joint": {"fp32", "fp16"}}
    for key, records, ref, roles in (
        ("default_bundle", 100, 100, {"spearman", "mean_cosine"}),
        ("iqs_full", 64, 16, {"spearman"}),
    ):
        runs = result[key]["runs"]
        assert (result[key]["records"], result[key]["reference_records"]) == (records, ref)
        assert list(runs) == [f"{p}, --max-tokens {b}" for p in ("fp32", "fp16") for b in (2048, 8192)]
        for name, r in runs.items():
            assert r["texts"] == ref and roles <= set(r) and r["records_per_s"] > 0
            assert r["gate"] == "passed", (name, r)
            assert r["peak_gpu_memory_mib"] is None  # no GPU, no figure
            if name.startswith("fp32"):  # the same graph on the same device: the reference's numbers
                assert r["max_abs_score_error"] <= 1e-6 and r["spearman"] == 1.0
    default, iqs = result["attention_kernels"]
    assert (default["records"], iqs["records"]) == (100, 32)
    for a in (default, iqs):
        assert {k["sdpa_kernel"] for k in a["kernels"].values()} == {0, 8, 1, 2, 4, 16, 23}
        assert all(k["max_abs_score_difference"] == 0.0 for k in a["kernels"].values())
    assert not (tmp_path / "work" / "gpu-iqs-full").exists()  # --iqs given: nothing built


def test_kit_skeleton_draws_the_weights_again(tmp_path):
    """A bundle travels as skeletons: small tensors as they are, large ones as shape, dtype, mean and deviation,
    drawn again there into a bundle that loads (hashes checked) and runs."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from benchmarks.gpu_kit import pack_skeletons, unpack_skeletons
    from car_onnx import load

    src = tiny.make_bundle(tmp_path / "src", split=True)
    pack_skeletons(src, tmp_path / "kit", small=16)
    unpack_skeletons(tmp_path / "kit", tmp_path / "out")
    for model in read_manifest(src).models:
        graph = model.variants["fp32"].graph
        recipe = {
            r["name"]: r for r in json.loads((tmp_path / "kit" / "skeleton" / model.name / "weights.json").read_text())
        }
        assert recipe and (tmp_path / "kit" / "skeleton" / model.name / "model.onnx").stat().st_size < 4096
        before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(src / graph)).graph.initializer}
        after = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "out" / graph)).graph.initializer}
        assert before.keys() == after.keys()
        for name, a in before.items():
            b = after[name]
            assert (a.shape, a.dtype) == (b.shape, b.dtype)
            if name not in recipe:
                assert a.tobytes() == b.tobytes()
                continue
            assert a.size > 16 and not np.array_equal(a, b)
            assert abs(b.mean() - a.mean()) < 4 * a.std() / np.sqrt(a.size) + 1e-6
            assert abs(b.std() / a.std() - 1) < 0.3
    records = [{"instruction": i, "input": x, "output": o} for i, x, o in RECORDS[:5]]
    assert np.isfinite(load(tmp_path / "out", device="cpu").score(records)).all()
