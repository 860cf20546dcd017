"""The tables of benchmarks/results/*.json, generated, never edited by hand (`python -m benchmarks.report`): one
table per section, each from one run on one named CPU with its command and date, into docs/benchmarks.md between
its markers and into benchmarks/results/README.md; and README.md's headline figures, between its own markers, from
the sections of one run (the last whole suite's, where they share its machine, command and date)."""

from __future__ import annotations

import json
import subprocess

from .common import RESULTS, ROOT

START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"
DEFECTS_START, DEFECTS_END = "<!-- defects:start -->", "<!-- defects:end -->"
DOCS = ROOT / "docs" / "benchmarks.md"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _met(value: float, target: float, higher: bool = True) -> str:
    ok = value >= target if higher else value <= target
    return f"{'>=' if higher else '<='} {target:g}: {'met' if ok else 'MISSED'}"


def _cpu(d: dict) -> str:
    """The CPU of a result, as a row names it."""
    m = d["machine"]
    return f"{m['cpu']}, {'AVX-512 VNNI' if 'avx512_vnni' in m['cpu_flags'] else 'AVX2, no VNNI'}, {m['cores']} cores"


def _kernels(d: dict) -> list[tuple[str, str, str]]:
    out = []
    for name, r in d["products"].items():
        g = r["gflops"]
        out.append(
            (
                f"int8 matrix product over fp32, {name} ({' x '.join(map(str, r['shape_mkn']))}): integer "
                "product alone / as dynamic int8 runs it",
                f"{g['integer / fp32']}x / {g['dynamic / fp32']}x "
                f"(fp32 {g['onnxruntime fp32']} GFLOP/s, PyTorch {g['torch fp32']})",
                "",
            )
        )
    for shape, r in d["layer_norm_ms_per_call"].items():
        out.append(
            (
                f"layer norm kernel ({shape}): SkipLayerNormalization / Add + LayerNormalization",
                f"{r['SkipLayerNormalization']} / {r['Add + LayerNormalization']} ms ({r['fused / unfused']}x)",
                "",
            )
        )
    s = d["threads_side_by_side"]
    for precision, r in s["seconds"].items():
        out.append(
            (
                f"{s['texts']} real texts one at a time, default bundle {precision}: one session with "
                f"{d['threads']} threads / {d['threads']} single-threaded runs side by side",
                f"{r['one session, all threads']} / {r['single-threaded runs side by side']} s ({r['speed-up']}x)",
                "",
            )
        )
    return out


def _iqs_speed(d: dict) -> list[tuple[str, str, str]]:
    out = []
    if "runs" in d:
        (tn, t), (_, f), (_, i) = d["runs"].items()
        out += [
            (
                f"IQS full size, {d['texts']} real texts: PyTorch fp32 / ONNX fp32 / int8 tokens/s",
                f"{t['tokens_per_s']} / {f['tokens_per_s']} / {i['tokens_per_s']}",
                "",
            ),
            (
                "IQS int8 tokens/s over PyTorch fp32",
                f"{i['tokens_per_s_vs_pytorch']}x",
                _met(i["tokens_per_s_vs_pytorch"], 3),
            ),
            (
                "IQS peak RSS / model load: PyTorch, ONNX fp32, int8",
                f"{t['peak_rss_mb']:.0f} / {f['peak_rss_mb']:.0f} / {i['peak_rss_mb']:.0f} MB; "
                f"{t['load_s']} / {f['load_s']} / {i['load_s']} s",
                "",
            ),
            (
                "IQS fp32 max score error vs PyTorch; int8 Spearman (random weights)",
                f"{d['vs_pytorch_fp32']['fp32']['max_abs_score_error']}; {d['vs_pytorch_fp32']['int8']['spearman']}",
                "",
            ),
        ]
    return out


def _api(d: dict) -> list[tuple[str, str, str]]:
    out = []
    st, api = d["sentence-transformers encode (PyTorch fp32)"], d["car_onnx Model.embed (default bundle, int8)"]
    out.append(
        (
            f"embed {d['records']} real records in-process (the call alone): sentence-transformers `encode` / "
            "car_onnx `Model.embed` (default bundle int8)",
            f"{st['infer_s']} / {api['infer_s']} s: {d['in_process_speedup']}x (model load {st['load_s']} / "
            f"{api['load_s']} s; mean cosine {d['mean_cosine_vs_st']})",
            "",
        )
    )
    return out


def _export_iqs_full(d: dict) -> list[tuple[str, str, str]]:
    out = []
    sizes = {k.split("/")[-1]: v for k, v in d["files"].items()}
    fp32 = sum(v for k, v in sizes.items() if k.startswith("model.fp32"))
    int8 = sum(v for k, v in sizes.items() if k.startswith("model.int8"))
    e = d["export"]
    if "peak_rss_with_child_processes_mb" in e:
        # the sum is sampled by a thread of the export, which can miss a peak while torch.onnx holds the GIL;
        # the largest single process (ru_maxrss) is a bound from below of the sum
        peak = max(e["peak_rss_with_child_processes_mb"], e["peak_rss_mb"]) / 1024
        out.append(
            (
                "IQS full-size export (fp32 + int8): wall time, peak RSS of the export with its child "
                "processes (largest single process), files",
                f"{e['wall_s']:.0f} s, {peak:.1f} GB ({e['peak_rss_mb'] / 1024:.1f} GB), fp32 "
                f"{fp32 / 2**30:.2f} GB, int8 {int8 / 2**30:.2f} GB (embedding tables "
                f"{d['variants']['int8'].get('embeddings', 'fp32')})",
                _met(round(peak, 2), 8, higher=False),
            )
        )
    else:
        out.append(
            (
                "IQS full-size export (fp32 + int8): wall time, peak RSS, files",
                f"{e['wall_s']:.0f} s, {e['peak_rss_mb'] / 1024:.1f} GB, "
                f"fp32 {fp32 / 2**30:.2f} GB, int8 {int8 / 2**30:.2f} GB",
                "within 24 GB",
            )
        )
    return out


