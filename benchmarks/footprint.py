"""Footprint: installed size of the runtime's dependency closure against torch + transformers +
sentence-transformers (from the installed distributions' RECORD files in this venv), import time and
`car-onnx --help` wall time (median of 5 fresh processes).

    python -m benchmarks.footprint
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .common import car_onnx, section_main


def closure(names: list[str]) -> set[str]:
    """The distributions `names` need, transitively (extras not followed)."""
    seen, todo = set(), [n.lower() for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0].lower().replace("_", "-"))
    return seen


def size_mb(dists: set[str]) -> float:
    total = 0
    for name in dists:
        for f in metadata.distribution(name).files or []:
            path = Path(f.locate())
            if path.is_file():
                total += path.stat().st_size
    return round(total / 2**20, 1)


def wall(cmd: list[str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def run(work=None, quick: bool = False) -> dict:
    runtime = closure(["onnxruntime", "tokenizers", "numpy", "scikit-learn", "typer"]) | {"car-onnx"}
    torch_side = closure(["torch", "transformers", "sentence-transformers", "scikit-learn"])
    py = sys.executable
    return {
        "installed_mb": {"car-onnx runtime closure": size_mb(runtime),
                         "torch + transformers + sentence-transformers + scikit-learn closure": size_mb(torch_side)},
        "distributions": {"runtime": sorted(runtime), "torch_side": sorted(torch_side)},
        "wall_s_median_of_5": {"python -c 'import car_onnx'": wall([py, "-c", "import car_onnx"]),
                               "car-onnx --help": wall([car_onnx(), "--help"]),
                               "python -c 'import torch, transformers, sentence_transformers'": wall(
                                   [py, "-c", "import torch, transformers, sentence_transformers"]),
                               "python -c 'pass'": wall([py, "-c", "pass"])},
        "note": "sizes from the RECORD files of the distributions installed in the benchmark venv (CPU torch build)",
    }


if __name__ == "__main__":
    section_main("footprint", run, __doc__)
