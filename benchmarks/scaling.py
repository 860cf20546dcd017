"""How each stage of `car-onnx select` grows with n = 1k, 5k, 20k, 100k, 500k records: wall time per stage and
peak RSS of whole processes.

    python -m benchmarks.scaling [--quick] [--work DIR]

Records are the ~19k shared ones, repeated in order past that size (said in the results). Two bundles:
- the default bundle (real model) at 1k records (19k: see end_to_end), giving the model's cost per record;
- a lookup bundle at every size: all-MiniLM-L6-v2's real tokenizer and a 384-dim embedding table averaged over
  the tokens (a score from it too), so reading, tokenization, chunking, clustering and writing run at full size
  while the transformer's cost (measured above, linear in n) is left out. Its embeddings are synthetic: random
  token vectors averaged, so clustering works on 384-dim points of realistic spread."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from car_onnx.runtime.session import machine_threads

from .common import car_onnx, records_file, section_main, timed_process
from .end_to_end import stages


def lookup_bundle(work: Path) -> Path:
    from car_onnx_export.tiny import make_lookup_bundle

    root = work / "lookup-bundle"
    return root if (root / "manifest.json").is_file() else make_lookup_bundle(root)


def select(data: Path, out: Path, bundle: Path | None, threads: int) -> dict:
    cmd = [car_onnx(), "select", data, "-o", out, "--n1", "2%", "--threads", threads, "--force"]
    result = timed_process(cmd + (["-b", bundle] if bundle else []))
    result["stages_s"] = stages(result.pop("last_line"))
    return result


def run(work: Path, quick: bool) -> dict:
    sizes = [1000, 5000] if quick else [1000, 5000, 20000, 100000, 500000]
    threads, lookup = machine_threads(), lookup_bundle(work)
    out: dict = {"threads": threads, "default_bundle": {}, "lookup_bundle": {}}
    for n in sizes:
        data = records_file(work, n, seed=5)
        if n == 1000:
            out["default_bundle"][n] = select(data, work / "scaling-out.json", None, threads)
        out["lookup_bundle"][n] = select(data, work / "scaling-out.json", lookup, threads)
        out["lookup_bundle"][n]["input_mb"] = round(data.stat().st_size / 2**20, 1)
        print(n, out["lookup_bundle"][n], flush=True)
    per_record = [r["stages_s"]["score+embed"] / n for n, r in out["default_bundle"].items()]
    out["model_s_per_record"] = round(float(np.mean(per_record)), 5)
    out["note"] = (
        "records repeated past the ~19k shared ones; lookup bundle = real tokenizer + synthetic "
        "384-dim embeddings (no transformer): its stage times are the pipeline's own costs; add "
        "model_s_per_record x n for the default bundle's inference. Clustering switches to "
        "MiniBatchKMeans above 100,000 records."
    )
    return out


if __name__ == "__main__":
    section_main("scaling", run, __doc__)