def _gpu(d: dict) -> list[tuple[str, str, str]]:
    out = []
    for key, label in (("default_bundle", "default bundle"), ("iqs_full", "IQS full size, random weights")):
        m = d[key]
        for precision in ("fp32", "fp16"):
            runs = {name.split("--max-tokens ")[1]: r for name, r in m["runs"].items() if name.startswith(precision)}
            r = next(iter(runs.values()))
            vs = f"Spearman {min(v['spearman'] for v in runs.values())}" + (
                f", mean cosine {min(v['mean_cosine'] for v in runs.values())}" if "mean_cosine" in r else ""
            )
            speed = ", ".join(f"{v['records_per_s']:,.0f} at {int(b):,}" for b, v in runs.items())
            out.append(
                (
                    f"{d['gpu'].split(',')[0]}, {label}, CUDA {precision}, {m['records']:,} real records: records/s "
                    f"by --max-tokens; vs CPU fp32 ({m['reference_records']:,}); peak GPU memory",
                    f"{speed}; {vs}; {r['peak_gpu_memory_mib']:,} MiB",
                    "gates: " + ", ".join(sorted({v["gate"] for v in runs.values()})),
                )
            )
    for a in d.get("attention_kernels", []):
        speed = ", ".join(f"{name} {k['records_per_s']:,.0f}" for name, k in a["kernels"].items())
        out.append(
            (
                f"{d['gpu'].split(',')[0]}, {a['model']}, CUDA fp16, {a['records']:,} records at --max-tokens "
                f"{a['max_tokens']:,}: records/s by attention kernel (onnxruntime's sdpa_kernel)",
                speed,
                "car-onnx leaves cuDNN out",
            )
        )
    return out


def _default_bundle(d: dict) -> list[tuple[str, str, str]]:
    out = []
    a = d["agreement_score_valid"]
    out.append(
        (
            "default scorer, pairwise agreement on score_valid (fp32 / int8)",
            f"{a['fp32']['agreement']} / {a['int8']['agreement']} (longer wins: {a['fp32']['longer_text_wins_chars']})",
            _met(a["int8"]["agreement"], 0.9),
        )
    )
    f = d["int8_vs_fp32"]
    out.append(
        (
            f"default bundle int8 vs fp32, {f['texts']} real records: Spearman / top-5% / mean cosine / "
            "selection Jaccard",
            f"{f['spearman']} / {f['top5pct_overlap']} / {f['mean_cosine']} / {f['selection_jaccard']}",
            "0.99 / 0.9 / 0.995",
        )
    )
    e = d["embed_speed"]
    for name, r in e["runs"].items():
        extra = f", {r['speedup_vs_st']}x" if "speedup_vs_st" in r else ""
        target = _met(r["speedup_vs_st"], 3) if name == "car-onnx embed, default bundle int8" else ""
        out.append(
            (
                f"embed {e['records']} real records, whole process: {name}",
                f"{r['texts_per_s']} texts/s, {r['peak_rss_mb']:.0f} MB{extra}",
                target,
            )
        )
    return out


def _multilingual(d: dict) -> list[tuple[str, str, str]]:
    out = []
    a = d["agreement_score_valid"]
    out.append(
        (
            "multilingual scorer, pairwise agreement on score_valid (fp32 / int8)",
            f"{a['fp32']['agreement']} / {a['int8']['agreement']}",
            _met(a["int8"]["agreement"], 0.9),
        )
    )
    e = d["embed_speed"]
    for name, r in e["runs"].items():
        extra = [f"{r[k]}x {k[len('speedup_vs_') :].replace('_', ' ')}" for k in r if k.startswith("speedup_vs_")]
        if "mean_cosine_vs_package" in r:
            extra.append(f"cosine vs package mean {r['mean_cosine_vs_package']}, min {r['min_cosine_vs_package']}")
        out.append(
            (
                f"embed {e['records']} real English records, whole process: {name}",
                f"{r['texts_per_s']} texts/s, {r['peak_rss_mb']:.0f} MB" + "".join(f"; {x}" for x in extra),
                "",
            )
        )
    zh = d["chinese"]
    en = {label: max(c["unknown_share"] for c in v.values()) for label, v in d["unknown_share_english"].items()}
    out.append(
        (
            f"unknown-token share, {zh['records']} Chinese records / English corpora (highest of 4): "
            "default / multilingual bundle",
            f"{zh['default']['unknown_share']:.1%} / {zh['multilingual']['unknown_share']:.2%}; "
            f"{en['default']:.2%} / {en['multilingual']:.2%}",
            f"warning above {d['unknown_share_limit']:.0%}: default "
            f"{'warned' if zh['default']['warned'] else 'NOT warned'}, multilingual "
            f"{'warned' if zh['multilingual']['warned'] else 'not warned'}",
        )
    )
    for label in ("multilingual", "default"):
        c = zh[label]
        out.append(
            (
                f"{label} bundle on the Chinese records: clusters, largest share, sizes",
                f"{c['clusters']}, {c['largest_cluster_share']:.1%}, {' '.join(map(str, c['cluster_sizes_desc']))}",
                "",
            )
        )
    corr = d["length_correlation"]
    out.append(
        (
            "multilingual int8 score: Spearman with length in tokens, per corpus",
            ", ".join(f"{k.split('.')[0]} {v['spearman_score_tokens']}" for k, v in corr.items()),
            "",
        )
    )
    return out


