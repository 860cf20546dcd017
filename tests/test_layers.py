"""The runtime's written interfaces and the direction of its imports."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from car_onnx.core.rows import ArrayRows, Rows, rows_of
from car_onnx.jobs import pipeline
from car_onnx.jobs.workdir import ChunkRows
from car_onnx.ray import RayEngine, _ChunksOnCluster, _SampledRows

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "car_onnx"


def test_both_engines_implement_the_engine_interface():
    for engine in (pipeline.LocalEngine(), RayEngine()):
        assert isinstance(engine, pipeline.Engine)
    assert {"scan", "infer", "rows"} <= set(dir(pipeline.Engine))


def test_every_row_source_is_a_rows():
    assert all(issubclass(c, Rows) for c in (ArrayRows, ChunkRows, _ChunksOnCluster, _SampledRows))
    x = list(range(10))
    assert isinstance(rows_of(x), ArrayRows) and rows_of(rows_of(x)).array is x


def layers() -> list[list[str]]:
    """The layers of pyproject.toml's import contract, top first: each a list of dotted names."""
    text = (ROOT / "pyproject.toml").read_text()
    contract = tomllib.loads(text)["tool"]["importlinter"]["contracts"][0]
    assert contract["type"] == "layers"
    return [[name.strip() for name in layer.split("|")] for layer in contract["layers"]]


def test_every_module_is_in_one_layer():
    named = [name for layer in layers() for name in layer]
    assert len(named) == len(set(named))
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module in ("car_onnx", "car_onnx.__main__"):
            continue  # the package's entries: above every layer
        owners = [n for n in named if module == n or module.startswith(n + ".")]
        assert len(owners) == 1, f"{module}: in the layers {owners} of pyproject.toml's import contract"


def test_layers_import_only_downward():
    if shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("import-linter is missing: pip install -e '.[dev]'")
    run = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert "2 kept, 0 broken" in run.stdout
    # the core (the selection and what it reads rows through) sits below every input or output format
    assert layers()[-2:] == [["car_onnx.core"], ["car_onnx.errors", "car_onnx.version"]]
