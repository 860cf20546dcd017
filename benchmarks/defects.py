"""What the scorer sees: per kind of defect, the share of held-apart records whose real answer outscores a corrupted
copy (car_onnx.core.defects, measuring phrases), for the default bundle before this scorer (the head of commit BEFORE)
and now, the default bundle with its tuned branch (`export default --tuned`), with its relevance branch (`export
default --relevance`), with both (`export default --tuned --relevance`) and the multilingual bundle, fp32 and int8;
a `--n1 5%` selection from real records with 9% corrupted copies of others; expert agreement on score_valid.csv;
score+embed cost per record, now and with each branch against before.

Held-apart records: the revised answers of pairs_valid.csv (never trained on, never chosen on) and 50 records of
each English corpus; wrong-language answers lent by the second half of alpaca_zh_2000.json (the first half lends
them to training).

    python -m benchmarks.defects [--quick] [--work DIR] [--only BUNDLE ...]

`--only` measures the named bundles alone (their defect table, agreement and selection; for a default bundle, the
cost and embeddings of every default bundle again, in one run) and puts them in the committed result in place of
theirs.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np

import car_onnx
from car_onnx.core.defects import corrupt
from car_onnx.evaluate import Text, agreement, defect_table, read_pairs
from car_onnx.runtime.manifest import Template

from .common import CORPORA, ROOT, real_records, section_main, shared_file

BEFORE = "41e7d9e"  # main before the defect-aware scorer: its head is exported as the "before" bundle


def held_apart(n_corpus: int) -> list[Text]:
    from car_onnx_export.train import TEMPLATE

    rows = read_pairs(shared_file("expert_revised", "pairs_valid.csv"), Template(**TEMPLATE))[0]  # the revisions
    rng = np.random.default_rng(5)
    for name in CORPORA:
        data = json.loads(shared_file("corpora", name).read_text())
        rows += [
            Text(data[i]["instruction"], data[i].get("input") or "", data[i]["output"])
            for i in rng.permutation(len(data))[:n_corpus]
        ]
    return rows


def foreign() -> list[str]:
    return [r["output"] for r in json.loads(shared_file("corpora", "alpaca_zh_2000.json").read_text())[1000:]]


def default_now(work: Path) -> Path:
    """The default bundle (fp32, int8) of export/weights, built once under `work`."""
    from car_onnx_export.default import export_default

    out = work / "default-now"
    if not (out / "manifest.json").is_file():
        export_default(out, precisions=("fp32", "int8"), log=lambda m: None)
    return out


BUNDLES = (
    "default (before)",
    "default",
    "default --tuned",
    "default --relevance",
    "default --tuned --relevance",
    "multilingual",
)


def bundles(work: Path) -> dict[str, Path]:
    """The default bundle now, with the head of BEFORE, with the tuned branch, the relevance branch and both, and the
    multilingual bundle (fp32, int8)."""
    from car_onnx_export.default import RELEVANCE_WEIGHTS, TUNED_WEIGHTS, both_branches, export_default
    from car_onnx_export.multilingual import export_multilingual

    out = {
        "default (before)": work / "default-before",
        "default": default_now(work),
        "default --tuned": work / "default-tuned",
        "default --relevance": work / "default-relevance",
        "default --tuned --relevance": work / "default-tuned-relevance",
        "multilingual": work / "multilingual-now",
    }  # in the order of BUNDLES
    both = work / "both" / "minilm_both.safetensors"
    if not (out["default --tuned --relevance"] / "manifest.json").is_file():  # merged as the command merges them
        both.parent.mkdir(parents=True, exist_ok=True)
        both_branches(TUNED_WEIGHTS, RELEVANCE_WEIGHTS, both)
    for name, weights in (
        ("default --tuned", TUNED_WEIGHTS),
        ("default --relevance", RELEVANCE_WEIGHTS),
        ("default --tuned --relevance", both),
    ):
        if not (out[name] / "manifest.json").is_file():
            export_default(out[name], precisions=("fp32", "int8"), weights=weights, log=lambda m: None)
    if not (out["default (before)"] / "manifest.json").is_file():
        weights = work / "before" / "minilm_head.safetensors"
        weights.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".safetensors", ".json"):
            blob = subprocess.run(
                ["git", "show", f"{BEFORE}:export/weights/minilm_head{suffix}"],
                cwd=ROOT,
                capture_output=True,
                check=True,
            ).stdout
            weights.with_suffix(suffix).write_bytes(blob)
        export_default(out["default (before)"], precisions=("fp32", "int8"), weights=weights, log=lambda m: None)
    if not (out["multilingual"] / "manifest.json").is_file():
        export_multilingual(out["multilingual"], log=lambda m: None)
    return out


def selection(model, records: list[Text], seed: int = 0) -> dict:
    """4,000 real records plus 400 corrupted copies of 400 others (the four kinds the issue measured): the share of
    corrupted records among those `select --n1 5%` keeps, against the input's."""
    real, donors = records[:4000], records[4000:4400]
    kinds = ("other_random", "echo", "cut_quarter", "loop_whole")
    copies = []
    for k, kind in enumerate(kinds):
        part = donors[k * 100 : (k + 1) * 100]
        copies += [
            (Text(part[c.index].instruction, part[c.index].input, c.output), kind)
            for c in corrupt(part, (kind,), seed=seed)
        ]
    return selected(model, real, copies, kinds, seed)