def _int8_recipes(d: dict) -> list[tuple[str, str, str]]:
    out = []
    for name, r in d["recipes"].items():
        a, g = r["records"], r["check_texts"]
        ok = a["spearman"] >= 0.99 and a["top5pct_overlap"] >= 0.9 and a["mean_cosine"] >= 0.995
        out.append(
            (
                f'default bundle int8 recipe "{name}" vs fp32: {a["texts"]} real records Spearman / '
                f"top-5% / mean cosine; {g['texts']} export check texts Spearman / mean cosine; speed",
                f"{a['spearman']} / {a['top5pct_overlap']} / {a['mean_cosine']}; {g['spearman']} / "
                f"{g['mean_cosine']}: gate {r['export_gate']}; {r['speed_vs_shipped']}x the shipped recipe",
                f"0.99 / 0.9 / 0.995: {'met' if ok else 'MISSED'}",
            )
        )
    return out


def _peers(d: dict) -> list[tuple[str, str, str]]:
    out = []
    for name, r in d["embed"].items():
        out.append(
            (
                f"embed {d['records']} real records, whole process, against sentence-transformers' own "
                f"backends: {name}",
                f"{r['seconds']:.1f} s, {r['speedup_vs_pytorch']}x PyTorch; "
                f"cosine to PyTorch fp32 mean {r['mean_cosine_vs_pytorch']} / min "
                f"{r['min_cosine_vs_pytorch']}; {r['peak_rss_mb']:.0f} MB",
                "",
            )
        )
    for name, r in d["score"].items():
        out.append(
            (
                f"score {d['records']} real records, whole process: {name}",
                f"{r['seconds']:.1f} s, {r['speedup_vs_pytorch']}x PyTorch fp32; Spearman / top-5% to "
                f"PyTorch fp32 {r['spearman_vs_pytorch']} / {r['top5pct_overlap_vs_pytorch']}; "
                f"{r['peak_rss_mb']:.0f} MB",
                "",
            )
        )
    return out


def _int8_selection(d: dict) -> list[tuple[str, str, str]]:
    out = []
    f, decision = d["fp32"], d["decision"]
    out.append(
        (
            f"default bundle fp32: agreement on score_valid; {d['records']} real records, fp32 seed "
            "43 vs 42: selection Jaccard / cluster ARI (the yardstick); in-process cost",
            f"{f['agreement']}; "
            f"{f['seed_43']['selection_jaccard']} / {f['seed_43']['cluster_ari']}; {f['ms_per_record']} ms "
            "per record",
            "",
        )
    )
    for name, r in d["recipes"].items():
        embed = r.get("embed_2000")
        speed = f"; embed {d['embed_records']}: {embed['speedup_vs_st']}x sentence-transformers" if embed else ""
        misses = decision["misses"][name]
        verdict = (
            ("ADOPTED" if name == decision["adopt"] else "qualifies")
            if not misses
            else "misses " + ", ".join(f"{k} by {v}" for k, v in misses.items())
        )
        out.append(
            (
                f'default bundle int8 recipe "{name}": agreement; {d["records"]} real records, '
                "selection Jaccard / cluster ARI vs fp32; speed",
                f"{r['agreement']}; {r['selection_jaccard']} "
                f"/ {r['cluster_ari']}; {r['ms_per_record']} ms per record ({d.get('timed_records', d['records'])} "
                f"timed), {r['speed_vs_shipped']}x the shipped recipe{speed}",
                verdict,
            )
        )
    return out


def _end_to_end(d: dict) -> list[tuple[str, str, str]]:
    out = []
    o, r = d["car_onnx_select_int8"], d["reference_structure_pytorch_fp32"]
    st = ", ".join(f"{k} {v:.0f}" for k, v in o["stages_s"].items())
    rs = ", ".join(f"{k[:-2]} {v:.0f}" for k, v in r.items() if k.endswith("_s") and k != "seconds")
    out += [
        (
            f"select on {d['records']} records: car-onnx (int8, one pass) vs reference structure "
            "(PyTorch scorer + sentence-transformers + scikit-learn)",
            f"{o['seconds']:.0f} s [{st}] vs {r['seconds']:.0f} s [{rs}]",
            "",
        ),
        ("end-to-end speed-up", f"{d['speedup']}x", _met(d["speedup"], 3)),
        (
            "end-to-end peak RSS (car-onnx / reference)",
            f"{o['peak_rss_mb']:.0f} / {r['peak_rss_mb']:.0f} MB = {d['peak_memory_ratio']}",
            _met(d["peak_memory_ratio"], 1 / 3, higher=False),
        ),
        ("selection Jaccard, car-onnx int8 vs reference fp32", str(d["selected"]["jaccard"]), ""),
    ]
    return out


