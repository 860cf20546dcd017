"""`python -m benchmarks [--quick]` (or `make bench`): every benchmark, results in benchmarks/results/, the tables
in docs/benchmarks.md and the headline table in README.md. --quick runs small sizes in a few minutes (and skips the
full-size IQS if not yet built). The sections read real data from ../shared/data, beside the repository."""

import argparse
import sys
import time
from pathlib import Path

from . import (
    api,
    default_bundle,
    end_to_end,
    footprint,
    gpu,
    int8_recipes,
    int8_selection,
    iqs_order,
    iqs_speed,
    kernels,
    kit,
    multilingual,
    peers,
    ray_scale,
    report,
    report_speed,
    resume,
    sample_10m,
    scaling,
    select_52k,
    spark_scale,
    whole_records,
)
from .common import WORK, save

SECTIONS = {
    "kernels": kernels,
    "default_bundle": default_bundle,
    "peers": peers,
    "int8_recipes": int8_recipes,
    "int8_selection": int8_selection,
    "iqs_speed": iqs_speed,
    "end_to_end": end_to_end,
    "footprint": footprint,
    "scaling": scaling,
    "resume": resume,
    "api": api,
    "kit": kit,
    "gpu": gpu,
    "multilingual": multilingual,
    "whole_records": whole_records,
    "iqs_order": iqs_order,
    "report_speed": report_speed,
    "ray": ray_scale,
    "spark": spark_scale,
    "select_52k": select_52k,
    "sample_10m": sample_10m,
}

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--quick", action="store_true")
ap.add_argument("--only", nargs="+", choices=list(SECTIONS))
ap.add_argument("--work", type=Path, default=WORK)
args = ap.parse_args()
args.work.mkdir(parents=True, exist_ok=True)
start, seconds = time.perf_counter(), {}
for name in args.only or SECTIONS:
    t = time.perf_counter()
    result = SECTIONS[name].run(args.work, args.quick)
    seconds[name] = round(time.perf_counter() - t)
    if name == "gpu" and "skipped" in result:  # no CUDA here: keep the figures of the last GPU run
        print(f"{name}: skipped: {result['skipped']}", file=sys.stderr, flush=True)
        continue
    print(f"{name}: {seconds[name]} s, written to {save(name, result)}", file=sys.stderr, flush=True)
if not args.only:
    save("suite", {"seconds": round(time.perf_counter() - start), "sections_s": seconds, "quick": args.quick})
report.main()
