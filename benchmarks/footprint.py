"""Footprint: size of a fresh venv with the runtime alone (`pip install .`, no extra) against a fresh venv with
torch (CPU build) + transformers + sentence-transformers + scikit-learn at this venv's versions; import time and
`car-onnx --help` wall time (median of 5 fresh processes).

    python -m benchmarks.footprint [--quick] [--work DIR]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .common import ROOT, car_onnx, section_main

TORCH_SIDE = ("torch", "transformers", "sentence-transformers", "scikit-learn")


def venv_mb(folder: Path, requirements: list[str]) -> float:
    """Size on disk of a fresh venv with `requirements` installed (pip's own files included, as in any venv)."""
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", folder], check=True)
    if requirements:
        subprocess.run(
            [folder / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
            check=True,
        )
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    shutil.rmtree(folder)
    return round(size / 2**20, 1)


def wall(cmd: list[str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def run(work: Path, quick: bool = False) -> dict:
    py = sys.executable
    out = {
        "wall_s_median_of_5": {
            "python -c 'import car_onnx'": wall([py, "-c", "import car_onnx"]),
            "car-onnx --help": wall([car_onnx(), "--help"]),
            "python -c 'import torch, transformers, sentence_transformers'": wall(
                [py, "-c", "import torch, transformers, sentence_transformers"]
            ),
            "python -c 'pass'": wall([py, "-c", "pass"]),
        }
    }
    if quick:
        return {**out, "fresh_venv_mb": "skipped in --quick (two venv installs take about two minutes)"}
    pins = [f"{name}=={metadata.version(name).split('+')[0]}" for name in TORCH_SIDE]
    out["fresh_venv_mb"] = {
        "empty venv": venv_mb(work / "venv-empty", []),
        "car-onnx runtime (pip install ., no extra)": venv_mb(work / "venv-runtime", [str(ROOT)]),
        " + ".join(pins): venv_mb(work / "venv-torch", pins),
    }
    out["note"] = (
        "the torch side pins this venv's versions; torch==2.13.0 is the CPU build (a bare `torch` "
        "requirement would pull the multi-GB CUDA build)"
    )
    return out


if __name__ == "__main__":
    section_main("footprint", run, __doc__)