def _iqs_order(d: dict) -> list[tuple[str, str, str]]:
    out = [
        (
            f"the paper's IQS score against answer length ({d['records']:,} records of its selection)",
            f"{d['iqs_vs_answer_chars']:.3f}",
            "",
        )
    ]
    for key, r in d["bundles"].items():
        out.append(
            (
                f"{key}: Spearman with the paper's IQS / with answer length",
                f"{r['spearman_iqs']:.3f} / {r['spearman_answer_chars']:.3f}",
                "",
            )
        )
    for precision, r in (d.get("kept_by_default") or {}).items():
        out.append(
            (
                f"default {precision} on {d['real_records']:,} real records: Spearman with its quality head alone / "
                "share of the head's top 5% still in the top 5%",
                f"{r['spearman_with_quality_alone']:.3f} / {r['top5pct_kept']:.2f}",
                "",
            )
        )
    for option in ("tuned", "relevance"):
        for precision, r in d.get(f"kept_by_{option}", {}).items():
            out.append(
                (
                    f"default --{option} {precision} on {d['real_records']:,} real records: Spearman with the "
                    "default / share of the default's top 5% still in the top 5%",
                    f"{r['spearman_with_default']:.3f} / {r['top5pct_kept']:.2f}",
                    "",
                )
            )
    return out


def _whole_records(d: dict) -> list[tuple[str, str, str]]:
    out = []
    if agg := d.get("aggregates_default_fp32"):
        for placed, r in agg.items():
            out.append(
                (
                    f"default fp32, pairs {placed.replace('_', ' ')}: told apart by the units' mean / mean weighted by "
                    "answer tokens / minimum / first unit (before)",
                    " / ".join(f"{r[k]:.3f}" for k in ("mean", "token_weighted_mean", "minimum", "first_unit")),
                    "",
                )
            )
    for key, r in (d.get("embedding_rules") or {}).items():
        out.append(
            (
                f"{key} fp32: {r['conversations']} two-exchange conversations from one of {r['clusters']} clusters of "
                "the paper's selection: share of the 10 nearest from the same cluster, embedding by the rule (the "
                "exchanges' mean) / their mean weighted by answer tokens / the first exchange",
                f"{r['rule']:.3f} / {r['weighted_by_tokens']:.3f} / {r['first_exchange']:.3f}",
                "",
            )
        )
    for key, r in d["pairs"].items():
        out.append(
            (
                f"{key}: held-out pairs told apart alone / as the last of two exchanges / as the first (last of two "
                "with --turns first)",
                f"{r['alone']:.3f} / {r['last_of_two']:.3f} / {r['first_of_two']:.3f} ({r['last_of_two_turns_first']:.3f})",
                _met(min(r["last_of_two"], r["first_of_two"]), 0.85),
            )
        )
    for key, r in d["five_part"].items():
        longer = r["complete_preferred_when_longer"]
        out.append(
            (
                f'{key}: complete five-part answer over its last two parts as "I don\'t know." (all {r["answers"]} / '
                f"the {r['longer_than_one_window']} longer than one window)",
                f"{r['complete_preferred']:.3f} / " + (f"{longer:.3f}" if longer is not None else "-"),
                _met(r["complete_preferred"], 0.90),
            )
        )
    for key, rows_ in d["cost"].items():
        out.append(
            (
                f"{key}: ms per record, whole records (windows read) / the first window alone, at "
                + " / ".join(str(r["tokens"]) for r in rows_)
                + " answer tokens",
                "; ".join(
                    f"{r['ms_per_record']:g} ({r['windows']:g}) / {r['first_window_ms_per_record']:g}" for r in rows_
                ),
                "about L / window windows' worth",
            )
        )
    return out


def _spark(d: dict) -> list[tuple[str, str, str]]:
    o = d["overhead"]
    out = [
        (
            f"select on {o['records']:,} records: single process (2 threads) / --spark local[2]",
            f"{o['single_process']['seconds']:.0f} s / {o['spark_local_2']['seconds']:.0f} s "
            f"(+{o['wall_overhead']:.0%}); the same rows: {o['same_rows']}"
            + (f" (measured {o['measured']})" if "measured" in o else ""),
            "",
        )
    ]
    for n, r in d["memory_sample_mode"].items():
        out.append(
            (
                f"--spark local[2] --cluster sample, {int(n):,} records (lookup bundle): peak RSS of the largest process",
                f"{r['peak_rss_mb']:.0f} MB, {r['seconds']:.0f} s",
                "",
            )
        )
    return out


def _footprint(d: dict) -> list[tuple[str, str, str]]:
    out = []
    w = d["wall_s_median_of_5"]
    if isinstance(sizes := d["fresh_venv_mb"], dict):
        out.append(
            (
                "fresh venv: empty / runtime alone / torch + transformers + sentence-transformers + sklearn",
                " / ".join(f"{v:.0f}" for v in sizes.values()) + " MB",
                "",
            )
        )
    out.append(
        (
            "`import car_onnx` / `car-onnx --help` / `import torch, transformers, sentence_transformers`",
            " / ".join(f"{v:.2f} s" for k, v in w.items() if "pass" not in k),
            "",
        )
    )
    return out


def _kit(d: dict) -> list[tuple[str, str, str]]:
    out = []
    k, s = d["kit"], d["seconds"]
    out.append(
        (
            f"offline install kit (`car-onnx pack`), default bundle, {k['target']}: wheels + bundle = archive",
            f"{k['wheels']} wheels {k['wheels_mb']:.0f} MB + {k['bundle_mb']:.0f} MB = {k['archive_mb']:.0f} MB",
            "",
        )
    )
    out.append(
        (
            "offline install kit: pack (pip cache warm) / install.sh with no "
            "network / connected install (venv + `pip install .` + copy the bundle)",
            " / ".join(f"{v:.0f}" for v in s.values()) + " s",
            "",
        )
    )
    return out


