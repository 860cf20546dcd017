"""Helpers of every section: real records from ../shared/data, machine description, timing a whole process.

The benchmarks measure on real data that is not part of the repository: the read-only folder ../shared/data beside
it (corpora/ and expert_revised/). Without it, a section stops at once with one line naming the missing file."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
WORK = Path(tempfile.gettempdir()) / "car-onnx-bench"  # records files, bundles and outputs of the runs
CORPORA = ("gsm8k_train.json", "gpteacher_toolformer.json", "gpteacher_roleplay.json", "car_selected_iqs.json")


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data (the real data the benchmarks run on, outside the repository), or a one-line exit
    naming what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        raise SystemExit(
            f"benchmarks need the shared data beside the repository: {path} is missing "
            f"(real records and expert pairs, not part of the repository; see docs/benchmarks.md)"
        )
    return path


def real_records(n: int | None = None, seed: int = 0) -> list[dict]:
    """Alpaca-form records from the shared corpora (instruction/input/output only), shuffled with `seed`;
    the first `n` (all ~19k when None)."""
    import random

    rows = []
    for name in CORPORA:
        for r in json.loads(shared_file("corpora", name).read_text()):
            rows.append({"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]})
    random.Random(seed).shuffle(rows)
    return rows if n is None else rows[:n]


def one_text_feeds(root: Path, spec, texts: list[str]) -> list[dict]:
    """Graph inputs for each text alone (no padding), tokenized with the bundle model's tokenizer."""
    import numpy as np

    from car_onnx.runtime.tokenization import load_tokenizer, tokenize

    feeds = []
    for ids in tokenize(load_tokenizer(Path(root) / spec.tokenizer, spec.max_length), texts).ids:
        ids = np.array([ids], dtype=np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    return feeds


def machine() -> dict:
    import numpy
    import onnxruntime

    flags = ""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split()
        flags = " ".join(f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f)
        model = next(line for line in open("/proc/cpuinfo") if line.startswith("model name")).split(":")[1].strip()
    except (OSError, StopIteration):
        model = platform.processor()
    info = {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "cpu_flags": flags,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }
    for name in ("torch", "transformers", "sentence_transformers", "sklearn"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    return info


# Runs one command and prints its peak RSS (KiB): a fresh wrapper per command, so the peak is that command's own.
WRAPPER = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], stdout=sys.stderr)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(r.returncode)\n"
)


def timed_process(cmd: list[str], env: dict | None = None) -> dict:
    """Wall time and peak RSS of a whole process, start-up and model loading included; a JSON object printed by
    the process as its last line of output (benchmarks.workers do) is merged in, and the last stderr line is
    kept as `last_line`."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, *map(str, cmd)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        cwd=ROOT,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-2000:]}")
    result = {"seconds": round(seconds, 2), "peak_rss_mb": round(int(proc.stdout.split()[-1]) / 1024, 1)}
    lines = proc.stderr.strip().splitlines() or [""]
    if lines[-1].startswith("{"):
        result.update(json.loads(lines[-1]))
    else:  # car-onnx's summary, even when a library printed something after it
        result["last_line"] = next(
            (line for line in reversed(lines) if line.startswith("car-onnx: ") and line.endswith("]")), lines[-1]
        )
        after = lines[lines.index(result["last_line"]) + 1 :]
        if after:
            print(
                f"{cmd[1] if len(cmd) > 1 else cmd[0]}: printed after its summary:",
                *after[-5:],
                sep="\n  ",
                file=sys.stderr,
            )
    return result


def worker(*args) -> list[str]:
    """The command line of a benchmarks.workers task."""
    return [sys.executable, "-m", "benchmarks.workers", *map(str, args)]


def car_onnx() -> str:
    return str(Path(sys.executable).with_name("car-onnx"))


def records_file(folder: Path, n: int, seed: int, unique: bool = False) -> Path:
    """n real records as a JSON array (records repeated, in order, when n exceeds the ~19k available; with `unique`
    the k-th repeat's instructions end with " #k", so that exact dedup keeps every copy)."""
    path = Path(folder) / f"records-{n}-{seed}{'-unique' if unique else ''}.json"
    if not path.exists():
        rows = real_records(None, seed)
        with open(f"{path}.part", "w") as f:  # written a record at a time: 10M records are ~6 GB
            f.write("[")
            for i in range(n):
                k, r = divmod(i, len(rows))
                row = dict(rows[r], instruction=f"{rows[r]['instruction']} #{k}") if unique and k else rows[r]
                f.write((", " if i else "") + json.dumps(row))
            f.write("]")
        os.replace(f"{path}.part", path)
    return path


def _command() -> str:
    """This run's command line, as `python -m benchmarks.NAME ...`."""
    stem = Path(sys.argv[0]).stem
    module = (
        "benchmarks" if stem == "__main__" and Path(sys.argv[0]).parent.name == "benchmarks" else f"benchmarks.{stem}"
    )
    return " ".join([Path(sys.executable).name, "-m", module, *sys.argv[1:]])


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"command": _command(), "machine": machine(), "date": time.strftime("%Y-%m-%d"), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def merged(name: str, result: dict, only: list[str]) -> dict:
    """The committed result of section `name` with the entries of `result` (the bundles `only`, measured again)
    put in its tables in place of theirs; it keeps its own command, machine and day, and records this run's for
    each of those bundles (`remeasured`)."""
    before = json.loads((RESULTS / f"{name}.json").read_text())

    def put(into: dict, new: dict, top: bool) -> None:  # tables merged entry by entry, the rest must agree
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                put(into[key], value, False)
            elif top and key in into and into[key] != value:
                raise SystemExit(f"{name}: {key} is {value!r} here, {into[key]!r} in the committed result")
            else:
                into[key] = value

    put(before, result, True)
    run = {"command": _command(), "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    before["remeasured"] = before.get("remeasured", {}) | {bundle: run for bundle in only}
    return before


def section_main(name: str, run, doc: str, argv=None, bundles: tuple[str, ...] = ()) -> None:
    """The command line of one section: `python -m benchmarks.NAME [--quick] [--work DIR]`; saves its result. With
    `bundles` (the bundles the section measures; `run` then takes the ones asked for, or None for all), also
    `--only BUNDLE` (repeatable): those alone, merged into the committed result (`merged`)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--quick", action="store_true")
    if bundles:
        ap.add_argument(
            "--only", action="append", choices=bundles, help="measure this bundle alone, into the committed result"
        )
    args = ap.parse_args(argv)
    only = getattr(args, "only", None)
    if only and args.quick:
        ap.error("--only merges into the committed result: not with --quick")
    args.work.mkdir(parents=True, exist_ok=True)
    result = run(args.work, args.quick, only) if bundles else run(args.work, args.quick)
    if only:
        result = merged(name, result, only)
    print(json.dumps(result, indent=2))
    print(f"written to {save(name, result)}")
