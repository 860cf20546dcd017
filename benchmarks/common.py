"""Shared helpers: real records from ../shared/data, machine description, timing a whole process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
CORPORA = ("gsm8k_train.json", "gpteacher_toolformer.json", "gpteacher_roleplay.json", "car_selected_iqs.json")


def real_records(n: int | None = None, seed: int = 0) -> list[dict]:
    """Alpaca-form records from the shared corpora (instruction/input/output only), shuffled with `seed`;
    the first `n` (all ~19k when None)."""
    import random

    if not SHARED.is_dir():
        raise SystemExit(f"benchmarks need the shared data at {SHARED}")
    rows = []
    for name in CORPORA:
        for r in json.loads((SHARED / "corpora" / name).read_text()):
            rows.append({"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]})
    random.Random(seed).shuffle(rows)
    return rows if n is None else rows[:n]


def machine() -> dict:
    import numpy
    import onnxruntime

    flags = ""
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split(":")[1].split()
        flags = " ".join(f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f)
        model = next(l for l in open("/proc/cpuinfo") if l.startswith("model name")).split(":")[1].strip()
    except (OSError, StopIteration):
        model = platform.processor()
    info = {"cpu": model, "cores": len(os.sched_getaffinity(0)), "cpu_flags": flags, "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
    for name in ("torch", "transformers", "sentence_transformers", "sklearn"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    return info


# Runs one command and prints its peak RSS (KiB): a fresh wrapper per command, so the peak is that command's own.
WRAPPER = ("import resource, subprocess, sys\n"
           "r = subprocess.run(sys.argv[1:], stdout=sys.stderr)\n"
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
           "sys.exit(r.returncode)\n")


def timed_process(cmd: list[str], env: dict | None = None) -> dict:
    """Wall time and peak RSS of a whole process, start-up and model loading included."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *map(str, cmd)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-2000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(int(proc.stdout.split()[-1]) / 1024, 1)}


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join([Path(sys.executable).name, "-m", *sys.argv]), "machine": machine(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