def _scaling(d: dict) -> list[tuple[str, str, str]]:
    out = []
    for n, r in d["lookup_bundle"].items():
        st = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items())
        out.append(
            (
                f"scaling, lookup bundle, {int(n):,} records ({r['input_mb']} MB)",
                f"{r['seconds']:.0f} s [{st}], {r['peak_rss_mb']:.0f} MB peak",
                "",
            )
        )
    out.append(("scaling: default bundle model cost", f"{d['model_s_per_record'] * 1000:.1f} ms per record", ""))
    return out


def _report_speed(d: dict) -> list[tuple[str, str, str]]:
    out = []
    for n, r in d["sizes"].items():
        out.append(
            (
                f"select --report, lookup bundle, {int(n):,} records: time the report adds",
                f"report stage {r['report_stage_s']:.1f} s + write pass {r['write_stage_extra_s']:+.1f} s "
                f"(whole run {r['without_report']['seconds']:.0f} s -> {r['with_report']['seconds']:.0f} s, "
                f"noisy host); page {r['page_mb']} MB",
                "",
            )
        )
    for n, r in d.get("alone", {}).items():
        out.append(
            (
                f"select --report, {int(n):,} records: the report's own costs (in-process, lookup bundle)",
                f"page {r['page_s']:.1f} s (k={r['k']}, {r['page_mb']} MB) + write pass "
                f"{r['write_pass_extra_s']:.1f} s (the pass alone: {r['read_pass_s']:.1f} s); busy 2-core host",
                "",
            )
        )
    return out


def _ray(d: dict) -> list[tuple[str, str, str]]:
    out = []
    if r := d.get("overhead"):
        a, b = r["single_process"], r["ray_local_2_actors"]
        out.append(
            (
                f"Ray overhead, {r['records']:,} records, default bundle: single process (2 threads) vs "
                "`--ray local` (2 actors of 1 CPU)",
                f"{a['seconds']:.0f} s vs {b['seconds']:.0f} s: "
                f"{r['wall_overhead']:+.1%} whole run, {r['inference_overhead']:+.1%} score+embed; output "
                f"{'identical' if r['same_output'] else 'DIFFERENT'}",
                "<= +15%: " + ("met" if r["wall_overhead"] <= 0.15 else "MISSED"),
            )
        )
    if r := d.get("driver_memory_sample_mode"):
        sizes = {int(n): v for n, v in r.items() if n.isdigit()}
        alone = [v["without_ray"]["peak_rss_mb"] for v in sizes.values() if "without_ray" in v]
        out.append(
            (
                "Ray driver peak RSS, `--cluster sample`, lookup bundle: "
                + " / ".join(f"{n:,}" for n in sizes)
                + " records",
                " / ".join(f"{v['driver_peak_rss_mb']:.0f}" for v in sizes.values())
                + " MB"
                + (
                    f" (without Ray: {' / '.join(f'{m:.0f}' for m in alone)} MB; outputs "
                    f"{'identical' if all(v['same_output'] for v in sizes.values()) else 'DIFFERENT'})"
                    if alone
                    else ""
                ),
                "<= 1024 MB: " + ("met" if max(v["driver_peak_rss_mb"] for v in sizes.values()) <= 1024 else "MISSED"),
            )
        )
    if r := d.get("scaling"):
        out.append(
            (
                f"Ray scaling, {r['records']:,} records, default bundle: test cluster of 1 / 2 one-CPU nodes",
                f"{r['1_node']['seconds']:.0f} s / {r['2_node']['seconds']:.0f} s ({r['speedup']}x)",
                "",
            )
        )
    return out


def _select_52k(d: dict) -> list[tuple[str, str, str]]:
    out = []
    r = d["select"]
    st = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items())
    out.append(
        (
            f"select --n1 2%, {d['records']:,} records (the shared corpora repeated), default bundle, "
            f"{d['threads']} threads",
            f"{r['seconds']:.0f} s [{st}], {r['peak_rss_mb']:.0f} MB peak",
            "<= 300 s: " + ("met" if r["seconds"] <= 300 else "MISSED"),
        )
    )
    return out


def _sample_10m(d: dict) -> list[tuple[str, str, str]]:
    out = []
    r = d["select"]
    st = ", ".join(f"{k} {v:.0f}" for k, v in r["stages_s"].items())
    out.append(
        (
            f"select --cluster sample on one machine, {d['records']:,} records ({d['input_gb']} GB), lookup "
            "bundle, 2 threads",
            f"{r['seconds']:.0f} s [{st}], {r['peak_rss_mb']:.0f} MB peak, work dir {d['work_dir_gb']} GB",
            "",
        )
    )
    return out


def _resume(d: dict) -> list[tuple[str, str, str]]:
    out = []
    out.append(
        (
            f"resume: select on {d['records']} records killed after {d['chunks_finished_when_killed']} of "
            f"{d['chunks']} chunks, then resumed",
            f"{d['killed_after_s']} s + {d['resumed_s']} s vs "
            f"{d['uninterrupted_s']} s uninterrupted: overhead {d['resume_overhead_s']} s; output "
            f"{'identical' if d['resumed_output_identical'] else 'DIFFERENT'}",
            "",
        )
    )
    for name, r in d["determinism"].items():
        out.append(
            (
                f"determinism: {name}",
                "same selection"
                if r["same_selection_as_first"]
                else f"selection differs (Jaccard {r['jaccard_with_first']})",
                "",
            )
        )
    return out