def selected(model, real: list[Text], copies: list[tuple[Text, str]], kinds: tuple[str, ...], seed: int) -> dict:
    """`select --n1 5%` on the real records and the corrupted copies (each with its kind), shuffled: how many
    corrupted records it keeps, of which kinds."""
    data = [dict(instruction=r.instruction, input=r.input, output=r.output, defect=None) for r in real]
    data += [dict(instruction=r.instruction, input=r.input, output=r.output, defect=kind) for r, kind in copies]
    data = [data[i] for i in np.random.default_rng(seed).permutation(len(data))]
    kept = model.select(data, n1="5%", dedup="none").take(data)
    bad = [r["defect"] for r in kept if r["defect"]]
    return {
        "records": len(data),
        "corrupted_in": round(len(copies) / len(data), 4),
        "selected": len(kept),
        "corrupted_selected": len(bad),
        "corrupted_share": round(len(bad) / len(kept), 4),
        "by_kind": {k: bad.count(k) for k in kinds if k in bad},
    }


def real_pool() -> list[Text]:
    """The records of the selection tests and of cost: the shared corpora's, shuffled with seed 11."""
    return [Text(r["instruction"], r["input"], r["output"]) for r in real_records(seed=11)]


def selections(paths: dict[str, Path], pool: list[Text], test) -> dict:
    """`test(model, pool)` (a selection test) for every bundle of `paths`, int8 then fp32."""
    out = {}
    for name, path in paths.items():
        for precision in ("int8", "fp32"):
            out[f"{name} {precision}"] = test(car_onnx.load(path, precision=precision), pool)
            print(f"selection {name} {precision}: {out[f'{name} {precision}']}", flush=True)
    return out


DEFAULTS = ("default (before)", "default", "default --tuned", "default --relevance", "default --tuned --relevance")


def cost(paths: dict[str, Path], records: list[Text], rounds: int) -> dict:
    """Seconds of score+embed per record (int8 and fp32, this machine's threads), now and with each branch against
    before, alternated."""
    data = [r.__dict__ for r in records]
    out = {}
    for precision in ("int8", "fp32"):
        models = {name: car_onnx.load(paths[name], precision=precision) for name in DEFAULTS}
        for m in models.values():
            m.score_embed(data[:20])  # sessions made, caches warm
        times = {name: [] for name in models}
        for _ in range(rounds):
            for name, m in models.items():
                t = time.perf_counter()
                m.score_embed(data)
                times[name].append(time.perf_counter() - t)
        best = {name: min(v) for name, v in times.items()}
        out[precision] = {
            "records": len(data),
            "ms_per_record": {k: round(v / len(data) * 1000, 3) for k, v in best.items()},
            "against_before": {k: round(best[k] / best["default (before)"], 3) for k in DEFAULTS[1:]},
        }
    return out


def embeddings_unchanged(paths: dict[str, Path], records: list[Text]) -> dict:
    data = [r.__dict__ for r in records]
    out = {}
    for precision in ("fp32", "int8"):
        a = car_onnx.load(paths["default (before)"], precision=precision).embed(data)
        for name in DEFAULTS[1:]:
            b = car_onnx.load(paths[name], precision=precision).embed(data)
            out.setdefault(name, {})[precision] = {
                "records": len(data),
                "identical": bool(np.array_equal(a, b)),
                "max_abs_difference": float(np.abs(a - b).max()),
            }
    return out


def lowered(paths: dict[str, Path], records: list[Text]) -> dict:
    """On real records: the share whose score the relevance branch lowers (the rest of its graph is the default's),
    and how much of the default's order it keeps (Spearman, the share of its top 5% still in the top 5%)."""
    from car_onnx_export.onnx_tools import compare

    data = [r.__dict__ for r in records]
    out = {}
    for precision in ("fp32", "int8"):
        base = car_onnx.load(paths["default"], precision=precision).score(data)
        scores = car_onnx.load(paths["default --relevance"], precision=precision).score(data)
        kept = compare({"score": base}, {"score": scores})
        out[precision] = {
            "records": len(data),
            "lowered": round(float(np.mean(base - scores > 1e-4)), 4),
            "spearman_with_default": round(kept["spearman"], 4),
            "top5pct_kept": round(kept["top5pct_overlap"], 4),
        }
    return out


def run(work: Path, quick: bool, only: list[str] | None = None) -> dict:
    every = bundles(work)
    paths = {name: every[name] for name in only} if only else every
    records = held_apart(20 if quick else 50)
    lent = foreign()
    tables, agreements = {}, {}
    valid = shared_file("expert_revised", "score_valid.csv")
    for name, path in paths.items():
        for precision in ("fp32", "int8"):
            model = car_onnx.load(path, precision=precision)
            tables[f"{name} {precision}"] = defect_table(model, records, foreign=lent)
            agreements[f"{name} {precision}"] = round(agreement(model, valid)["agreement"], 4)
            print(
                f"{name} {precision}: {agreements[f'{name} {precision}']} {tables[f'{name} {precision}']}", flush=True
            )
    pool = real_pool()
    chosen = selections(paths, pool, selection)
    out = {
        "held_apart_records": len(records),
        "defects": tables,
        "agreement_score_valid": agreements,
        "selection_n1_5pct": chosen,
    }
    if only:  # a default bundle measured again: the cost of every default bundle again, in one run
        if any(n in DEFAULTS for n in only):
            out["cost"] = cost(every, pool[:500], 7)
            out["embeddings_unchanged"] = embeddings_unchanged(every, pool[:500])
        return out
    return out | {
        "cost": cost(paths, pool[: 200 if quick else 500], 1 if quick else 7),
        "embeddings_unchanged": embeddings_unchanged(paths, pool[: 200 if quick else 500]),
        "lowered_by_relevance": lowered(paths, pool[: 400 if quick else 2000]),
    }


if __name__ == "__main__":
    section_main("defects", run, __doc__, bundles=BUNDLES)
