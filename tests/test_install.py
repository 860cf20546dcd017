"""The runtime installs without any extra into a fresh venv (no torch, transformers or optimum) and runs; the
documented GPU install leaves the GPU build of onnxruntime alone (the package set pip resolves: no GPU here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from car_onnx.runtime.session import GPU_INSTALL
from car_onnx_export import tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fresh_venv_without_extras(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + [str(ROOT)], check=True, timeout=900)
    py, exe = str(venv / "bin" / "python"), str(venv / "bin" / "car-onnx")
    for heavy in ("torch", "transformers", "optimum", "onnx", "sentence_transformers"):
        probe = subprocess.run([py, "-c", f"import {heavy}"], capture_output=True, text=True)
        assert probe.returncode != 0, f"{heavy} was installed by the runtime's own requirements"
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "select" in help_text and "export" in help_text
    bundle = tiny.make_bundle(tmp_path / "bundle")
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": f"explain {w}", "output": f"the {w} is water"}) + "\n" for w in tiny.WORDS[:20]
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [exe, "select", str(data), "-o", str(tmp_path / "out.jsonl"), "-b", str(bundle), "--n1", "3"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) >= 3 and all(isinstance(r["score"], float) and isinstance(r["cluster"], int) for r in rows)
    rows = [{"instruction": "explain water", "output": "the water is"}, {"instruction": "a", "output": "b"}]
    api = (
        "import sys, car_onnx\n"
        f"model = car_onnx.load({str(bundle)!r})\n"
        f"rows = {rows!r}\n"
        "print(model.score(rows).tolist(), model.select(rows, n1=1).take(rows)[0]['instruction'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'datasets', 'torch')))\n"
    )
    probe = subprocess.run([py, "-c", api], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    import car_onnx

    model = car_onnx.load(bundle)
    want = f"{model.score(rows).tolist()} {model.select(rows, n1=1).take(rows)[0]['instruction']}"
    assert probe.stdout.splitlines() == [want, "[]"]
    export = subprocess.run([exe, "export", "default"], capture_output=True, text=True, env=env)
    assert export.returncode == 2
    assert export.stderr.strip() == (
        "car-onnx: error: the export tools need the [export] extra (onnx is missing): "
        "pip install torch==2.13.0 && pip install 'car-onnx[export]'"
    )


@pytest.mark.slow
def test_gpu_install_resolves_to_the_gpu_build_alone(tmp_path):
    """`GPU_INSTALL` (the command the README and the --device cuda message give) after the runtime install: its
    uninstall really runs, its install is resolved by pip (--dry-run --report): onnxruntime-gpu and never the
    CPU onnxruntime, whose module it would overwrite. The README and the docs' GPU page give the same command."""
    assert GPU_INSTALL in (ROOT / "README.md").read_text().splitlines()
    assert GPU_INSTALL in (ROOT / "docs" / "gpu.md").read_text().splitlines()
    uninstall, install = (part.strip().split() for part in GPU_INSTALL.split("&&"))
    assert uninstall[:3] == ["pip", "uninstall", "-y"] and install[:2] == ["pip", "install"]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(pip + ["install", "-q", str(ROOT)], check=True, timeout=900)
    subprocess.run(pip + uninstall[1:], check=True, capture_output=True)
    report = tmp_path / "report.json"
    subprocess.run(
        pip + ["install", "-q", "--dry-run", "--report", str(report)] + [arg.strip("'") for arg in install[2:]],
        check=True,
        timeout=900,
        capture_output=True,
    )
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names, names