def _optimum_onnx(d: dict) -> list[tuple[str, str, str]]:
    o, ours = d["optimum_onnx"], d["car_onnx_export_embedder"]
    q = o["int8_avx512_vnni_dynamic_vs_sentence_transformers"]
    return [
        (
            f"all-MiniLM-L6-v2 against sentence-transformers on {d['texts']} export check texts, mean / min cosine: "
            "optimum-onnx fp32; its AVX-512 VNNI dynamic int8",
            f"{o['fp32_vs_sentence_transformers']['mean_cosine']} "
            f"/ {o['fp32_vs_sentence_transformers']['min_cosine']}; {q['mean_cosine']} / {q['min_cosine']}",
            "",
        ),
        (
            "the same with `car-onnx export embedder`: fp32; int8",
            f"{ours['fp32']['mean_cosine']} / "
            f"{ours['fp32']['min_cosine']}; {ours['int8']['mean_cosine']} / {ours['int8']['min_cosine']}",
            "",
        ),
        ("fusions in the graph: optimum-onnx; export embedder", f"{o['fused_ops']}; {ours['fp32']['fusions']}", ""),
    ]


DEFECT_LABELS = {
    "other_random": "another question's answer",
    "other_near": "the answer to the nearest other question",
    "echo": "the instruction echoed",
    "restate": "the instruction restated",
    "echo_input": "the input echoed (alone or after the instruction)",
    "cut_quarter": "its first quarter",
    "cut_half": "cut mid-sentence",
    "cut_sentence": "cut after a sentence",
    "loop_whole": "the answer three times",
    "loop_paragraph": "a sentence repeated in place",
    "loop_ngram": "an n-gram loop",
    "foreign": "an answer in Chinese",
    "empty": "an empty answer",
    "boilerplate": "a boilerplate answer",
    "refuse_part": "its last parts refused",
}


def _pair(d: dict, key: str, fmt: str = "{:.3f}") -> str:
    return " / ".join(fmt.format(d[f"{key} {p}"]) for p in ("fp32", "int8"))


# The defects section's columns: the bundle as the benchmark names it, its README header and its short label.
DEFECT_COLUMNS = {
    "default (before)": ("default bundle before", "before"),
    "default": ("default bundle now", "now"),
    "default --tuned": ("default, `--tuned`", "tuned"),
    "default --relevance": ("default, `--relevance`", "relevance"),
    "default --tuned --relevance": ("default, `--tuned --relevance`", "tuned and relevance"),
    "multilingual": ("multilingual bundle now", "multilingual"),
}


def _defect_names(d: dict) -> list[str]:
    """The columns a defects result measured (one from before the tuned-and-relevance column has one less)."""
    return [n for n in DEFECT_COLUMNS if f"{n} fp32" in d["defects"]]


def _again(d: dict) -> str:
    """Where a result's columns were measured again (`--only`): which, how and when, to follow its own command."""
    runs = d.get("remeasured", {})
    return "".join(
        f"; the {DEFECT_COLUMNS[n][1]} column measured again: `{r['command']}`, {_cpu(r)}, {r['date']}"
        for n, r in runs.items()
    )


def _shares(sel: dict, name: str) -> str:
    """A selection cell: the share of corrupted records among those selected, fp32 / int8."""
    return " / ".join(f"{sel[f'{name} {p}']['corrupted_share']:.1%}" for p in ("fp32", "int8"))


def _defect_rows(d: dict) -> list[tuple[str, ...]]:
    """Rows of the defects table: a measure, then one cell per column of _defect_names."""
    names = _defect_names(d)
    defaults = names[:-1]  # every column but the multilingual bundle's
    out = []
    for kind, label in DEFECT_LABELS.items():
        if all(kind in d["defects"][f"{n} fp32"] for n in names):
            out.append(
                (
                    f"real answer over {label}",
                    *(
                        " / ".join(f"{d['defects'][f'{n} {p}'][kind]['preferred']:.3f}" for p in ("fp32", "int8"))
                        for n in names
                    ),
                )
            )
    sel = d["selection_n1_5pct"]
    share = sel["default int8"]["corrupted_in"]
    out.append(
        (
            f"`select --n1 5%` from data {share:.1%} corrupted: corrupted among the selected",
            *(_shares(sel, n) for n in names),
        )
    )
    hard = _load("hard_selection")
    if hard and all(f"{n} fp32" in hard["selection_n1_5pct"] for n in names):
        sel = hard["selection_n1_5pct"]
        share = sel["default int8"]["corrupted_in"]
        out.append(
            (
                f"`select --n1 5%` from data {share:.1%} corrupted with the kinds read worst (the nearest other "
                "question's answer, cuts mid-sentence and after a sentence, last parts refused): corrupted among the "
                f"selected (`{hard['command']}`, {_date('hard_selection', hard)}{_again(hard)})",
                *(_shares(sel, n) for n in names),
            )
        )
    out.append(
        ("expert agreement on score_valid.csv", *(_pair(d["agreement_score_valid"], n, "{:.4f}") for n in names))
    )
    c = d["cost"]

    def ms(name):
        cell = f"{c['fp32']['ms_per_record'][name]} / {c['int8']['ms_per_record'][name]}"
        if name == names[0]:
            return cell
        return cell + f" ({c['fp32']['against_before'][name]}x / {c['int8']['against_before'][name]}x)"

    out.append(("score+embed time per record (ms), against before", *(ms(n) for n in defaults), ""))
    e = d["embeddings_unchanged"]

    def same(name):
        return " / ".join(
            "identical" if e[name][p]["identical"] else f"max difference {e[name][p]['max_abs_difference']:.2g}"
            for p in ("fp32", "int8")
        )

    out.append(("embeddings of the default bundle, against before", "", *(same(n) for n in defaults[1:]), ""))
    low = d["lowered_by_relevance"]
    lowered = " / ".join(
        f"{low[p]['lowered']:.1%}; {low[p]['spearman_with_default']:.3f}; {low[p]['top5pct_kept']:.0%}"
        for p in ("fp32", "int8")
    )
    out.append(
        (
            f"real records ({low['fp32']['records']:,} of the shared corpora) whose score the relevance branch "
            "lowers; Spearman with the default; its top 5% kept",
            *(lowered if n == "default --relevance" else "" for n in names),
        )
    )
    return out


