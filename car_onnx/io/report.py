"""The curation report of a selection: one self-contained HTML page (inline SVG figures, no scripts, styles or
fonts from elsewhere) showing what was kept, what was dropped and why, with the numbers as a JSON block.
matplotlib (the [report] extra) is imported only here, only when a report is written."""

from __future__ import annotations

import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..version import __version__

EXAMPLES = 20  # top and bottom records shown
DUPLICATES = 10  # dropped duplicates shown (the rejects file lists every one)
CLIP = 400  # characters of a record's text shown (and kept in memory)
PLOT_SAMPLE = 20_000  # at most this many points in the score-vs-length plot


def require() -> None:
    """Fail before any work if the [report] extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("{report} needs matplotlib: pip install 'car-onnx[report]'", "report") from None


def check_path(path: Path, force: bool) -> None:
    """Before any work: the report may be written (not over a file without --force, in a writable directory)."""
    import os

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"{path}: the report is an HTML page; name it *.html")
    if path.exists() and not force:
        raise UsageError(f"{path}: already exists; pass {{force=True}} to replace it", "force=True")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: the directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: the directory {path.parent} is not writable")


def wanted(sel) -> set[int]:
    """The rows whose texts the page shows: the top and bottom EXAMPLES, the best and worst of each cluster."""
    ranked = np.flatnonzero(sel.duplicate_of < 0)
    order = ranked[np.argsort(-sel.scores[ranked].astype(np.float64), kind="stable")]
    rows = set(order[:EXAMPLES].tolist()) | set(order[-EXAMPLES:].tolist())
    labels = sel.labels[order]
    for cluster in np.unique(labels):
        members = order[labels == cluster]
        rows.update((int(members[0]), int(members[-1])))
    dropped = np.flatnonzero(sel.duplicate_of >= 0)[:DUPLICATES]
    rows.update(dropped.tolist(), sel.duplicate_of[dropped].tolist())
    return {int(i) for i in rows}


def clip(text: str) -> str:
    return text if len(text) <= CLIP else text[:CLIP] + " …"


@dataclass
class Run:
    """What the page says about the run besides the Selection: gathered by the pipeline (or Model.select)."""

    texts: dict  # row -> the record's text (clipped), for the rows `wanted` names
    where: dict  # row -> where the record is ("line 7"), for the same rows
    lengths: np.ndarray  # per row, characters of the text the scorer read
    units: np.ndarray | None = None  # per row, (exchanges, windows) the scorer read: int64 [n, 2]
    input: str = ""
    records: int = 0
    rejected: int = 0
    duplicates: dict = field(default_factory=dict)  # "exact" / "near" -> rows dropped before ranking
    n1: str = ""
    n2: str = ""
    dedup: str = ""
    bundle: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def bundle_info(model) -> dict:
    """Bundle path, device, threads and, per model, its roles, the precision run and that precision's fidelity."""
    precisions = model.precisions()
    models = []
    for m in model.manifest.models:
        roles = [r for r in m.roles if r in precisions]
        if not roles:
            continue
        precision = precisions[roles[0]]
        variant = m.variants.get(precision)
        fidelity = variant.fidelity if variant is not None else {}
        keep = ("spearman", "top5pct_overlap", "mean_cosine", "min_cosine", "max_abs_score_error", "texts")
        models.append(
            {
                "name": m.name,
                "roles": roles,
                "precision": precision,
                "fidelity": {k: fidelity[k] for k in keep if k in fidelity},
            }
        )
    return {
        "path": str(model.bundle),
        "models": models,
        "device": model.config.device,
        "threads": model.config.threads or _threads(),
    }


def _threads() -> int:
    from ..runtime.session import machine_threads

    return machine_threads()


