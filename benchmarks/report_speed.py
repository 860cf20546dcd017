"""What `select --report` adds: the same `car-onnx select --n1 2%` with and without `--report`, at 20k and 100k
records with the lookup bundle (real tokenizer, no transformer: see benchmarks.scaling), so the report's cost is
not hidden under the model's.

    python -m benchmarks.report_speed [--quick] [--work DIR]

The report adds no model pass: its own stage ("report": figures + page) and the write pass collecting text
lengths and the few texts shown. Both runs per size are whole processes; the host is shared, so wall times are
noisy (the stage times from each run's summary line are the steadier figure)."""

from __future__ import annotations

from pathlib import Path

from car_onnx.session import machine_threads

from .common import car_onnx, records_file, section_main, timed_process
from .end_to_end import stages
from .scaling import lookup_bundle


def select(data: Path, out: Path, bundle: Path, threads: int, report: Path | None) -> dict:
    cmd = [car_onnx(), "select", data, "-o", out, "--n1", "2%", "--threads", threads, "--force", "-b", bundle]
    result = timed_process(cmd + (["--report", report] if report else []))
    result["stages_s"] = stages(result.pop("last_line"))
    return result


def run(work: Path, quick: bool) -> dict:
    sizes = [1000, 5000] if quick else [20000, 100000]
    threads, bundle = machine_threads(), lookup_bundle(work)
    out: dict = {"threads": threads, "sizes": {}}
    for n in sizes:
        data, page = records_file(work, n, seed=5), work / "report-speed.html"
        plain = select(data, work / "report-speed-out.json", bundle, threads, None)
        with_report = select(data, work / "report-speed-out.json", bundle, threads, page)
        out["sizes"][n] = {
            "without_report": plain, "with_report": with_report,
            "report_stage_s": with_report["stages_s"]["report"],
            "write_stage_extra_s": round(with_report["stages_s"]["write"] - plain["stages_s"]["write"], 2),
            "wall_extra_s": round(with_report["seconds"] - plain["seconds"], 2),
            "peak_rss_extra_mb": round(with_report["peak_rss_mb"] - plain["peak_rss_mb"], 1),
            "page_mb": round(page.stat().st_size / 2**20, 2)}
        print(n, out["sizes"][n], flush=True)
    out["note"] = ("lookup bundle (no transformer); records repeated past the ~19k shared ones; each size run "
                   "once without and once with --report on a shared, noisy 2-core host")
    return out


if __name__ == "__main__":
    section_main("report_speed", run, __doc__)