def _defects(d: dict) -> list[tuple[str, str, str]]:
    labels = [DEFECT_COLUMNS[n][1] for n in _defect_names(d)]
    return [
        (row[0], "; ".join(f"{label} {v}" for label, v in zip(labels, row[1:]) if v), "") for row in _defect_rows(d)
    ]


def defects_table() -> str:
    """README's table of what the scorer sees (fp32 / int8 in each cell)."""
    d = _load("defects")
    if not d:
        return ""
    headers = [DEFECT_COLUMNS[n][0] for n in _defect_names(d)]
    lines = [
        f"Held-apart records ({d['held_apart_records']:,}: the expert validation pairs' revised answers and 50 of "
        f"each English corpus), each against a corrupted copy; {_cpu(d)}, {_date('defects', d)}, "
        f"`{d['command']}`{_again(d)}. fp32 / int8 in each cell. Every bundle reads whole records (long answers in windows; "
        'the "before" head exported by today\'s exporter).',
        "",
        f"| | {' | '.join(headers)} |",
        "| --- " * (len(headers) + 1) + "|",
    ]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in _defect_rows(d)]) + "\n"


# Each section's rows, in the order of the page, and its heading.
SECTIONS = {
    "kernels": ("Kernels: int8 matrix products, layer norm, threads", _kernels),
    "iqs_speed": ("The paper's IQS at full size (random weights)", _iqs_speed),
    "api": ("Python API: embedding in-process", _api),
    "export_iqs_full": ("Exporting the full-size IQS", _export_iqs_full),
    "gpu": ("GPU", _gpu),
    "default_bundle": ("The default bundle: agreement, int8 fidelity, embedding speed", _default_bundle),
    "defects": ("What the scorer sees: defects, selection, agreement, cost", _defects),
    "whole_records": ("Whole records: conversations and long answers", _whole_records),
    "iqs_order": ("Across records: the paper's selection ordered against its IQS", _iqs_order),
    "multilingual": ("The multilingual bundle", _multilingual),
    "optimum_onnx": ("optimum-onnx's export against the export's own", _optimum_onnx),
    "int8_recipes": ("int8 recipes of the default bundle, judged by the export's gate", _int8_recipes),
    "peers": ("Against sentence-transformers' own ONNX and int8 backends", _peers),
    "int8_selection": ("int8 recipes of the default bundle, judged by the selection", _int8_selection),
    "end_to_end": ("End to end: select against the reference structure", _end_to_end),
    "footprint": ("Install footprint and start-up", _footprint),
    "kit": ("Offline install kit", _kit),
    "scaling": ("Scaling with the number of records", _scaling),
    "report_speed": ("What the curation report costs", _report_speed),
    "ray": ("Ray", _ray),
    "spark": ("Spark", _spark),
    "select_52k": ("An Alpaca-sized job", _select_52k),
    "sample_10m": ("Ten million records on one machine", _sample_10m),
    "resume": ("Resume and determinism", _resume),
}


def rows() -> list[tuple[str, str, str]]:
    """Every section's rows, in page order."""
    return [row for name, (_, make) in SECTIONS.items() if (d := _load(name)) for row in make(d)]


def _date(name: str, d: dict) -> str:
    """The day a result was measured: recorded in it, else the day its file was last committed."""
    if "date" in d:
        return d["date"]
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", f"benchmarks/results/{name}.json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out = ""
    return out or "not yet committed"


def _machine(d: dict) -> str:
    m = d["machine"]
    return f"{_cpu(d)}; onnxruntime {m.get('onnxruntime', '?')}" + (f", torch {m['torch']}" if "torch" in m else "")


