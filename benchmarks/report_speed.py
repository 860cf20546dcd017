"""What `select --report` adds: the same `car-onnx select --n1 2%` with and without `--report`, at 20k and 100k
records with the lookup bundle (real tokenizer, no transformer: see benchmarks.scaling), so the report's cost is
not hidden under the model's.

    python -m benchmarks.report_speed [--quick] [--work DIR]     (REPORT_SPEED_WHOLE=0: skip the whole runs)

The report adds no model pass: its own stage ("report": figures + page) and the write pass collecting text
lengths and the few texts shown. Both runs per size are whole processes; the host is shared, so wall times are
noisy (the stage times from each run's summary line are the steadier figure)."""

from __future__ import annotations

import os
from pathlib import Path

from car_onnx.runtime.session import machine_threads

from .common import car_onnx, records_file, section_main, timed_process
from .end_to_end import stages
from .scaling import lookup_bundle


def select(data: Path, out: Path, bundle: Path, threads: int, report: Path | None) -> dict:
    cmd = [car_onnx(), "select", data, "-o", out, "--n1", "2%", "--threads", threads, "--force", "-b", bundle]
    result = timed_process(cmd + (["--report", report] if report else []))
    result["stages_s"] = stages(result.pop("last_line"))
    return result


def stage_alone(work: Path, n: int) -> dict:
    """The report's own costs at n records, in-process, without the selection around it: the write pass's extra
    work (each record's text rendered for its length; the shown texts kept) and the page itself, for a Selection of
    the shape a real run gives (k = int(sqrt(n/2)), 2% top + 1 per cluster, a 20,000-point map) but synthetic
    scores, labels and map coordinates (the page's cost depends on these sizes, not on the values)."""
    import time

    import numpy as np

    from car_onnx import load
    from car_onnx.core.clustering import PLANE_SAMPLE, default_k
    from car_onnx.core.selection import Selection, Size, select_ranked
    from car_onnx.io import report
    from car_onnx.io.readers import iter_records

    model, data = load(lookup_bundle(work)), records_file(work, n, seed=5)
    rng = np.random.default_rng(0)
    k, scores = default_k(n), rng.normal(size=n).astype(np.float32)
    labels = rng.integers(0, k, n).astype(np.int64)
    indices, n_top = select_ranked(scores, labels, n // 50, Size(1))
    rows = np.sort(rng.choice(n, min(n, PLANE_SAMPLE), replace=False))
    sel = Selection(
        indices,
        labels,
        scores,
        n_top,
        k,
        150,
        False,
        np.full(n, -1),
        0.95,
        plane=(rows, rng.normal(size=(len(rows), 2)).astype(np.float32)),
    )
    start = time.perf_counter()
    for r in iter_records(data, fields=model.fields):  # the write pass's read alone
        pass
    read = time.perf_counter() - start
    want, page = report.wanted(sel), report.Run({}, {}, np.zeros(n, dtype=np.int64))
    start = time.perf_counter()
    for i, r in enumerate(iter_records(data, fields=model.fields)):  # and with the report's collection
        text = model.text(r.instruction, r.input, r.output)
        page.lengths[i] = len(text)
        if i in want:
            page.texts[i], page.where[i] = report.clip(text), r.where
    collect = time.perf_counter() - start - read
    page.bundle = report.bundle_info(model)
    target = work / f"report-alone-{n}.html"
    seconds = report.write(target, sel, page)
    return {
        "write_pass_extra_s": round(collect, 2),
        "read_pass_s": round(read, 2),
        "page_s": round(seconds, 2),
        "page_mb": round(target.stat().st_size / 2**20, 2),
        "k": k,
        "selected": len(indices),
    }


def run(work: Path, quick: bool) -> dict:
    sizes = [1000, 5000] if quick else [20000, 100000]
    if os.environ.get("REPORT_SPEED_WHOLE") == "0":  # the in-process part alone (whole runs take long on a busy host)
        sizes = []
    threads, bundle = machine_threads(), lookup_bundle(work)
    out: dict = {"threads": threads, "sizes": {}}
    for n in sizes:
        data, page = records_file(work, n, seed=5), work / "report-speed.html"
        plain = select(data, work / "report-speed-out.json", bundle, threads, None)
        with_report = select(data, work / "report-speed-out.json", bundle, threads, page)
        out["sizes"][n] = {
            "without_report": plain,
            "with_report": with_report,
            "report_stage_s": with_report["stages_s"]["report"],
            "write_stage_extra_s": round(with_report["stages_s"]["write"] - plain["stages_s"]["write"], 2),
            "wall_extra_s": round(with_report["seconds"] - plain["seconds"], 2),
            "peak_rss_extra_mb": round(with_report["peak_rss_mb"] - plain["peak_rss_mb"], 1),
            "page_mb": round(page.stat().st_size / 2**20, 2),
        }
        print(n, out["sizes"][n], flush=True)
    out["alone"] = {n: stage_alone(work, n) for n in ([5000] if quick else [20000, 100000])}
    print(out["alone"], flush=True)
    out["note"] = (
        "lookup bundle (no transformer); records repeated past the ~19k shared ones; whole runs: each "
        "size once without and once with --report; alone: the report's own costs in-process on a "
        "synthetic Selection of a real run's sizes; the host is shared by several agents (2 cores, "
        "heavily loaded during this run): times are noisy and high"
    )
    return out


if __name__ == "__main__":
    section_main("report_speed", run, __doc__)