def numbers(sel, run: Run) -> dict:
    """The page's numbers (the JSON block)."""
    ranked = sel.duplicate_of < 0
    picked = np.zeros(len(sel.scores), dtype=bool)
    picked[sel.indices] = True
    top = np.zeros(len(sel.scores), dtype=bool)
    top[sel.indices[: sel.n_top]] = True
    clusters = []
    for c in range(sel.k):
        members = ranked & (sel.labels == c)
        scores = sel.scores[members].astype(np.float64)
        clusters.append(
            {
                "cluster": c,
                "size": int(members.sum()),
                "kept": int((picked & members).sum()),
                "top": int((top & members).sum()),
                "cluster_picks": int((picked & ~top & members).sum()),
                "duplicates": int((~ranked & (sel.labels == c)).sum()),
                "mean_score": round(float(scores.mean()), 6) if len(scores) else None,
            }
        )
    cut = float(sel.scores[sel.indices[sel.n_top - 1]]) if sel.n_top else None
    lengths = run.lengths[ranked].astype(np.float64)
    return {
        "input": run.input,
        "records": run.records,
        "rejected": run.rejected,
        "duplicates": run.duplicates,
        "ranked": int(ranked.sum()),
        "selected": len(sel.indices),
        "top": sel.n_top,
        "cluster_picks": len(sel.indices) - sel.n_top,
        "n1": sel.n_top,
        "n1_requested": run.n1,
        "n2": run.n2,
        "dedup": run.dedup,
        "k": sel.k,
        "pca_components": sel.n_components,
        "pca_variance_kept": round(sel.pca_variance_kept, 6),
        "minibatch_kmeans": bool(sel.minibatch),
        "n1_cut_score": cut,
        "length_score_spearman": _spearman(lengths, sel.scores[ranked]),
        "median_length": {
            "all": float(np.median(lengths)),
            "selected": float(np.median(run.lengths[sel.indices])) if len(sel.indices) else None,
        },
        "reading": _reading(run.units, ranked),
        "bundle": run.bundle,
        "seconds": {k: round(v, 3) for k, v in run.seconds.items()},
        "version": __version__,
        "clusters": clusters,
    }


def _reading(units: np.ndarray | None, ranked: np.ndarray) -> dict | None:
    """How the ranked records were read (runtime/reading.py): exchanges and windows per record."""
    if units is None:
        return None
    exchanges, windows = units[ranked, 0], units[ranked, 1]
    return {
        "exchanges": int(exchanges.sum()),
        "records_with_several_exchanges": int((exchanges > 1).sum()),
        "windows": int(windows.sum()),
        "records_read_in_several_windows": int((windows > exchanges).sum()),
        "most_windows": int(windows.max()) if len(windows) else 0,
    }