def _table(rows_: list[tuple[str, str, str]]) -> list[str]:
    targets = any(c for _, _, c in rows_)
    if targets:
        return ["| measure | value | target |", "| --- | --- | --- |"] + [f"| {a} | {b} | {c} |" for a, b, c in rows_]
    return ["| measure | value |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b, _ in rows_]


def markdown() -> str:
    """One table per section: its heading, its CPU, command and date, its rows."""
    lines = []
    for name, (title, make) in SECTIONS.items():
        if not (d := _load(name)) or not (made := make(d)):
            continue
        note = f" Note: {d['note']}." if d.get("note") else ""
        lines += [
            f"### {title}",
            "",
            f"{_machine(d)}. `{d['command']}`, {_date(name, d)} (`benchmarks/results/{name}.json`).{note}",
            "",
            *_table(made),
            "",
        ]
    if suite := _load("suite"):
        parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in suite.get("sections_s", {}).items())
        built = (_load("iqs_speed") or {}).get("bundle_built_s", 0)
        once = (
            f"; it includes {built / 60:.1f} min to build the full-size IQS bundle, kept for later runs"
            if built
            else ""
        )
        lines += [
            f"The last whole suite: `{suite['command']}` on {_cpu(suite)}, {_date('suite', suite)}, "
            f"{suite['seconds'] / 60:.0f} min (minutes per section: {parts}){once}.",
            "",
        ]
    return "\n".join(lines)


def _same_run(d: dict, suite: dict) -> bool:
    return d["machine"] == suite["machine"] and d["command"] == suite["command"]


def headline() -> str:
    """README's one table: figures of the sections that ran in the last whole suite (one machine, one date)."""
    suite = _load("suite")
    if not suite:
        return ""
    got = {
        name: d
        for name in ("end_to_end", "default_bundle", "footprint", "resume")
        if (d := _load(name)) and _same_run(d, suite) and _date(name, d) == _date("suite", suite)
    }
    out = []
    if d := got.get("end_to_end"):
        o, r = d["car_onnx_select_int8"], d["reference_structure_pytorch_fp32"]
        out += [
            (
                f"`select` on {d['records']:,} real records, whole process (vs PyTorch scorer + sentence-transformers "
                "+ scikit-learn)",
                f"{o['seconds']:.0f} s vs {r['seconds']:.0f} s: {d['speedup']}x",
            ),
            ("peak memory of that run", f"{o['peak_rss_mb']:,.0f} MB vs {r['peak_rss_mb']:,.0f} MB"),
        ]
    if d := got.get("default_bundle"):
        runs = d["embed_speed"]["runs"]
        ours, theirs = runs["car-onnx embed, default bundle int8"], runs["sentence-transformers, default template"]
        out.append(
            (
                f"`embed` {d['embed_speed']['records']:,} real records, whole process (vs sentence-transformers)",
                f"{ours['texts_per_s']} vs {theirs['texts_per_s']} texts/s: {ours['speedup_vs_st']}x; "
                f"{ours['peak_rss_mb']:.0f} vs {theirs['peak_rss_mb']:.0f} MB",
            )
        )
        a, f = d["agreement_score_valid"], d["int8_vs_fp32"]
        out += [
            (
                f"scorer agrees with the experts ({a['fp32']['pairs']} revised pairs; fp32 / int8)",
                f"{a['fp32']['agreement']} / {a['int8']['agreement']} (longer answer wins: "
                f"{a['fp32']['longer_text_wins_chars']})",
            ),
            (
                f"int8 against fp32 on {f['texts']:,} real records: Spearman / top-5% overlap / embedding cosine",
                f"{f['spearman']:.4f} / {f['top5pct_overlap']} / {f['mean_cosine']:.4f}",
            ),
        ]
    if d := got.get("footprint"):
        sizes, wall = list(d["fresh_venv_mb"].values()), d["wall_s_median_of_5"]
        out.append(
            (
                "installed size: runtime / PyTorch stack (torch, transformers, sentence-transformers, scikit-learn)",
                f"{sizes[1]:.0f} MB / {sizes[2]:,.0f} MB",
            )
        )
        ours, theirs = (
            wall[f"python -c 'import {m}'"] for m in ("car_onnx", "torch, transformers, sentence_transformers")
        )
        out.append(
            (
                "`import car_onnx` / `import torch, transformers, sentence_transformers`",
                f"{ours:.2f} s / {theirs:.2f} s",
            )
        )
    if d := got.get("resume"):
        out.append(
            (
                f"killed after {d['chunks_finished_when_killed']} of {d['chunks']} chunks, run again",
                f"resumed, output {'identical' if d['resumed_output_identical'] else 'DIFFERENT'}, "
                f"{d['resume_overhead_s']} s of overhead",
            )
        )
    if not out:
        return ""
    m = suite["machine"]
    return (
        "\n".join(
            [
                f"Measured on one machine, {_cpu(suite)} (onnxruntime {m['onnxruntime']}), on "
                f"{_date('suite', suite)}, by `{suite['command']}` (the whole suite, "
                f"{suite['seconds'] / 60:.0f} min); int8 unless named. Every section, other CPUs and the "
                "targets: [docs/benchmarks.md](docs/benchmarks.md).",
                "",
                "| | |",
                "| --- | --- |",
                *[f"| {a} | {b} |" for a, b in out],
            ]
        )
        + "\n"
    )


def _between(path, start: str, end: str, text: str) -> None:
    """`text` between the markers `start` and `end` of the file at `path` (left as it is without them)."""
    old = path.read_text()
    if start in old and end in old:
        head, rest = old.split(start, 1)
        path.write_text(head + start + "\n" + text + end + rest.split(end, 1)[1])


def main() -> None:
    tables = markdown()
    (RESULTS / "README.md").write_text("# Benchmark results (generated by `python -m benchmarks.report`)\n\n" + tables)
    _between(DOCS, START, END, tables)
    _between(ROOT / "README.md", HEADLINE_START, HEADLINE_END, headline())
    _between(ROOT / "README.md", DEFECTS_START, DEFECTS_END, defects_table())
    print(tables)


if __name__ == "__main__":
    main()