def _ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (as Spearman's rho needs)."""
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho (None if undefined: fewer than 2 values or a constant one); numpy only, as scipy.stats takes
    seconds to import."""
    if len(a) < 2:
        return None
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return None if denom == 0 else round(float((ra * rb).sum() / denom), 4)


# ----- figures -----


def _map_xy(xy: np.ndarray) -> np.ndarray:
    """Two coordinates per point: the first two PCA components (projected here when clustering ran no PCA)."""
    if xy.shape[1] > 2 and len(xy) > 2:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=0).fit_transform(xy)
    xy = xy[:, :2]
    return np.hstack([xy, np.zeros((len(xy), 2 - xy.shape[1]))]) if xy.shape[1] < 2 else xy


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # no XML declaration or DOCTYPE (which names an external DTD)


def _figures(sel, run: Run, data: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "font.size": 9, "svg.hashsalt": "car-onnx"})
    ranked = np.flatnonzero(sel.duplicate_of < 0)
    scores = sel.scores.astype(np.float64)
    chosen, top = sel.indices, sel.indices[: sel.n_top]
    figs = {}

    fig, ax = plt.subplots(figsize=(8, 3.2))
    bins = np.histogram_bin_edges(scores[ranked], bins=60)
    ax.hist(scores[ranked], bins=bins, color="#c9d3e0", label=f"all ranked records ({len(ranked):,})")
    ax.hist(scores[top], bins=bins, color="#1f5fa8", label=f"top n1 ({len(top):,})")
    ax.hist(
        scores[chosen[sel.n_top :]], bins=bins, color="#e08a1e", label=f"cluster picks ({len(chosen) - sel.n_top:,})"
    )
    if data["n1_cut_score"] is not None:
        ax.axvline(data["n1_cut_score"], color="#b22", lw=1.2, ls="--", label=f"n1 cut ({data['n1_cut_score']:.3f})")
    ax.set_yscale("log")
    ax.set_xlabel("quality score")
    ax.set_ylabel("records (log scale)")
    ax.legend(frameon=False, fontsize=8)
    figs["histogram"] = _svg(fig)

    clusters = sorted(data["clusters"], key=lambda c: -c["size"])
    x = np.arange(len(clusters))
    fig, (ax, ax1, ax2) = plt.subplots(3, 1, figsize=(8, 5.6), sharex=True, gridspec_kw={"height_ratios": [2, 2, 1]})
    ax.bar(x, [c["size"] for c in clusters], color="#c9d3e0", width=0.9)
    ax.set_yscale("log")
    ax.set_ylabel("size (log)")
    ax1.bar(x, [c["top"] for c in clusters], color="#1f5fa8", width=0.9, label="kept: in the top n1")
    ax1.bar(
        x,
        [c["cluster_picks"] for c in clusters],
        bottom=[c["top"] for c in clusters],
        color="#e08a1e",
        width=0.9,
        label="kept: the cluster's own picks",
    )
    ax1.set_ylabel("kept")
    ax1.legend(frameon=False, fontsize=8)
    ax2.bar(x, [c["mean_score"] or 0 for c in clusters], color="#6b8e23", width=0.9)
    ax2.set_ylabel("mean score")
    ax2.set_xlabel("clusters, largest first")
    ax2.set_xticks([])
    figs["clusters"] = _svg(fig)

    rows, xy = sel.plane[0], _map_xy(sel.plane[1])
    fig, ax = plt.subplots(figsize=(7, 5.5))
    dot = float(np.clip(6000 / max(len(rows), 1), 3, 30))  # small points when many
    ax.scatter(
        xy[:, 0],
        xy[:, 1],
        c=sel.labels[rows] % 20,
        cmap="tab20",
        vmin=0,
        vmax=19,
        s=dot,
        lw=0,
        alpha=0.7,
        rasterized=True,
    )
    keep = np.isin(rows, chosen)
    ax.scatter(
        xy[keep, 0],
        xy[keep, 1],
        s=3 * dot + 10,
        facecolors="none",
        edgecolors="black",
        lw=0.7,
        label=f"selected ({int(keep.sum()):,} of the {len(rows):,} shown)",
        rasterized=True,
    )
    ax.set_xlabel("PCA component 1")
    ax.set_ylabel("PCA component 2")
    ax.legend(frameon=False, fontsize=8, loc="upper right")
    figs["map"] = _svg(fig)

    sample = (
        ranked
        if len(ranked) <= PLOT_SAMPLE
        else np.sort(np.random.default_rng(0).choice(ranked, PLOT_SAMPLE, replace=False))
    )
    picked = np.isin(sample, chosen)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(
        run.lengths[sample],
        scores[sample],
        s=3,
        lw=0,
        color="#8899aa",
        alpha=0.5,
        rasterized=True,
        label="not selected",
    )
    ax.scatter(
        run.lengths[sample[picked]],
        scores[sample[picked]],
        s=6,
        lw=0,
        color="#e08a1e",
        rasterized=True,
        label="selected",
    )
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("text length (characters, log)")
    ax.set_ylabel("quality score")
    ax.legend(frameon=False, fontsize=8)
    figs["length"] = _svg(fig)
    return figs


# ----- page -----

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:70em;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .5em;vertical-align:top;
text-align:left}th{background:#f3f5f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.t{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;max-width:40em;word-break:break-word}
.kv td:first-child{font-weight:600;background:#f8f9fb}p.note{color:#555;max-width:55em}svg{max-width:100%;height:auto}
.sel{color:#1f5fa8;font-weight:600}"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _table(head: list[str], rows: list[list], numeric: set[int] = frozenset(), text: set[int] = frozenset()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = []
        for j, v in enumerate(row):
            cls = ' class="n"' if j in numeric else ' class="t"' if j in text else ""
            cells.append(f"<td{cls}>{_e(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _kv(pairs: list[tuple[str, object]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in pairs) + "</table>"


def _record_rows(sel, run: Run, rows, ranks, reason) -> list[list]:
    return [
        [
            int(ranks[i]),
            f"{sel.scores[i]:.4f}",
            int(sel.labels[i]),
            reason.get(int(i), "not kept"),
            run.where.get(int(i), ""),
            int(run.lengths[i]),
            run.texts.get(int(i), ""),
        ]
        for i in rows
    ]


def page(sel, run: Run) -> str:
    """The report's HTML."""
    data = numbers(sel, run)
    figs = _figures(sel, run, data)
    ranks = sel.ranks
    reason = {int(i): str(r) for i, r in zip(sel.indices, sel.reasons)}
    ranked = np.flatnonzero(sel.duplicate_of < 0)
    order = ranked[np.argsort(-sel.scores[ranked].astype(np.float64), kind="stable")]
    dup = data["duplicates"]
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in data["seconds"].items())
    models = "; ".join(
        f"{m['name']} ({'+'.join(m['roles'])}, {m['precision']}"
        + (
            f": export fidelity spearman {m['fidelity']['spearman']}, mean cosine {m['fidelity']['mean_cosine']}"
            if {"spearman", "mean_cosine"} <= m["fidelity"].keys()
            else ": no fidelity recorded"
        )
        + ")"
        for m in data["bundle"].get("models", [])
    )
    pct = 100 * data["selected"] / max(data["records"], 1)
    summary = _kv(
        [
            ("input", data["input"]),
            ("records read", f"{data['records']:,}"),
            ("rejected (invalid)", f"{data['rejected']:,}"),
            (
                "duplicates dropped before ranking",
                f"{sum(dup.values()):,} (exact {dup.get('exact', 0):,}, near "
                f"{dup.get('near', 0):,}; dedup {data['dedup']})",
            ),
            ("ranked", f"{data['ranked']:,}"),
            ("n1 (top overall)", f"{data['n1']:,} (asked: {data['n1_requested']})"),
            ("n2 (per cluster)", data["n2"]),
            ("k (clusters)", f"{data['k']:,}" + (" (MiniBatchKMeans)" if data["minibatch_kmeans"] else "")),
            ("PCA", f"{data['pca_components']} components, {data['pca_variance_kept']:.1%} of the variance kept"),
            (
                "selected",
                f"{data['selected']:,} ({pct:.2f}% of the records read) = {data['top']:,} top + "
                f"{data['cluster_picks']:,} cluster picks",
            ),
            *(
                [
                    (
                        "read",
                        f"{r['exchanges']:,} exchanges ({r['records_with_several_exchanges']:,} records of several), "
                        f"{r['windows']:,} windows ({r['records_read_in_several_windows']:,} records with an answer "
                        f"longer than one window; at most {r['most_windows']:,}); a record's score is the mean of "
                        "its exchanges', an exchange's the mean of its windows' weighted by tokens",
                    )
                ]
                if (r := data.get("reading"))
                else []
            ),
            ("bundle", data["bundle"].get("path", "")),
            ("models", models),
            ("device, threads", f"{data['bundle'].get('device')}, {data['bundle'].get('threads')}"),
            ("time per stage", stages),
            ("car-onnx", data["version"]),
        ]
    )
    by_size = sorted(data["clusters"], key=lambda c: -c["size"])
    cluster_rows = []
    for c in by_size:
        members = order[sel.labels[order] == c["cluster"]]
        best, worst = (int(members[0]), int(members[-1])) if len(members) else (None, None)
        cluster_rows.append(
            [
                c["cluster"],
                c["size"],
                c["kept"],
                c["top"],
                c["cluster_picks"],
                "" if c["mean_score"] is None else f"{c['mean_score']:.4f}",
                "" if best is None else f"{sel.scores[best]:.4f}",
                run.texts.get(best, ""),
                "" if worst is None else f"{sel.scores[worst]:.4f}",
                run.texts.get(worst, ""),
            ]
        )
    record_head = ["rank", "score", "cluster", "kept as", "where", "length", "text"]
    dropped = np.flatnonzero(sel.duplicate_of >= 0)
    dup_rows = [
        [
            run.where.get(int(i), ""),
            run.where.get(int(sel.duplicate_of[i]), ""),
            int(sel.labels[i]),
            run.texts.get(int(i), ""),
        ]
        for i in dropped[:DUPLICATES]
    ]
    dup_note = (
        f"{len(dropped):,} record{'s were' if len(dropped) != 1 else ' was'} dropped before ranking as "
        f"duplicates of a kept one" + (f"; the first {len(dup_rows)}:" if dup_rows else ".")
    )
    rho = data["length_score_spearman"]
    med = data["median_length"]
    payload = (
        json.dumps(data, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>car-onnx curation report: {_e(Path(data["input"]).name)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style></head><body>
<h1>car-onnx curation report</h1>
<p class="note">{data["selected"]:,} of {data["records"]:,} records selected ({pct:.2f}%): the {data["top"]:,} best by
quality score (n1) plus the best {_e(data["n2"])} of each of the {data["k"]:,} embedding clusters not already taken
({data["cluster_picks"]:,} cluster picks). Duplicates and rejected records took no part in ranking.</p>
<h2>1. Run</h2>
{summary}
<h2>2. Scores</h2>
<p class="note">Every ranked record's score (grey, log scale); the records kept as top n1 (blue) and as cluster picks
(orange) drawn over it. The dashed line is the n1 cut: every record to its right was kept; records to its left were
kept only as the best of their cluster.</p>
{figs["histogram"]}
<h2>3. Clusters</h2>
<p class="note">One column per cluster, largest first: its size (grey, log scale), what it gave to the selection
(blue: records in the top n1; orange: its own picks), and its mean score. A large cluster with a low mean gives only its
n2 picks; one with a high mean gives many records through n1.</p>
{figs["clusters"]}
<h2>4. Map of the clusters</h2>
<p class="note">The first two PCA components of the embeddings (a seeded sample of at most 20,000 records), coloured by
cluster (colours repeat after 20); circled points were selected. Only two of the {data["pca_components"]} components
clustering used: clusters that overlap here may be apart in the others.</p>
{figs["map"]}
<h2>5. Each cluster</h2>
<p class="note">Largest first. Best and worst: the highest- and lowest-scored ranked record of the cluster (text
clipped to {CLIP} characters).</p>
{
        _table(
            [
                "cluster",
                "size",
                "kept",
                "of which top n1",
                "cluster picks",
                "mean score",
                "best score",
                "best record",
                "worst score",
                "worst record",
            ],
            cluster_rows,
            {0, 1, 2, 3, 4, 5, 6, 8},
            {7, 9},
        )
    }
<h2>6. Duplicates dropped</h2>
<p class="note">{dup_note} Exact: the same text up to whitespace; near (with --dedup near:T): embedding cosine to a
higher-scored record of the same cluster at least T. The rejects file lists every one with its kind.</p>
{_table(["record", "duplicate of", "cluster", "text"], dup_rows, {2}, {3}) if dup_rows else ""}
<h2>7. Top {EXAMPLES} and bottom {EXAMPLES} records</h2>
<p class="note">Ranked records by score ("kept as": top n1, a cluster pick, or not kept; "where": its place in the
input).</p>
<h3>Top {EXAMPLES}</h3>
{_table(record_head, _record_rows(sel, run, order[:EXAMPLES], ranks, reason), {0, 1, 2, 5}, {6})}
<h3>Bottom {EXAMPLES}</h3>
{_table(record_head, _record_rows(sel, run, order[-EXAMPLES:], ranks, reason), {0, 1, 2, 5}, {6})}
<h2>8. Score versus text length</h2>
<p class="note">Is the scorer just rewarding length? Spearman correlation of length and score over the ranked records:
<b>{"n/a" if rho is None else f"{rho:+.3f}"}</b> (0: none; near +1: longer always scores higher). Median length: all
{med["all"]:,.0f} characters, selected {"n/a" if med["selected"] is None else f"{med['selected']:,.0f}"}.
{"" if len(ranked) <= PLOT_SAMPLE else f"A seeded sample of {PLOT_SAMPLE:,} records is drawn."}</p>
{figs["length"]}
<script type="application/json" id="car-onnx-report">{payload}</script>
</body></html>
"""


def write(path: Path, sel, run: Run) -> float:
    """Write the page to `path` (replacing it whole); returns the seconds it took."""
    from ..core.files import replacing

    start = time.perf_counter()
    text = page(sel, run)
    with replacing(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return time.perf_counter() - start


def write_selection_report(sel, path) -> None:
    """`Selection.report(path)`: the report of a selection made by `Model.select` (which keeps its data)."""
    require()
    ctx = sel.context
    if ctx is None or ctx.get("data") is None:
        raise UsageError(
            "this Selection keeps no records to show: report() works on a Selection from "
            "Model.select over a list, DataFrame, Dataset or dict of columns (not a one-pass iterable)"
        )
    from . import containers

    model, want = ctx["model"], wanted(sel)
    texts, where, lengths = {}, {}, np.zeros(len(sel.scores), dtype=np.int64)
    units = np.zeros((len(sel.scores), 2), dtype=np.int64)
    for i, r in enumerate(containers.records(ctx["data"], model.fields)):
        text = model.text(r.instruction, r.input, r.output)
        lengths[i], units[i] = len(text), model.units(r)
        if i in want:
            texts[i], where[i] = clip(text), f"row {i}"
    dup = sel.duplicate_of
    run = Run(
        texts,
        where,
        lengths,
        units,
        input=f"Python data ({type(ctx['data']).__name__})",
        records=len(sel.scores),
        duplicates={"exact": ctx["exact"], "near": int((dup >= 0).sum()) - ctx["exact"]},
        n1=ctx["n1"],
        n2=ctx["n2"],
        dedup=ctx["dedup"],
        bundle=bundle_info(model),
        seconds=ctx.get("seconds", {}),
    )
    write(Path(path), sel, run)
